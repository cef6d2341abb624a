"""Where a log is and what schema it has: `--db` as a file path or a PostgreSQL URL, and the
plain-SQL migrations of each dialect (`migrations/<dialect>/NNNN_*.sql`)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

__all__ = ["MIGRATIONS_TABLE", "SERVER_SCHEMES", "db_location", "is_server_url", "load_migrations",
           "migrations_dir"]

MIGRATIONS_TABLE = "ultra_migrations"
_MIGRATION_NAME = re.compile(r"^(\d{4})_[\w.-]+\.sql$")
SERVER_SCHEMES = ("postgresql://", "postgres://")


def is_server_url(db: str | Path) -> bool:
    return isinstance(db, str) and db.startswith(SERVER_SCHEMES)


def db_location(text: str | Path) -> Path | str:
    """What `--db` names: a server URL stays a string (a Path would fold its `//`)."""
    return text if is_server_url(text) else Path(text)


def migrations_dir(dialect: str = "sqlite") -> Traversable:
    """`ultra/_migrations/<dialect>` in an installed wheel, else the repo's `migrations/`.

    Both are plain directories; importlib.resources (which imports zipfile: ~3 ms of every
    command's start) is asked only when neither is, as in a zipped install.
    """
    here = Path(__file__).resolve().parents[1]  # ultra/
    for root in (here / "_migrations", here.parent / "migrations"):
        if root.is_dir():
            return root / dialect
    import importlib.resources

    return importlib.resources.files("ultra") / "_migrations" / dialect


def load_migrations(dialect: str = "sqlite") -> list[tuple[int, str, str]]:
    """(version, file name, SQL) of every `NNNN_*.sql` of `dialect`, in order."""
    found = []
    for entry in migrations_dir(dialect).iterdir():
        m = _MIGRATION_NAME.match(entry.name)
        if m:
            found.append((int(m.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    found.sort()
    versions = [v for v, _, _ in found]
    if not found or len(set(versions)) != len(versions):
        raise RuntimeError(f"broken migrations directory: {versions}")
    return found
