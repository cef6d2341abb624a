"""One error hierarchy: real SQLite and OS failures are told apart by their codes (not by
their wording), each maps to its class, and the command line prints one line and exits 2."""

from __future__ import annotations

import errno
import json
import sqlite3

import msgspec

import pytest
from collection_helpers import ultra
from storage_helpers import completed

from ultra import errors
from ultra.eventlog.store import EventLog


def _sqlite_failure(op) -> sqlite3.Error:
    with pytest.raises(sqlite3.Error) as info:
        op()
    return info.value


def test_sqlite_failures_map_to_their_storage_errors(tmp_path):
    path = tmp_path / "a.db"
    sqlite3.connect(path).execute("CREATE TABLE t (x)").connection.commit()
    ro = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    found = errors.storage_error(path, _sqlite_failure(lambda: ro.execute("INSERT INTO t VALUES (1)")))
    assert isinstance(found, errors.StoreReadOnly) and str(found).startswith(f"{path}: read-only")

    junk = tmp_path / "junk.db"
    junk.write_bytes(b"SQLite format 3\0" + b"\xff" * 4096)
    found = errors.storage_error(junk, _sqlite_failure(
        lambda: sqlite3.connect(junk).execute("SELECT * FROM sqlite_master").fetchall()))
    assert isinstance(found, errors.StoreCorrupt)

    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    found = errors.storage_error(path, _sqlite_failure(lambda: other.execute("BEGIN IMMEDIATE")))
    assert isinstance(found, errors.StoreBusy)
    holder.execute("ROLLBACK")

    assert isinstance(errors.storage_error("out.json", OSError(errno.ENOSPC, "No space left")),
                      errors.StoreFull)
    assert errors.storage_error(path, sqlite3.OperationalError("no such table: x")) is None
    assert all(issubclass(c, errors.StorageError) for c in (
        errors.StoreReadOnly, errors.StoreFull, errors.StoreCorrupt, errors.StoreBusy,
        errors.StoreLost))
    assert {c.exit_code for c in (errors.ConfigError, errors.StorageError, errors.ImportConflict,
                                  errors.RouteRefused)} == {2}


def test_an_import_conflict_is_its_own_error_and_one_line_at_the_command_line(tmp_path):
    db = tmp_path / "events.db"
    first = completed(1)
    with EventLog.open(db) as log:
        log.append([first])
        obj = msgspec.to_builtins(first)
        obj["result"]["turns"] += 1
        changed = json.dumps(obj)
        with pytest.raises(errors.ImportConflict):
            log.append_raw([changed])
    (tmp_path / "in.jsonl").write_text(changed + "\n")
    result = ultra("import", str(tmp_path / "in.jsonl"), "--db", str(db))
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ultra: error: ")
    assert "differs from the stored event" in lines[0]
