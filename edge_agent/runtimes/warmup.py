"""Warm-up: a freshly loaded model answers the manifest's samples before it may serve.

The samples are inputs the build box's model answered (right, and confidently); a device whose
answer differs has a broken artifact, tokenizer or runtime, and must keep what it serves.
"""

from __future__ import annotations

from edge_agent.errors import AgentError, ArtifactError
from edge_agent.runtimes import Runtime

SMOKE = "warm-up"  # a manifest without samples still proves one inference runs


def warm_up(runtime: Runtime) -> int:
    """How many samples were checked; ArtifactError naming the first wrong answer."""
    manifest = runtime.manifest
    samples = manifest.samples or []
    texts = [s.text for s in samples] or [SMOKE]
    try:
        predictions = [runtime.predict([text])[0] for text in texts]
    except AgentError as exc:
        raise ArtifactError(f"warm-up: the model failed: {exc.code}: {exc.message}") from None
    except Exception as exc:
        raise ArtifactError(f"warm-up: the model failed: {type(exc).__name__}: {exc}") from None
    for i, (sample, prediction) in enumerate(zip(samples, predictions, strict=False)):
        if sample.label is not None and prediction.label != sample.label:
            raise ArtifactError(
                f"warm-up: sample {i + 1} {sample.text[:40]!r} answered {prediction.label!r}, "
                f"the manifest expects {sample.label!r}"
            )
        if sample.fields is not None and prediction.fields != sample.fields:
            raise ArtifactError(f"warm-up: sample {i + 1} {sample.text[:40]!r}: fields differ from the manifest's")
    return len(samples)
