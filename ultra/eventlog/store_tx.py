"""What every part of the event log shares: the write transaction's protocol, and the
decorator that runs a call again once a lost connection to the log is back."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

__all__ = ["Cursor", "Tx", "patient"]


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
