"""A server that echoes pieces of the key back (a suffix, the key upper-cased, reversed) in
its error bodies: none of them reaches any output of ultra, on stderr, stdout, in an event
or in a file it writes. A real `ultra` process against a real loopback HTTP server."""

from __future__ import annotations

import http.server
import json
import threading
import uuid
from pathlib import Path

import pytest

from tests.collection_helpers import events, model, ultra
from tests.test_routes import real_providers, write

KEY = f"sk-live-{uuid.uuid4().hex}{uuid.uuid4().hex[:8]}"


def _variants(key: str) -> list[str]:
    return [key[-12:], key.upper(), key[::-1], key[8:20], key[-12:].upper()]


class _Echo(http.server.BaseHTTPRequestHandler):
    status = 401

    def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
        self.rfile.read(int(self.headers.get("content-length") or 0))
        key = self.headers.get("authorization", "").removeprefix("Bearer ")
        words = ", ".join(_variants(key))
        body = json.dumps({"error": {"message": f"Incorrect API key provided: {words}",
                                     "code": "invalid_api_key"}}).encode()
        self.send_response(self.status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def echo_server():
    def serve(status: int):
        handler = type("Handler", (_Echo,), {"status": status})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    servers: list[http.server.ThreadingHTTPServer] = []
    yield serve
    for s in servers:
        s.shutdown()
        s.server_close()


def _outputs(tmp_path: Path, *procs) -> list[str]:
    out = [p.stdout + p.stderr for p in procs]
    for f in tmp_path.rglob("*"):
        if f.is_file():
            out.append(f.read_bytes().decode("latin-1"))
    return out


@pytest.mark.parametrize("status, preflight", [(401, True), (401, False), (500, False)])
def test_pieces_and_case_variants_of_a_key_never_appear_in_any_output(tmp_path, echo_server,
                                                                     status, preflight):
    url = echo_server(status)
    config = write(tmp_path, real_providers(url, instances=2, models=model(
        "sim-good", "gw", "single", workers=1, qps=50, max_retries=1, key=0)))
    env = {"ULTRA_R_KEY0": KEY, "ULTRA_R_KEY1": "unused-key-1", "ULTRA_R_KEY2": "unused-key-2",
           "ULTRA_R_AZURE": "0" * 32}
    args = ["--config", str(config), "--db", str(tmp_path / "events.db"), "--out",
            str(tmp_path / "master.json")]
    proc = ultra("run", *args, *([] if preflight else ["--no-preflight"]), env=env)
    assert proc.returncode == (2 if preflight else 1), proc.stderr
    assert "Incorrect API key provided" in proc.stderr + proc.stdout  # the message is kept ...
    procs = [proc]
    if not preflight:
        errored = events(tmp_path / "events.db", "--type", "test.errored")
        assert errored and all("Incorrect API key provided" in e["message"] for e in errored)
        procs.append(ultra("events", "--db", str(tmp_path / "events.db")))
        procs.append(ultra("report", "--db", str(tmp_path / "events.db"), "--out",
                           str(tmp_path / "master.json"), "--format", "json"))
    for haystack in _outputs(tmp_path, *procs):  # ... without any piece of the key
        for piece in [KEY, *_variants(KEY)]:
            assert piece not in haystack
            assert piece.lower() not in haystack.lower()
