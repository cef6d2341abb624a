"""`SimProcess`: the simulator as a real child process, for tests, the demo and benchmarks.

A child process (not a thread) so the server has its own interpreter and core: the client
under test and the server never compete for one GIL, and what the tests see is what a
real provider would see over loopback.
"""

from __future__ import annotations

import http.client
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from ultra.sim.config import SimConfig, to_json, validate

_LISTENING_PREFIX = b"ultra-sim listening on "
CONTROL_TIMEOUT_S = 30.0  # seconds one control request (/stats) may take before it is sent again


class SimStartError(RuntimeError):
    pass


class SimProcess:
    """Start the simulator in a child process; `with SimProcess(cfg) as sim: sim.url`.

    The child exits when we stop it (SIGTERM, then SIGKILL after `stop_timeout`) and also
    when our end of its stdin closes, so even a parent killed by SIGKILL leaves no orphan.
    """

    def __init__(self, config: SimConfig | None = None, *, start_timeout: float = 30.0, stop_timeout: float = 5.0) -> None:
        self.config = validate(config or SimConfig())
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.url = ""
        self.host = ""
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> SimProcess:
        # The child must import the same `ultra` as we do, installed or not.
        root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "ultra.sim.server", "--config-json", to_json(self.config), "--watch-stdin"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        try:
            line = self._read_listening_line()
        except BaseException:
            self.stop()
            raise
        self.url = line.decode().removeprefix(_LISTENING_PREFIX.decode()).strip()
        parts = urlsplit(self.url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 0
        return self

    def _read_listening_line(self) -> bytes:
        """The child's first stdout line, without ever blocking past the deadline or on a
        child that died before printing it."""
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        fd = proc.stdout.fileno()
        buf = b""
        deadline = time.monotonic() + self.start_timeout
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in buf:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise SimStartError(f"simulator did not start within {self.start_timeout:.0f} s")
                if sel.select(remaining):
                    chunk = os.read(fd, 4096)
                    if not chunk:
                        code = proc.wait()
                        raise SimStartError(f"simulator exited with code {code} before listening")
                    buf += chunk
        line = buf.split(b"\n", 1)[0]
        if not line.startswith(_LISTENING_PREFIX):
            raise SimStartError(f"unexpected first line from simulator: {line[:200]!r}")
        return line

    def stop(self) -> int | None:
        """Stop the child (idempotent); its exit code."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:
                    pass
        return proc.returncode

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def __enter__(self) -> SimProcess:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    # -- control endpoints -----------------------------------------------------------------

    def _request(self, method: str, path: str, *, attempts: int = 3) -> Any:
        """A control request, tried `attempts` times 30 s each: under a load that keeps both
        cores busy the server's loop may answer its control endpoints late, not never."""
        for attempt in range(attempts):
            # http.client, not urllib: loopback must never go through an *_proxy variable.
            conn = http.client.HTTPConnection(self.host, self.port, timeout=CONTROL_TIMEOUT_S)
            try:
                conn.request(method, path)
                resp = conn.getresponse()
                body = resp.read()
            except (TimeoutError, ConnectionError):
                if attempt == attempts - 1:
                    raise
                continue
            finally:
                conn.close()
            if resp.status != 200:
                raise RuntimeError(f"simulator {method} {path}: HTTP {resp.status}")
            return json.loads(body)
        raise AssertionError("unreachable")

    def stats(self) -> dict[str, Any]:
        """The accounting at `GET /stats` (see the server module for its shape)."""
        return self._request("GET", "/stats")

    def reset(self) -> None:
        """Zero the accounting and the limit windows, and restart the storm clock."""
        self._request("POST", "/stats/reset")


__all__ = ["CONTROL_TIMEOUT_S", "SimProcess", "SimStartError"]
