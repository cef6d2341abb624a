"""What a run ended with (`ultra run --json`, the summary) and the exit code it maps to."""

from __future__ import annotations

import math

import msgspec

from ultra.errors import UserError
from ultra.collect.plan import Shard
from ultra.collect.shard import ShardSnapshot

EXIT_INTERRUPTED = 130


class BrokenRoute(msgspec.Struct, kw_only=True):
    shard: str
    route: str  # provider, model and key index or deployment: never the key
    reason: str  # "HTTP 401: <the server's message>", or why it could not be reached


class RouteErrors(msgspec.Struct, kw_only=True):
    """Errored tests of one route with one reason, status and server message."""

    shard: str
    route: str
    reason: str
    http_status: int | None
    message: str
    count: int


class ModelTokens(msgspec.Struct, kw_only=True):
    model: str
    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int
    cost: float | None  # from the config's prices per million tokens, when it gives them


class RunResult(msgspec.Struct, kw_only=True):
    run_id: str
    planned: int
    skipped_completed: int
    completed: int
    errored: int
    succeeded: int
    interrupted: bool
    crashed_processes: int
    not_taken: int = 0  # held by other runs when this one stopped (see the shards' held_by)
    elsewhere: int = 0  # completed by another collector after this run's plan
    fenced: int = 0  # results dropped: this run lost their tests' claims while it stalled
    unstored: int = 0  # results lost with the event log (it failed mid-run): taken again next run
    shards: list[ShardSnapshot]
    broken_routes: list[BrokenRoute] = []
    errors: list[RouteErrors] = []
    tokens: list[ModelTokens] = []
    max_errors: int = 0  # errored tests accepted (--max-errors) before the exit code is 1
    shard_models: dict[str, str] = {}  # shard id -> canonical model
    db: str
    out: str
    exit_code: int
    results: str = ""  # results.db, projected with `out` at the end

    def held(self) -> list[str]:
        """One line per shard that left tests to other runs: how many, and which runs."""
        return [f"{s.shard}: {s.not_taken} tests not taken, held by run {', '.join(s.held_by)}"
                for s in self.shards if s.not_taken]


def route_label(s: Shard) -> str:
    """Where a shard's requests go, for a person: provider, model, key index or deployment."""
    where = f"key {s.key_index}" if s.key_index is not None else f"deployment {s.deployment!r}"
    return f"provider {s.provider!r}, model {s.model!r}, {where}"


def error_allowance(spec: str | None, planned: int) -> int:
    """Errored tests accepted by `--max-errors N` or `--max-errors P%` for a run of `planned`."""
    if spec is None:
        return 0
    text = spec.strip()
    try:
        if text.endswith("%"):
            share = float(text[:-1])
            if not 0 <= share <= 100:
                raise ValueError
            return math.floor(share * planned / 100 + 1e-9)
        count = int(text)
        if count < 0:
            raise ValueError
        return count
    except ValueError:
        raise UserError(f"invalid --max-errors {spec!r} (a count such as 10, or a share such as 5%)") from None


def exit_code(*, planned: int, completed: int, allowance: int, interrupted: bool, crashed: int,
              broken: int) -> int:
    """0 only when every planned test completed (or the shortfall is within --max-errors);
    1 when tests errored, a route broke or a shard process crashed; 130 when interrupted."""
    if interrupted:
        return EXIT_INTERRUPTED
    if crashed or broken or planned - completed > allowance:
        return 1
    return 0


__all__ = ["BrokenRoute", "error_allowance", "exit_code", "EXIT_INTERRUPTED", "ModelTokens",
           "route_label", "RouteErrors", "RunResult"]
