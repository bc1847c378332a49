"""The sensor endpoint: a message on a bound topic filter in, a result on the binding's output topic out."""

from __future__ import annotations

from edge_agent.config.models_file import Binding, ModelsFile
from edge_agent.contract.messages import Inbound, ModelReply, Request, message_id, sensor_text
from edge_agent.contract.topics import matches
from edge_agent.errors import AgentError
from edge_agent.routing.router import CloudWait
from edge_agent.serving.replies import Replies
from edge_agent.serving.requests import Attempt, Requests
from edge_agent.transport.outcome import Drop, Reply


class Sensors:
    def __init__(self, replies: Replies, requests: Requests, models: ModelsFile) -> None:
        self.replies, self.requests, self.bindings = replies, requests, models.bindings
        self.settings = replies.settings

    def binding(self, topic: str) -> Binding | None:
        return next((b for b in self.bindings if matches(b.topic, topic)), None)

    async def attempt(self, msg: Inbound, topic: str) -> Attempt:
        binding = self._bound(topic)
        try:
            text = sensor_text(msg.payload, binding.text_field, self.settings.max_payload_bytes)
            result = await self.requests.answer(binding.model, Request(text=text), msg.received)
        except AgentError as exc:
            result = exc
        if isinstance(result, CloudWait):
            return result
        reply = self.replies.model_reply(message_id(msg), binding.model, result, msg, topic=topic)
        return self.replies.send(msg, self._output(binding, topic), reply, correlate=False, model=binding.model)

    def refuse(self, msg: Inbound, topic: str, error: AgentError) -> Reply | Drop:
        binding = self._bound(topic)
        reply = ModelReply(message_id(msg), binding.model, error, topic=topic)
        return self.replies.send(msg, self._output(binding, topic), reply, correlate=False, model=binding.model)

    def _bound(self, topic: str) -> Binding:
        binding = self.binding(topic)
        assert binding is not None, "the handler routes only bound topics here"
        return binding

    def _output(self, binding: Binding, topic: str) -> str:
        return binding.output.format(topic=topic, model=binding.model, device_id=self.settings.device_id)
