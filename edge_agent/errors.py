"""The error vocabulary shared by every layer: each error carries the code a client sees."""

from __future__ import annotations

EX_DATAERR = 65  # sysexits.h: the input data is malformed (a request, a text)
EX_CONFIG = 78  # sysexits.h: the configuration is wrong, retrying will not help


class AgentError(Exception):
    """An error a client can be told about; `code` goes on the wire unchanged."""

    code = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(AgentError):
    code = "bad_request"


class TooLarge(AgentError):
    code = "too_large"


class UnknownModel(AgentError):
    code = "unknown_model"


class Timeout(AgentError):
    code = "timeout"


class Overloaded(AgentError):
    code = "overloaded"


class InvalidOutput(AgentError):
    code = "invalid_output"


class CloudUnavailable(AgentError):
    """`escalation`: why the request went to the cloud, when it did (the metrics count it as an escalation)."""

    code = "cloud_unavailable"

    def __init__(self, message: str, escalation: str | None = None) -> None:
        super().__init__(message)
        self.escalation = escalation


class Unavailable(AgentError):
    """What the request asks for is not configured on this device (route cloud without a cloud)."""

    code = "unavailable"


class Internal(AgentError):
    code = "internal"


class ConfigError(Exception):
    """Configuration or artifact problems; `problems` lists every one, one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class ArtifactError(Exception):
    """An artifact on disk is missing, malformed or does not match its manifest."""
