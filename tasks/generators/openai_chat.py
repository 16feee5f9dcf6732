"""``openai``: streams a chat completion from any OpenAI-compatible server (``openai`` SDK).

The server, model and key come from the worker's configuration (``OPENAI_BASE_URL``,
``OPENAI_MODEL``, ``OPENAI_API_KEY``), never from a message. Each content delta is sent as
``{"text": ...}``; the end of a choice as ``event: finish`` with its ``finish_reason``.
Closing the generator (a cancelled run) closes the HTTP stream to the server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Literal

import openai
from pydantic import Field, model_validator

from ..errors import GeneratorUnavailable
from ..framing import Event
from ..registry import Params, RunContext, register

__all__ = ["ChatParams", "Message", "chat"]

#: Failures worth another attempt: the run goes on (``restarted``) instead of ending.
TRANSIENT = (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError)


class Message(Params):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatParams(Params):
    #: The conversation; or ``prompt`` for a single user message.
    messages: list[Message] | None = None
    prompt: str | None = None
    #: Overrides ``OPENAI_MODEL``.
    model: str | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    max_tokens: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _one_input(self) -> ChatParams:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("give exactly one of 'messages' and 'prompt'")
        return self


def _request(params: ChatParams, context: RunContext) -> dict[str, Any]:
    messages = params.messages or [Message(role="user", content=params.prompt or "")]
    request: dict[str, Any] = {
        "model": params.model or context.config.openai_model,
        "messages": [message.model_dump() for message in messages],
        "stream": True,
    }
    if params.temperature is not None:
        request["temperature"] = params.temperature
    if params.max_tokens is not None:
        request["max_tokens"] = params.max_tokens
    return request


@register("openai", ChatParams, retry_for=TRANSIENT)
async def chat(params: ChatParams, context: RunContext) -> AsyncIterator[Any]:
    config = context.config
    if not config.openai_base_url and not config.openai_api_key:
        raise GeneratorUnavailable("this worker has no OPENAI_API_KEY or OPENAI_BASE_URL set")
    client = openai.AsyncOpenAI(
        base_url=config.openai_base_url, api_key=config.openai_api_key or "unset",
        max_retries=0,  # retries are the task's: the run continues with a `restarted` event
    )
    try:
        stream = await client.chat.completions.create(**_request(params, context))
        async with stream:
            async for chunk in stream:
                for choice in chunk.choices:
                    if choice.delta and choice.delta.content:
                        yield {"text": choice.delta.content}
                    if choice.finish_reason:
                        yield Event("finish", {"reason": choice.finish_reason})
    finally:
        await client.close()
