"""What every part of the event log shares: the write transaction's protocol, and the
decorator that runs a call again once a lost connection to the log is back."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol

__all__ = ["Cursor", "IN_CHUNK", "Tx", "in_chunks", "patient"]


class Cursor(Protocol):
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...


class Tx(Protocol):
    """One open write transaction, SQL written with `?` placeholders."""

    def execute(self, sql: str, params: Sequence[Any] = ...) -> Cursor: ...
    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> Any: ...


def patient(method: Callable[..., Any]) -> Callable[..., Any]:
    """`method` (of a log, or of an object with its `log`), run again after the log
    reconnects when its connection was lost."""

    @functools.wraps(method)
    def run(self: Any, *args: Any, **kwargs: Any) -> Any:
        log = getattr(self, "log", self)
        while True:
            try:
                return method(self, *args, **kwargs)
            except log.lost_errors as exc:
                log._wait_for_server(exc)

    return run


IN_CHUNK = 512  # values per `IN (...)` list


def in_chunks(values: Sequence[Any]) -> Iterator[tuple[str, list[Any]]]:
    """`values` IN_CHUNK at a time, as (the list's placeholders, its parameters), each
    chunk padded with its last value to a power of two: a query then takes one of ten
    shapes. A shape per batch size would fill the connection's statement cache (128
    prepared statements, each a compiled program in C memory, ~40 KB at 500 values) as
    batch sizes vary over a run: a shard's heap grew ~5 MB that way."""
    for i in range(0, len(values), IN_CHUNK):
        part = list(values[i:i + IN_CHUNK])
        size = 1 << (len(part) - 1).bit_length()
        part += [part[-1]] * (size - len(part))  # a repeated value matches nothing more
        yield ", ".join("?" * size), part
