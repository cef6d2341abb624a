"""The one error type the command line turns into a single line on stderr and exit code 2."""


class UserError(Exception):
    """Bad input from the user (path, config, flag, file): reported in one line, exit 2."""


def storage_problem(where: object, exc: BaseException) -> str | None:
    """One line saying what a storage failure means and what to do, or None when `exc` is
    not one of the failures a user can act on (a read-only, full or corrupted store)."""
    import errno

    text = str(exc)
    low = text.lower()
    code = getattr(exc, "errno", None)
    if "readonly" in low or "read-only" in low or code in (errno.EROFS, errno.EACCES, errno.EPERM):
        return (f"{where}: read-only ({text}): ultra must write the file and, for SQLite, "
                "its directory (the -wal and -shm files); check permissions and mounts")
    if "disk is full" in low or "database or disk is full" in low or code in (errno.ENOSPC, errno.EDQUOT):
        return (f"{where}: the disk is full ({text}); nothing of the failed write was kept: "
                "free space and run the command again (`ultra run` resumes)")
    if "malformed" in low or "not a database" in low or "disk i/o error" in low:
        return (f"{where}: the event log is corrupted ({text}); salvage what still reads with "
                f"`ultra events --db {where} > saved.jsonl` and `ultra import saved.jsonl "
                "--db NEW.db` (or `sqlite3 OLD .recover | sqlite3 NEW`)")
    if "unable to open database file" in low:
        return (f"{where}: cannot open the event log ({text}): SQLite must be able to create "
                "files beside it (-wal, -shm); is its directory read-only?")
    return None


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
