"""ultra's errors: one hierarchy, mapped to exit codes and printed in one place (`fail`).

Every error a user can act on is a `UserError`: the command line prints it as one line per
problem, `ultra: error: ...`, and exits with its `exit_code` (2: bad input or an unusable
store; nothing of the user's data was lost). A failure that is not one of them is a bug and
keeps its traceback.

    UserError               bad input: a path, a flag, a file
    ├── ConfigError         a config file that cannot be read or is not valid
    ├── StorageError        a store ultra cannot use as it is
    │   ├── StoreReadOnly   the file, its directory or the server refuses writes
    │   ├── StoreFull       no space left: nothing of the failed write was kept
    │   ├── StoreCorrupt    pages that do not read back: salvage, then import
    │   ├── StoreBusy       another writer held the lock past our patience
    │   └── StoreLost       the server stayed out of reach past the store's patience
    ├── ImportConflict      an imported event differs from the stored one with its id
    └── RouteRefused        preflight: a route answered with an error, or not at all
"""

from __future__ import annotations

import errno
import sys
from typing import NoReturn


class UserError(Exception):
    """Bad input from the user (path, config, flag, file): reported in one line, exit 2."""

    exit_code = 2


class ConfigError(UserError):
    """A config file that cannot be read, is not TOML, or does not validate."""


class StorageError(UserError):
    """An event log or an output database that ultra cannot use as it is."""


class StoreReadOnly(StorageError):
    """Writes refused: permissions, a read-only mount, a read-only server."""


class StoreFull(StorageError):
    """The disk (or quota) is full; the failed write left nothing behind."""


class StoreCorrupt(StorageError):
    """The file does not read back as a database."""


class StoreBusy(StorageError):
    """Another writer held the write lock for longer than ultra waits."""


class StoreLost(StorageError):
    """The log stayed out of reach for `retry_seconds` (one line: where, and why)."""


class ImportConflict(UserError):
    """An imported event differs from the stored event under its id; nothing was stored."""


class RouteRefused(UserError):
    """A route failed its preflight (the run sent no test)."""


# SQLite's primary result codes (the low byte of `sqlite3.Error.sqlite_errorcode`).
_SQLITE_PERM, _SQLITE_BUSY, _SQLITE_READONLY, _SQLITE_IOERR = 3, 5, 8, 10
_SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_CANTOPEN, _SQLITE_NOTADB = 11, 13, 14, 26
# PostgreSQL's SQLSTATEs for the same failures.
_PG_READ_ONLY, _PG_FULL = ("25006", "42501"), ("53100", "53200")
_PG_CORRUPT, _PG_BUSY = ("XX001", "XX002"), ("55P03", "40P01")
_READ_ONLY_ERRNO = (errno.EROFS, errno.EACCES, errno.EPERM)
_FULL_ERRNO = (errno.ENOSPC, errno.EDQUOT)


def storage_error(where: object, exc: BaseException) -> StorageError | None:
    """What a storage failure means and what to do, as one of the `StorageError`s; None when
    `exc` is not one a user can act on. Told apart by SQLite's result code or the errno."""
    text = str(exc)
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    os_code = getattr(exc, "errno", None)
    state = getattr(exc, "sqlstate", None)
    if state is not None:
        primary = (_SQLITE_READONLY if state in _PG_READ_ONLY else _SQLITE_FULL if state in _PG_FULL
                   else _SQLITE_CORRUPT if state in _PG_CORRUPT
                   else _SQLITE_BUSY if state in _PG_BUSY else None)
    if primary in (_SQLITE_READONLY, _SQLITE_PERM) or os_code in _READ_ONLY_ERRNO:
        return StoreReadOnly(
            f"{where}: read-only ({text}): ultra must write the file and, for SQLite, "
            "its directory (the -wal and -shm files); check permissions and mounts")
    if primary == _SQLITE_FULL or os_code in _FULL_ERRNO:
        return StoreFull(
            f"{where}: the disk is full ({text}); nothing of the failed write was kept: "
            "free space and run the command again (`ultra run` resumes)")
    if primary in (_SQLITE_CORRUPT, _SQLITE_NOTADB, _SQLITE_IOERR):
        return StoreCorrupt(
            f"{where}: the event log is corrupted ({text}); salvage what still reads with "
            f"`ultra events --db {where} > saved.jsonl` and `ultra import saved.jsonl "
            "--db NEW.db` (or `sqlite3 OLD .recover | sqlite3 NEW`)")
    if primary == _SQLITE_CANTOPEN:
        return StoreReadOnly(
            f"{where}: cannot open the event log ({text}): SQLite must be able to create "
            "files beside it (-wal, -shm); is its directory read-only?")
    if primary == _SQLITE_BUSY:
        return StoreBusy(f"{where}: the event log is busy ({text}); is a writer stuck?")
    return None


def say(message: str) -> None:
    """Print `message` on stderr as ultra's error lines (one per problem)."""
    for line in message.splitlines() or [""]:
        print(f"ultra: error: {line}", file=sys.stderr)


def fail(exc: UserError | str) -> NoReturn:
    """Print `exc` and exit with its code: the one place an error becomes an exit."""
    say(str(exc))
    raise SystemExit(exc.exit_code if isinstance(exc, UserError) else UserError.exit_code) from None


def writable_file(path: object, flag: str) -> None:
    """A file path that a command can write later: not a directory, not below a file
    (checked before any work, so a bad `--out` or `--results` costs nothing)."""
    from pathlib import Path

    path = Path(str(path))
    if path.is_dir():
        raise UserError(f"{flag} {path} is a directory; give a file path"
                        f" (e.g. {path / _EXAMPLE.get(flag, 'file')})")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"{flag} {path}: {parent} is not a directory")
            break


_EXAMPLE = {"--out": "master_database.json", "--results": "results.db"}

__all__ = ["ConfigError", "ImportConflict", "RouteRefused", "StorageError", "StoreBusy",
           "StoreCorrupt", "StoreFull", "StoreLost", "StoreReadOnly", "UserError", "fail",
           "say", "storage_error", "writable_file"]
