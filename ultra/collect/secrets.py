"""Secrets and what servers say: a route's key from its environment variable, and a
server's error message cut to one line with every secret redacted (pure)."""

from __future__ import annotations

import os
import re

import httpx

import msgspec

from ultra.collect.chat_wire import ErrorDetail, decode_error, encode
from ultra.collect.plan import Route
from ultra.suites import ModelUnavailable

__all__ = ["location_message", "MESSAGE_CHARS", "redact", "resolve_secret", "route_place",
           "SECRET_PIECE", "server_message", "transport_message"]


MESSAGE_CHARS = 200  # of a server's error message kept in events and on stderr

_SECRET_SHAPES = (
    (re.compile(r"(?i)\bbearer\s+\S+"), "Bearer ***"),
    (re.compile(r"[\w-]{0,12}\*{3,}[\w-]*"), "***"),  # a key quoted back half-masked
    (re.compile(r"\b(sk|pk|rk|key)-[\w-]{6,}"), r"\1-***"),
    (re.compile(r"[A-Za-z0-9+/_=-]{32,}"), "***"),  # long opaque tokens (Azure keys are 32 hex)
)


SECRET_PIECE = 8  # any run of this many characters of a key (any case, reversed) is redacted


def _fold(text: str) -> str:
    """`text` lower-cased one character at a time (its length kept, for the positions)."""
    return "".join(c if len(low := c.lower()) != 1 else low for c in text)


def _without_pieces(text: str, secret: str) -> str:
    """`text` with every stretch covered by an 8-character piece of `secret`, of its upper-,
    lower- or mixed-case form, or of it reversed, replaced by `***`: a server that echoes a
    suffix, the key upper-cased or reversed still reveals nothing of it."""
    folded_secret = _fold(secret)
    pieces = {v[i:i + SECRET_PIECE] for v in (folded_secret, folded_secret[::-1])
              for i in range(len(v) - SECRET_PIECE + 1)}
    folded = _fold(text)
    covered = [False] * len(text)
    for i in range(len(text) - SECRET_PIECE + 1):
        if folded[i:i + SECRET_PIECE] in pieces:
            covered[i:i + SECRET_PIECE] = [True] * SECRET_PIECE
    if not any(covered):
        return text
    out: list[str] = []
    for i, c in enumerate(text):
        if not covered[i]:
            out.append(c)
        elif i == 0 or not covered[i - 1]:
            out.append("***")
    return "".join(out)


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """`text` without any of `secrets` (nor any 8-character piece of one, in any case or
    reversed) nor anything shaped like a key or token."""
    for secret in secrets:
        if secret and len(secret) >= SECRET_PIECE:
            text = _without_pieces(text, secret)
        elif secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    for pattern, replacement in _SECRET_SHAPES:
        text = pattern.sub(replacement, text)
    return text


def server_message(content: bytes, secrets: tuple[str, ...] = ()) -> str:
    """The server's own words from an error body (OpenAI/Azure shape, or plain text),
    redacted, on one line, at most MESSAGE_CHARS characters."""
    text = ""
    try:
        body = decode_error(content)
        if isinstance(body.error, ErrorDetail):
            text = body.error.message or ""
        elif isinstance(body.error, str):
            text = body.error
        text = text or body.message or ""
        if not text and body.detail:
            text = body.detail if isinstance(body.detail, str) else encode(body.detail).decode()
    except (msgspec.DecodeError, msgspec.ValidationError):
        pass
    if not text:
        text = content.decode("utf-8", "replace")
    text = " ".join(redact(text, secrets).split())
    return text[:MESSAGE_CHARS].rstrip()


def resolve_secret(route: Route) -> str:
    """The route's API key, read from the environment at the last moment."""
    if route.key_literal is not None:
        return route.key_literal
    value = os.environ.get(route.key_env or "")
    if not value:
        raise ModelUnavailable("bad_request", f"environment variable {route.key_env} is not set")
    return value


# httpx's pool scans every pooled connection on each request (a readability system call
# each), so one pool's CPU per request grows with its size: 128 connections in one pool
# cost ~20x the CPU per request of 32 pools of 4, and pools of 4 cost ~10 % less than
# pools of 8 (tools/bench_dispatch.py --seed-load).


def route_place(url: str) -> str:
    """The URL ultra built, for an error line: scheme, host and path, no query (it may
    carry a secret) and no user info."""
    u = httpx.URL(url)
    return f"{u.scheme}://{u.netloc.decode().rpartition('@')[2]}{u.path}"


def location_message(value: str, secrets: tuple[str, ...]) -> str:
    """A redirect's target for an error line: without its query (a login page's token)."""
    try:
        u = httpx.URL(value)
        place = route_place(value) if u.is_absolute_url else u.path
    except (httpx.InvalidURL, TypeError):
        place = value
    return redact(place, secrets)[:MESSAGE_CHARS]


def transport_message(exc: Exception, url: str) -> str:
    host = httpx.URL(url).netloc.decode()
    detail = str(exc) or type(exc).__name__
    return f"cannot reach {host}: {detail}"[:MESSAGE_CHARS]
