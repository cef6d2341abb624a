"""Resume: which tests of a selection the log already holds, and the plan of the rest.

Kept apart from the runner so that `ultra plan` loads no HTTP or trio code.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from ultra.config import Config
from ultra.collect.plan import Plan, Selection, check_selection, make_plan, selection_keys
from ultra.projection.reading import log_repairs
from ultra.eventlog.store import EventLog
from ultra.suites import Suite, get_suite
from ultra.projection.completion_index import CompletionIndex


def completed_test_keys(log: EventLog, among: Iterable[str] | None = None) -> set[str]:
    """Keys of tests with a `test.completed` that no `tests.retracted` removed: `ultra run`
    resumes with this (completed tests are not taken again; tests that only errored are).
    With `among` (the selection's keys), only those are looked up, by key: the cost follows
    the selection, not the log."""
    withdrawn = log_repairs(log).withdrawn
    found = CompletionIndex.of(log).completions() if among is None else CompletionIndex.of(log).completions_of(among)
    return {key for key, event_id in found if event_id not in withdrawn}


def completed_keys(db: Path | str, config: Config, suite: Suite, sel: Selection) -> set[str]:
    if isinstance(db, Path) and not db.exists():
        return set()
    # create=True: another collector may be creating this very log right now
    with EventLog.open(db, create=True) as log:
        return completed_test_keys(log, selection_keys(config, suite, sel))


def plan_run(config: Config, sel: Selection, db: Path | str, tasks: str | None) -> Plan:
    """Check the selection, read what the log already holds, and plan what is left."""
    suite = get_suite(sel.suite, tasks)
    check_selection(config, suite, sel)
    return make_plan(config, suite, sel, completed_keys(db, config, suite, sel),
                     tasks_id=tasks_id(tasks))


def tasks_id(tasks: str | None) -> str | None:
    """A task library's identity in a condition: the digest of its bytes (None: the
    suite's bundled library)."""
    if not tasks:
        return None
    import hashlib

    try:
        with open(tasks, "rb") as fh:
            return "sha256:" + hashlib.sha256(fh.read()).hexdigest()[:12]
    except OSError:
        return None


def key_problems(plan: Plan) -> dict[str, tuple[str, str]]:
    """key variable -> (provider, what is wrong) for each variable the planned routes read
    that the environment lacks or holds something no HTTP header can carry: `ultra run`
    refuses these before anything starts, `ultra plan` warns of them."""
    problems: dict[str, tuple[str, str]] = {}
    for s in plan.shards:
        env = s.route.key_env
        value = os.environ.get(env) if env else None
        if env and not value:
            problems[env] = (s.provider, "is not set")
        elif env and value and not (value.isascii() and value.isprintable()):
            problems[env] = (s.provider, "holds characters an API key cannot have (non-ASCII"
                                         " or control characters); check it")
    return problems


__all__ = ["completed_keys", "completed_test_keys", "key_problems", "plan_run", "tasks_id"]
