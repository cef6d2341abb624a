"""A throwaway PostgreSQL server for tests and benchmarks: `initdb` + `pg_ctl` in a
temporary directory, listening on a loopback port. As root, the server runs as the
`postgres` user (PostgreSQL refuses to run as root).

    with PgServer.start() as pg:
        url = pg.create_database("t1")   # postgresql://postgres@127.0.0.1:PORT/t1
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


def pg_bin() -> Path | None:
    """The directory of Debian's PostgreSQL binaries (newest version), if installed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    def __init__(self, bindir: Path, root: Path, port: int, as_user: list[str]) -> None:
        self.bindir, self.root, self.port, self._as = bindir, root, port, as_user
        self.data = root / "data"
        self._opts = ""

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url_of(self, name: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def _run(self, *args: str, timeout: float = 120) -> None:
        subprocess.run([*self._as, *args], check=True, timeout=timeout, capture_output=True,
                       cwd=self.root)

    @classmethod
    def start(cls, *, durable: bool = False) -> PgServer:
        """`durable=False` turns fsync off: tests need a server's semantics, not its disk safety."""
        bindir = pg_bin()
        if bindir is None:
            raise RuntimeError("PostgreSQL is not installed (apt-get install -y postgresql)")
        root = Path(tempfile.mkdtemp(prefix="ultra-pg-"))
        as_user: list[str] = []
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(root, pw.pw_uid, pw.pw_gid)
            as_user = ["runuser", "-u", "postgres", "--"]
        server = cls(bindir, root, _free_port(), as_user)
        server._run(str(bindir / "initdb"), "-D", str(server.data), "-U", "postgres",
                    "--auth=trust", "-E", "UTF8", "--no-locale")
        opts = [f"-p {server.port}", "-c listen_addresses=127.0.0.1",
                f"-c unix_socket_directories={root}", "-c max_connections=200"]
        if not durable:
            opts += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        server._opts = " ".join(opts)
        server.resume()
        return server

    def pause(self) -> None:
        """Stop the server, keeping its data: an outage. Fast mode: every connection is
        dropped at once, and what was committed stays (with fsync off, an immediate stop
        could lose acknowledged commits, which no client can make up for)."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast",
                  "-w", "stop", timeout=60)

    def resume(self) -> None:
        """Start the server (again) on the same port and data."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"),
                  "-w", "-t", "120", "-o", self._opts, "start")

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url_of(name)

    def stop(self) -> None:
        try:
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                      "-w", "stop", timeout=60)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PgServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
