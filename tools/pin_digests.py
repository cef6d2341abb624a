"""The digests of what the pinned log projects to: master_database.json's bytes and every
table of results.db, row by row. A redesign must keep them (tests/test_pins.py); a change
that means to alter an output updates them with `--write`, and says so in its commit.

    python tools/pin_digests.py          # print the digests of today's code
    python tools/pin_digests.py --write  # and store them in tests/data/pinned/digests.json
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PINNED = ROOT / "tests" / "data" / "pinned"


def _ultra(*args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "ultra", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"ultra {' '.join(args)}: exit {proc.returncode}: {proc.stderr.strip()}")


def table_digests(results: Path) -> dict[str, str]:
    """sha256 of each table's rows (in order of every column), by table name."""
    out = {}
    with sqlite3.connect(results) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            " ORDER BY name")]
        for t in tables:
            cols = [r[1] for r in conn.execute(f"PRAGMA table_info({t})")]
            rows = conn.execute(f"SELECT * FROM {t} ORDER BY {', '.join(map(str, range(1, len(cols) + 1)))}").fetchall()
            out[t] = hashlib.sha256(json.dumps([cols, rows]).encode()).hexdigest()
    return out


def digests() -> dict[str, object]:
    """Import the pinned log into a fresh database, project it, and digest the outputs."""
    with tempfile.TemporaryDirectory() as tmp:
        db, out, results = Path(tmp) / "events.db", Path(tmp) / "master.json", Path(tmp) / "results.db"
        _ultra("import", str(PINNED / "events.jsonl"), "--db", str(db))
        _ultra("project", "--db", str(db), "--out", str(out), "--results", str(results))
        return {"master_database.json": hashlib.sha256(out.read_bytes()).hexdigest(),
                "results.db": table_digests(results)}


def main() -> None:
    found = digests()
    text = json.dumps(found, indent=2, sort_keys=True) + "\n"
    print(text, end="")
    if "--write" in sys.argv[1:]:
        (PINNED / "digests.json").write_text(text)
        print(f"written to {PINNED / 'digests.json'}", file=sys.stderr)


if __name__ == "__main__":
    main()
