"""What the simulator says: the assistant message (from a responder) and the JSON around it.

A responder is `(model, skill, messages, tools) -> assistant message dict`. The default
asks each registered suite's `simulated_reply` in turn, so the simulated models take the
benchmark with their deterministic policies; tests inject `echo` or their own function.
"""

from __future__ import annotations

import importlib
import sys
import traceback
from collections.abc import Callable
from typing import Any

import msgspec

from ultra.naming import canonical_model
from ultra.sim.models import sim_skill
from ultra.errors import UserError

Message = dict[str, Any]
Responder = Callable[[str, float, list[Message], "list[Message] | None"], Message]

TRIVIAL_REPLY: Message = {"role": "assistant", "content": "I have nothing to add."}


def echo_responder(model: str, skill: float, messages: list[Message], tools: list[Message] | None) -> Message:
    """The trivial reply, whatever was asked: for tests and speed benchmarks."""
    return TRIVIAL_REPLY


class SuitesResponder:
    """The first registered suite that recognizes the conversation answers it.

    Suites are loaded on first use, not at import: the simulator must start (and answer
    trivially) even while a suite is missing or broken.
    """

    def __init__(self) -> None:
        self._suites: list[Any] | None = None

    def _load(self) -> list[Any]:
        try:
            from ultra.suites import SimulatedPolicy, all_suites

            # the suites that offer the simulator a policy of their own
            suites = [s for s in all_suites().values() if isinstance(s, SimulatedPolicy)]
        except Exception as exc:  # a missing suite must not take the simulator down
            print(f"ultra-sim: suites unavailable, replying trivially ({type(exc).__name__}: {exc})", file=sys.stderr)
            suites = []
        self._suites = suites
        return suites

    def __call__(self, model: str, skill: float, messages: list[Message], tools: list[Message] | None) -> Message:
        suites = self._suites if self._suites is not None else self._load()
        for suite in suites:
            reply = suite.simulated_reply(skill, messages, tools)
            if reply is not None:
                return reply
        return TRIVIAL_REPLY


def load_responder(spec: str) -> Responder:
    """`suites`, `echo`, or an import path `package.module:function`."""
    if spec == "suites":
        return SuitesResponder()
    if spec == "echo":
        return echo_responder
    module_name, sep, attr = spec.partition(":")
    if not sep:
        raise UserError(f"responder must be 'suites', 'echo' or 'module:function', got {spec!r}")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise UserError(f"cannot load responder {spec!r}: {exc}") from None


def model_skill(model: str) -> float | None:
    """The skill a model name answers with; None means "no such model" (404).

    `reasoner` is a style, not a skill: `sim-strong-reasoner` answers like `sim-strong`,
    only in the reasoning-model wire shape.
    """
    skill = sim_skill(canonical_model(model))
    if skill is None and "reasoner" in model:
        base = "-".join(part for part in model.split("-") if part != "reasoner")
        skill = sim_skill(canonical_model(base))
    return skill


def is_reasoner(model: str) -> bool:
    """The reasoning wire shape: text in `reasoning_content`, `content` left empty."""
    return "reasoner" in model


def _approx_tokens(chars: int) -> int:
    return chars // 4 + 1  # the usual ~4 characters per token; only needs to be plausible


def prompt_tokens(body: bytes) -> int:
    """Prompt tokens of a request as the APIs count them, roughly: messages *and* tool
    schemas, about 4 bytes a token (the client's estimate rests on the same rule)."""
    return _approx_tokens(len(body))


def completion_body(
    *, completion_id: str, created: int, model: str, message: Message, prompt_toks: int, empty_content: bool = False,
    limit: int | None = None,
) -> tuple[bytes, int]:
    """An OpenAI `chat.completion` object, encoded, and its completion tokens. An answer
    longer than `limit` tokens (the request's max_tokens / max_completion_tokens) is cut
    off there, as the APIs do: its text truncated, no tool call, finish_reason `length`."""
    message = dict(message)
    message.setdefault("role", "assistant")
    if empty_content:
        message = {"role": "assistant", "content": ""}
    elif is_reasoner(model):
        # reasoning models leave `content` empty and put the text beside it
        message["reasoning_content"] = message.get("content") or ""
        message["content"] = ""
    tool_calls = message.get("tool_calls")
    chars = len(message.get("content") or "") + len(message.get("reasoning_content") or "")
    for call in tool_calls or ():
        chars += len(call.get("function", {}).get("arguments", ""))
    completion_toks = _approx_tokens(chars)
    finish_reason = "tool_calls" if tool_calls else "stop"
    if limit is not None and completion_toks > limit:
        text = message.get("content") or message.get("reasoning_content") or ""
        for name in ("tool_calls", "reasoning_content"):
            message.pop(name, None)
        message["content"] = text[: 4 * max(0, limit - 1)]
        tool_calls, completion_toks, finish_reason = None, limit, "length"
    usage: dict[str, Any] = {
        "prompt_tokens": prompt_toks,
        "completion_tokens": completion_toks,
        "total_tokens": prompt_toks + completion_toks,
    }
    if message.get("reasoning_content"):  # reasoning tokens are part of completion_tokens
        usage["completion_tokens_details"] = {"reasoning_tokens": _approx_tokens(len(message["reasoning_content"]))}
    return msgspec.json.encode(
        {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": finish_reason,
                }
            ],
            "usage": usage,
        }
    ), completion_toks


def empty_choices_body(*, completion_id: str, created: int, model: str) -> bytes:
    return msgspec.json.encode(
        {"id": completion_id, "object": "chat.completion", "created": created, "model": model, "choices": []}
    )


# Cut off mid-object, as a proxy that drops the connection's tail would leave it.
MALFORMED_BODY = b'{"id": "chatcmpl-sim", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assi'


def error_body(message: str, type_: str, code: str | None = None, param: str | None = None) -> bytes:
    """The OpenAI error shape, which Azure shares."""
    return msgspec.json.encode({"error": {"message": message, "type": type_, "param": param, "code": code}})


def responder_failure(exc: BaseException) -> bytes:
    """A responder bug becomes a 500 the client can see, and a traceback on stderr."""
    traceback.print_exception(exc, file=sys.stderr)
    return error_body(f"simulator responder failed: {type(exc).__name__}", "server_error", "sim_responder_error")


__all__ = ["completion_body", "echo_responder", "empty_choices_body", "error_body",
           "is_reasoner", "load_responder", "MALFORMED_BODY", "Message", "model_skill",
           "prompt_tokens", "Responder", "responder_failure", "SuitesResponder", "TRIVIAL_REPLY"]
