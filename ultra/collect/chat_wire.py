"""The chat completion on the wire: the request body a route receives and the response
and error bodies it answers with, decoded by msgspec into just the fields ultra reads
(the OpenAI shape, which Azure OpenAI and the gateways share)."""

from __future__ import annotations

from typing import Any

import msgspec

from ultra.config import RequestOptions
from ultra.collect.plan import Route
from ultra.events import Usage
from ultra.suites import ChatResponse, ToolCall

__all__ = ["ErrorDetail", "decode_error", "decode_response", "encode", "request_body", "to_chat_response",
           "usage_of"]


class _Function(msgspec.Struct):
    name: str = ""
    arguments: str | dict[str, Any] | None = None


class _ToolCall(msgspec.Struct):
    function: _Function
    id: str = ""


class _Message(msgspec.Struct):
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[_ToolCall] | None = None


class _Choice(msgspec.Struct):
    message: _Message | None = None
    finish_reason: str | None = None


class _Details(msgspec.Struct):
    reasoning_tokens: int | None = 0


class _Usage(msgspec.Struct):
    prompt_tokens: int | None = 0
    completion_tokens: int | None = 0
    completion_tokens_details: _Details | None = None


class _Response(msgspec.Struct):
    choices: list[_Choice] | None = None
    usage: _Usage | None = None


class ErrorDetail(msgspec.Struct):
    message: str | None = None
    code: str | int | None = None


class _ErrorBody(msgspec.Struct):
    error: ErrorDetail | str | None = None
    message: str | None = None
    detail: Any = None  # FastAPI's shape: a string, or a list of validation errors


decode_response = msgspec.json.Decoder(_Response).decode
decode_error = msgspec.json.Decoder(_ErrorBody).decode
encode = msgspec.json.Encoder().encode


def request_body(route: Route, options: RequestOptions, messages: list[dict[str, Any]],
                 tools: list[dict[str, Any]] | msgspec.Raw | None) -> dict[str, Any]:
    """The chat request as the provider receives it: the model (OpenAI shape), messages,
    tools, then the model's request options and its `extra_body`."""
    body: dict[str, Any] = {}
    if route.api_model is not None:
        body["model"] = route.api_model
    body["messages"] = messages
    if tools:
        body["tools"] = tools
    body.update(options.body_fields())
    return body


def to_chat_response(body: _Response, usage: Usage) -> ChatResponse | None:
    if not body.choices or body.choices[0].message is None:
        return None
    choice = body.choices[0]
    msg = choice.message
    assert msg is not None
    calls = [
        ToolCall(
            id=c.id or f"call_{i}",
            name=c.function.name,
            arguments=c.function.arguments if isinstance(c.function.arguments, str)
            else encode(c.function.arguments or {}).decode(),
        )
        for i, c in enumerate(msg.tool_calls or ())
    ]
    if not calls and not msg.content and not msg.reasoning_content and choice.finish_reason != "length":
        return None  # an empty turn is a fault of the service, not an answer (one cut off is)
    return ChatResponse(
        content=msg.content,
        tool_calls=calls,
        reasoning_content=msg.reasoning_content,
        finish_reason=choice.finish_reason,
        usage=usage,
    )


def usage_of(u: _Usage | None) -> Usage:
    if u is None:
        return Usage()
    details = u.completion_tokens_details
    return Usage(prompt_tokens=u.prompt_tokens or 0, completion_tokens=u.completion_tokens or 0,
                 reasoning_tokens=(details.reasoning_tokens or 0) if details else 0)
