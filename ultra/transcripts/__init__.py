"""Transcripts: what one test said and heard, stored beside its event, bound by the chain.

A transcript is one msgspec struct (`Transcript`), encoded as JSON (struct fields
in order, messages with their keys in the order they were sent) and compressed with zlib. Its address is the sha256 of
the uncompressed JSON (`digest`): the test's event carries that digest in its
`transcript` field, so the event's hash in the chain covers the transcript, while the
bytes live in the log's own `transcripts` table (written in the events' group commit, one
row per stored event: `seq`, `digest`, `data`). `ultra audit` decompresses every row and
checks it against its digest and its event.

The format (`format` 1) is documented in docs/transcripts.md: the conversation as the
last request sent it (`messages`, plus what came back after it), the tools offered, one
`Turn` per answer (what came back, its finish reason, usage, latency and the HTTP
attempts it took), the attempts of a request that got no answer (`unanswered`: errored
tests), the error, and the suite's scoring breakdown. Never a header, key or secret: the
client keeps none of them, server messages are redacted, and a transcript whose JSON
contains a route's key anyway is redacted before it is hashed.

Per request the client appends one small tuple per attempt (`HttpChatModel`); the structs
are built once per test, here.
"""

from __future__ import annotations

import base64
import hashlib
import zlib
from typing import Any, Literal

import msgspec

from ultra.errors import ImportConflict, UserError
from ultra.events import Usage

FORMAT = 1
MODES = ("all", "failures", "none")
Mode = Literal["all", "failures", "none"]
LEVEL = 6  # zlib: level 9 saves ~1 % more on transcripts, at twice the CPU
LINE_PREFIX = '{"transcript":'  # a transcript line of `ultra events --transcripts`


class Attempt(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One HTTP request of a turn."""

    status: int | None = None  # the HTTP status; None: no answer (timeout, connection)
    outcome: str = "ok"  # ok, or why not: rate_limited, server_error, timeout, ...
    message: str = ""  # the server's message, redacted (at most 200 characters)
    waited: float = 0.0  # seconds before it was sent: backoff, pacer, token budget, window
    latency: float = 0.0  # seconds from sending it to its answer (or to giving up)


class Call(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    arguments: str  # JSON text, as received


class Turn(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One answer of the model, and how it was obtained."""

    sent: int  # the request carried messages[:sent]
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[Call] = []
    finish_reason: str | None = None
    usage: Usage = Usage()
    seconds: float = 0.0  # from the turn's first attempt being readied to its answer
    attempts: list[Attempt] = []


class Unanswered(msgspec.Struct, frozen=True, kw_only=True):
    """The request that got no answer (the test errored or was cut off during it)."""

    sent: int
    attempts: list[Attempt] = []


class Transcript(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    format: int = FORMAT
    test_key: str
    suite: str = "workflow"
    model: str
    instance: str
    # the conversation as sent: system, user, assistant (as sent back), tool results; the
    # tool results and help that followed the last answer are included (never sent)
    messages: list[dict[str, Any]] = []
    tools: list[dict[str, Any]] | None = None  # the tool schemas every request offered
    turns: list[Turn] = []
    unanswered: Unanswered | None = None
    error: dict[str, Any] | None = None  # errored tests: reason, http_status, message
    scoring: dict[str, Any] | None = None  # the suite's breakdown (outcome, metrics, calls...)


_encoder = msgspec.json.Encoder()  # messages keep the key order they were sent in
_decoder = msgspec.json.Decoder(Transcript)


def encode(t: Transcript, secrets: tuple[str, ...] = ()) -> bytes:
    """The transcript's canonical bytes (what the digest is of)."""
    data = _encoder.encode(t)
    for secret in secrets:  # a cheap substring test; the client already keeps none
        if secret and len(secret) >= 4 and secret.encode() in data:
            from ultra.collect.secrets import redact

            data = _encoder.encode(_decoder.decode(
                redact(data.decode(), secrets).encode()))
            break
    return data


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pack(t: Transcript, secrets: tuple[str, ...] = ()) -> tuple[str, bytes]:
    """(digest, compressed bytes) of a transcript, ready to store."""
    data = encode(t, secrets)
    return digest(data), zlib.compress(data, LEVEL)


def unpack(blob: bytes) -> bytes:
    """The JSON bytes of a stored transcript (raises zlib.error if not zlib data)."""
    return zlib.decompress(blob)


def decode(data: bytes) -> Transcript:
    return _decoder.decode(data)


def check(digest_: str, blob: bytes) -> str | None:
    """What is wrong with a stored blob for `digest_` (None if its bytes match)."""
    try:
        data = unpack(bytes(blob))
    except zlib.error:
        return "not zlib data"
    if digest(data) != digest_:
        return "its bytes do not match its digest"
    return None


def wanted(mode: str, failed: bool) -> bool:
    """Whether a test's transcript is stored under `mode` (failed: errored, or not a full
    success)."""
    return mode == "all" or (mode == "failures" and failed)


# ---- transcript lines (`ultra events --transcripts`, `ultra import`) -------------------


def line(digest_: str, blob: bytes) -> str:
    """The JSON line that carries a stored transcript next to its event."""
    return f'{LINE_PREFIX}"{digest_}","zlib":"{base64.b64encode(bytes(blob)).decode()}"}}'


class _Line(msgspec.Struct):
    transcript: str
    zlib: str


_line_decoder = msgspec.json.Decoder(_Line)


def is_line(text: str | bytes) -> bool:
    head = text[:len(LINE_PREFIX)]
    return (head.decode("utf-8", "replace") if isinstance(head, bytes) else head) == LINE_PREFIX


def parse_line(text: str | bytes, where: str) -> tuple[str, bytes]:
    """(digest, compressed bytes) of a transcript line, its bytes checked against its
    digest; a bad line raises `UserError` naming `where`."""
    try:
        obj = _line_decoder.decode(text)
        blob = base64.b64decode(obj.zlib, validate=True)
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
        raise UserError(f"{where}: not a transcript line ({exc}); nothing imported") from None
    problem = check(obj.transcript, blob)
    if problem is not None:
        raise ImportConflict(f"{where}: transcript {obj.transcript[:16]}…: {problem}; refused,"
                             " nothing imported")
    return obj.transcript, blob


# ---- building one (in the shard, once per test) ----------------------------------------


def _attempts(raw: list[tuple[Any, ...]]) -> list[Attempt]:
    return [Attempt(status=s, outcome=o, message=m, waited=round(w, 6), latency=round(lat, 6))
            for s, o, m, w, lat in raw]


def build(*, test_key: str, suite: str, model: str, instance: str, chat: Any,
          error: dict[str, Any] | None = None) -> Transcript:
    """A test's transcript from what its `HttpChatModel` recorded (`chat`)."""
    turns = []
    for sent, resp, seconds, raw in chat.turns:
        turns.append(Turn(
            sent=sent, content=resp.content, reasoning_content=resp.reasoning_content,
            tool_calls=[Call(id=c.id, name=c.name, arguments=c.arguments) for c in resp.tool_calls],
            finish_reason=resp.finish_reason, usage=resp.usage, seconds=round(seconds, 6),
            attempts=_attempts(raw)))
    unanswered = None
    if chat.pending is not None:
        sent, raw = chat.pending
        unanswered = Unanswered(sent=sent, attempts=_attempts(raw))
    return Transcript(
        test_key=test_key, suite=suite, model=model, instance=instance,
        messages=list(chat.messages or ()), tools=chat.tools, turns=turns,
        unanswered=unanswered, error=error, scoring=chat.scoring)


__all__ = ["Attempt", "build", "Call", "check", "decode", "digest", "encode", "FORMAT",
           "is_line", "LEVEL", "line", "LINE_PREFIX", "Mode", "MODES", "pack", "parse_line",
           "Transcript", "Turn", "Unanswered", "unpack", "wanted"]
