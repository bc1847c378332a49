"""The request endpoint, `{prefix}/req/{model}`: a client's JSON request in, a reply to its address out."""

from __future__ import annotations

from edge_agent.contract.messages import Answer, Inbound, ModelReply, Request, message_id, parse
from edge_agent.errors import AgentError, Unavailable, UnknownModel
from edge_agent.routing.router import CloudWait, Job, Router
from edge_agent.serving.replies import Replies
from edge_agent.transport.outcome import Drop, Reply

Attempt = Reply | CloudWait | Drop  # one try; a CloudWait is parked (new) or kept (waiting)


class Requests:
    def __init__(self, replies: Replies, router: Router) -> None:
        self.replies, self.router = replies, router
        self.settings = replies.settings
        self.prefix = f"{self.settings.topic_prefix}/req/"

    async def attempt(self, msg: Inbound, model: str) -> Attempt:
        envelope, request = parse(msg.payload, self.settings.max_payload_bytes)
        rid = envelope.id if envelope.id is not None else message_id(msg)
        topic, refused = self.replies.address(msg, envelope.reply_to, self._results(model))
        if refused is not None:
            request = refused
        if isinstance(request, AgentError):
            return self.replies.send(msg, topic, ModelReply(rid, model, request), model=model)
        result = await self.answer(model, request, msg.received)
        if isinstance(result, CloudWait):
            return result
        return self.replies.send(msg, topic, self.replies.model_reply(rid, model, result, msg), model=model)

    def refuse(self, msg: Inbound, model: str, error: AgentError) -> Reply | Drop:
        """An error reply built from the message alone, addressed as its answer would be."""
        envelope, _ = parse(msg.payload, self.settings.max_payload_bytes)
        topic, _ = self.replies.address(msg, envelope.reply_to, self._results(model))
        rid = envelope.id if envelope.id is not None else message_id(msg)
        return self.replies.send(msg, topic, ModelReply(rid, model, error), model=model)

    async def answer(self, model: str, request: Request, received: float) -> Answer | CloudWait | AgentError:
        """The router's answer within the request's deadline, or the error that ends it."""
        known = self.replies.known(model)
        down = self.replies.pool.down.get(model)
        if known is None and down is not None:
            return Unavailable(f"{down.why}: no version on this device verifies; a pull can bring one")
        if known is None:
            return UnknownModel(f"no model named {model!r}; serving: {self.replies.names()}")
        served, entry, manifest = known
        budget = request.deadline_ms or entry.deadline_ms or self.settings.deadline_ms
        try:
            return await self.router.answer(Job(model, entry, manifest, served, request, received + budget / 1000))
        except AgentError as exc:
            return exc

    def _results(self, model: str) -> str:
        return f"{self.settings.topic_prefix}/res/{model}"
