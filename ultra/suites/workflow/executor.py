"""The multi-turn loop: one test of one task with one `ChatModel`.

The model answers with native `tool_calls` or text calls (`<tool_call>name {json}</tool_call>`,
also `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` and a bare
`<tool_call>name</tool_call>`). Tools are simulated here: a well-formed call to an offered
tool with valid arguments and met dependencies succeeds with probability
`tool_success_rate`, drawn from an RNG seeded by the test key, else returns one of the
tool's declared errors. The test ends on a completion statement (in a turn without
calls), at `max_turns`, after
`MAX_FAILED_TURNS` consecutive turns without progress, or when the provider refuses the
conversation as too long. What happened is returned as a plain `Trajectory` for scoring.
"""

from __future__ import annotations

import random
import re
from typing import Any, Literal

import msgspec

from ultra.defaults import MAX_TURNS
from ultra.suites import ChatModel, ChatResponse, ContextLengthExceeded
from ultra.suites.workflow.library import TaskView
from ultra.suites.workflow.prompts import FORMAT_HELP
from ultra.suites.workflow.registry import argument_error

MAX_FAILED_TURNS = 3  # consecutive turns with no successful call: the workflow has stalled

CallStatus = Literal["success", "failed", "malformed", "unknown_tool", "bad_arguments", "dependency"]
End = Literal["completed", "max_turns", "stalled", "context_length"]


class Call(msgspec.Struct, frozen=True, kw_only=True):
    turn: int  # 1-based
    name: str  # "" when not even the name could be read
    status: CallStatus
    error: str | None = None  # the error code the tool (or the executor) returned
    text: bool = False  # a text call rather than a native one
    needs: tuple[str, ...] = ()  # dependency failures: the tools that had not succeeded


class Trajectory(msgspec.Struct, frozen=True, kw_only=True):
    """What a test did, as plain data: the only input of scoring."""

    required: tuple[str, ...]
    calls: tuple[Call, ...] = ()
    turns: int = 0
    assisted_turns: int = 0  # turns after which format help was given
    idle_turns: int = 0  # turns with neither a call nor a completion statement
    completed: bool = False  # the model stated completion
    end: End = "completed"


class _Parsed(msgspec.Struct, frozen=True):
    id: str | None  # native call id; None for text calls
    name: str
    arguments: Any  # dict when well-formed, None when malformed


_TEXT_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.S)
_NAME_ARGS = re.compile(r"([A-Za-z_][\w.-]*)\s*(.*)\Z", re.S)
_COMPLETE = re.compile(r"\btask complete(?:d)?\b", re.I)
_decode = msgspec.json.decode
_encode = msgspec.json.encode


def _json_object(text: str) -> Any:
    if not text.strip():
        return {}
    try:
        obj = _decode(text)
    except msgspec.DecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def parse_text_calls(text: str) -> list[_Parsed]:
    """Calls written as text; a `<tool_call>` that cannot be read becomes a malformed call."""
    if "<tool_call>" not in text:
        return []
    out: list[_Parsed] = []
    for m in _TEXT_CALL.finditer(text):
        inner = m.group(1).strip()
        if inner.startswith("{"):
            obj = _json_object(inner)
            name = obj.get("name") if obj else None
            args = obj.get("arguments", obj.get("parameters", {})) if obj else None
            if isinstance(args, str):
                args = _json_object(args)
            if not isinstance(name, str) or not isinstance(args, dict):
                out.append(_Parsed(None, name if isinstance(name, str) else "", None))
            else:
                out.append(_Parsed(None, name, args))
            continue
        nm = _NAME_ARGS.match(inner)
        if nm is None:
            out.append(_Parsed(None, "", None))
        else:
            out.append(_Parsed(None, nm.group(1), _json_object(nm.group(2))))
    unclosed = text.count("<tool_call>") - len(out)
    out.extend(_Parsed(None, "", None) for _ in range(max(0, unclosed)))
    return out


def _native_calls(resp: ChatResponse) -> list[_Parsed]:
    return [_Parsed(c.id, c.name, _json_object(c.arguments or "")) for c in resp.tool_calls]


def _assistant_message(resp: ChatResponse) -> dict[str, Any]:
    msg: dict[str, Any] = {"role": "assistant", "content": resp.content if resp.content is not None else ""}
    if resp.tool_calls:
        msg["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments or "{}"}}
            for c in resp.tool_calls
        ]
    return msg


def _result(name: str, error: str | None, message: str) -> str:
    if error is None:
        body: dict[str, Any] = {"tool": name, "status": "success", "output": message}
    else:
        body = {"tool": name, "status": "error", "error": error, "message": message}
    return _encode(body).decode()


async def execute(
    view: TaskView,
    messages: list[dict[str, Any]],
    model: ChatModel,
    *,
    tool_success_rate: float,
    seed: int,
    max_turns: int = MAX_TURNS,
) -> tuple[Trajectory, list[dict[str, Any]]]:
    """Run the conversation to its end; returns the trajectory and the full transcript.

    `ModelUnavailable` from the model propagates (the test could not be taken).
    """
    rng = random.Random(seed)
    messages = list(messages)
    calls: list[Call] = []
    succeeded: set[str] = set()
    turns = assisted = idle = failed_run = 0
    completed = False
    end: End = "max_turns"
    while turns < max_turns:
        try:
            resp = await model.complete(messages, view.schemas)
        except ContextLengthExceeded:
            end = "context_length"
            break
        turns += 1
        text = resp.text
        native = _native_calls(resp)
        # Text calls only without native ones: reasoning text may quote calls it then makes.
        textual = [] if native else parse_text_calls(text)
        # Completion counts in a turn without calls: the model has seen every result.
        completed = not native and not textual and bool(_COMPLETE.search(text))
        messages.append(_assistant_message(resp))
        progress = False
        helped = False
        text_results: list[str] = []
        for p in (*native, *textual):
            is_text = p.id is None
            err: str | None
            needs: tuple[str, ...] = ()
            if p.arguments is None:
                status, err, msg = "malformed", "MALFORMED_CALL", FORMAT_HELP
                helped = True
            elif p.name not in view.tools:
                status, err = "unknown_tool", "UNKNOWN_TOOL"
                msg = f"no tool named {p.name!r}; available: {', '.join(view.offered)}"
            elif (why := argument_error(view.tools[p.name], p.arguments)) is not None:
                status, err, msg = "bad_arguments", "INVALID_PARAMETERS", why
            elif missing := view.deps[p.name] - succeeded:
                status, err, needs = "dependency", "DEPENDENCY_NOT_MET", tuple(sorted(missing))
                msg = f"run {', '.join(needs)} successfully first"
            elif rng.random() < tool_success_rate:
                status, err, msg = "success", None, f"{p.name} done; result stored as {p.name}_result"
                succeeded.add(p.name)
                progress = True
            else:
                errors = view.tools[p.name].errors
                status, err = "failed", errors[rng.randrange(len(errors))]
                msg = f"{p.name} failed with {err}"
            calls.append(Call(turn=turns, name=p.name, status=status, error=err, text=is_text, needs=needs))  # type: ignore[arg-type]
            content = _result(p.name, err, msg)
            if is_text:
                text_results.append(f"<tool_result>{content}</tool_result>")
            else:
                messages.append({"role": "tool", "tool_call_id": p.id, "content": content})
        if text_results:
            messages.append({"role": "user", "content": "\n".join(text_results)})
        if not native and not textual and not completed:
            idle += 1
            helped = True
            messages.append({"role": "user", "content": FORMAT_HELP})
        if helped:
            assisted += 1
        if completed:
            end = "completed"
            break
        failed_run = 0 if progress else failed_run + 1
        if failed_run >= MAX_FAILED_TURNS:
            end = "stalled"
            break
    traj = Trajectory(
        required=tuple(view.task.required_tools),
        calls=tuple(calls),
        turns=turns,
        assisted_turns=assisted,
        idle_turns=idle,
        completed=completed,
        end=end,
    )
    return traj, messages


__all__ = ["Call", "CallStatus", "End", "execute", "MAX_FAILED_TURNS", "parse_text_calls",
           "Trajectory"]
