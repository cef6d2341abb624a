"""Shared fixtures: one real PostgreSQL server per test session (started and stopped here),
a fresh database per test, and `db` that runs a store test against both backends."""

from __future__ import annotations

import itertools
import os

import pytest
from pg_server import PgServer, pg_bin

_names = itertools.count()
CHROMIUM = "/usr/bin/chromium"  # Debian's package: .ci/run installs it; playwright never downloads one
_CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def chromium() -> dict:
    """playwright's `launch` arguments for Debian's headless chromium; missing, the test
    fails in CI and is skipped elsewhere (as PostgreSQL's)."""
    if not os.path.exists(CHROMIUM):
        if _in_ci():
            pytest.fail("chromium is not installed; .ci/run installs it (apt-get install -y chromium)")
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)")
    return {"executable_path": CHROMIUM, "args": _CHROMIUM_ARGS}


@pytest.fixture(scope="session")
def pg_server():
    if pg_bin() is None:
        if _in_ci():
            pytest.fail("PostgreSQL is not installed; .ci/run installs it (apt-get install -y postgresql)")
        pytest.skip("PostgreSQL is not installed (apt-get install -y postgresql)")
    server = PgServer.start()
    yield server
    server.stop()


@pytest.fixture
def pg_url(pg_server):
    """A fresh, empty database on the session's server."""
    return pg_server.create_database(f"t{os.getpid()}_{next(_names)}")


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path):
    """An empty event log location on each backend: a file path, or a server URL."""
    if request.param == "sqlite":
        return tmp_path / "events.db"
    return request.getfixturevalue("pg_url")


class Demo:
    """The bundled demo's `ultra run` (in an empty directory), made once per session: its
    data directory, what the run printed, its run id and how many tests it completed."""

    def __init__(self, root, stdout: str) -> None:
        import json

        from collection_helpers import events

        self.data = root / "ultra-data"
        self.stdout = stdout
        started = events(self.data / "events.db", "--type", "run.started")
        self.run_id = started[0]["run_id"]
        self.completed = len(events(self.data / "events.db", "--type", "test.completed"))
        self.result = {"run_id": self.run_id, "completed": self.completed,
                       "planned": json.loads(json.dumps(started[0]["plan"]))["tests"]}

    def copy_to(self, where):
        """A copy of the demo's data directory under `where` (`where/ultra-data`), to
        change freely: tests share one run of the demo instead of a run each."""
        import shutil

        shutil.copytree(self.data, where / "ultra-data")
        return where / "ultra-data"


@pytest.fixture(scope="session")
def demo(tmp_path_factory) -> Demo:
    from collection_helpers import ultra

    root = tmp_path_factory.mktemp("shared-demo")
    proc = ultra("run", "--progress", "none", cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return Demo(root, proc.stdout)
