"""Shared fixtures: one real PostgreSQL server per test session (started and stopped here),
a fresh database per test, and `db` that runs a store test against both backends."""

from __future__ import annotations

import itertools
import os

import pytest
from pg_server import PgServer, pg_bin

_names = itertools.count()


@pytest.fixture(scope="session")
def pg_server():
    if pg_bin() is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
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
