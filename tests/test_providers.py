"""One provider seam: every kind is a module of `ultra.providers`, the rest of the tree
names none of them, and whether a result is simulated is what the server's reply says."""

from __future__ import annotations

import http.server
import json
import re
import threading
from pathlib import Path

from tests.collection_helpers import ROOT, events, model, ultra
from ultra.providers import KINDS, provider


def test_no_code_outside_the_simulator_names_its_kind():
    found = []
    for path in [*(ROOT / "ultra").rglob("*.py"), *(ROOT / "projections").rglob("*.py")]:
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith("ultra/sim/") or rel == "ultra/providers/sim.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"""["']sim["']""", line):
                found.append(f"{rel}:{n}: {line.strip()}")
    assert found == []


def test_every_kind_is_a_provider_module():
    assert KINDS == ("azure", "openai", "sim")
    for kind in KINDS:
        p = provider(kind)
        assert callable(p.routes) and callable(p.serving)


class _Plain(http.server.BaseHTTPRequestHandler):
    """An OpenAI-compatible server that is not the simulator: its replies carry no mark."""

    def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
        body = json.loads(self.rfile.read(int(self.headers.get("content-length") or 0)))
        reply = json.dumps({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": body.get("model", "m"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "I cannot help."},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14},
        }).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args) -> None:
        pass


def test_a_sim_provider_pointed_at_another_server_gives_real_results(tmp_path: Path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Plain)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        config = tmp_path / "c.toml"
        config.write_text(f"""
[run]
prompt_types = ["baseline"]
task_types = ["simple_task"]
num_instances = 2

[providers.p]
kind = "sim"
url = "{url}"

{model("sim-good", "p", "single", workers=1, qps=50)}
""")
        proc = ultra("run", "--config", str(config), "--db", str(tmp_path / "e.db"), "--out",
                     str(tmp_path / "m.json"), "--json")
    finally:
        server.shutdown()
        server.server_close()
    assert proc.returncode == 0, proc.stderr
    done = events(tmp_path / "e.db", "--type", "test.completed")
    checks = events(tmp_path / "e.db", "--type", "route.checked")
    assert len(done) == 2 and not any(e["simulated"] for e in done)
    assert checks and not any(c["simulated"] for c in checks)
    master = json.loads((tmp_path / "m.json").read_text())
    assert master["summary"]["simulated_tests"] == 0
