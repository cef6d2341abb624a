"""Starting and stopping the simulator: SimProcess, `ultra sim serve`, in-process `serve`."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from ultra.errors import UserError
from ultra.sim.config import Faults, load_toml
from ultra.sim.process import SimStartError
from ultra.sim.server import SimConfig, SimProcess, key_fingerprint, serve

ROOT = Path(__file__).resolve().parents[1]
SECRET = "sk-live-DO-NOT-LEAK-4242"


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def read_line(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> str:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        assert sel.select(timeout), "no listening line"
    return proc.stdout.readline().decode()


def test_sim_process_starts_and_stops_cleanly() -> None:
    with SimProcess(SimConfig(responder="echo")) as sim:
        assert sim.url.startswith("http://127.0.0.1:") and sim.port > 0
        assert httpx.get(f"{sim.url}/health").json() == {"status": "ok"}
        assert sim.returncode is None
    assert sim.returncode == 0
    assert sim.stop() == 0  # idempotent


def test_sim_process_reports_a_child_that_dies_instead_of_hanging() -> None:
    with SimProcess(SimConfig(responder="echo")) as first:
        taken = SimConfig(responder="echo", port=first.port)  # the port is in use
        with pytest.raises(SimStartError, match="exited with code 2"):
            SimProcess(taken).start()


def test_sim_process_child_exits_when_its_parent_goes_away() -> None:
    sim = SimProcess(SimConfig(responder="echo")).start()
    try:
        assert sim._proc is not None and sim._proc.stdin is not None
        sim._proc.stdin.close()  # what the kernel does when the parent dies
        assert sim._proc.wait(timeout=20) == 0
    finally:
        sim.stop()


def test_invalid_config_is_one_clear_error() -> None:
    with pytest.raises(UserError, match="sum to"):
        SimProcess(SimConfig(faults=Faults(hang=0.7, malformed=0.7)))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_cli_serve_prints_the_line_and_exits_cleanly_on_signal(sig: signal.Signals) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "ultra", "sim", "serve", "--port", "0", "--responder", "echo", "--key-rps", "100"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_env(),
    )
    try:
        line = read_line(proc)
        assert line.startswith("ultra-sim listening on http://127.0.0.1:")
        url = line.split()[-1]
        r = httpx.post(
            f"{url}/chat/completions",
            json={"model": "sim-good", "messages": []},
            headers={"Authorization": f"Bearer {SECRET}"},
        )
        assert r.status_code == 200
        stats_text = httpx.get(f"{url}/stats").text
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert out.decode() == ""  # the listening line was the only one
    assert "Traceback" not in err.decode()
    assert SECRET not in stats_text and SECRET not in err.decode()
    assert key_fingerprint(SECRET) in stats_text


def test_cli_serve_reads_a_toml_config_and_options_override_it(tmp_path: Path) -> None:
    config_file = tmp_path / "sim.toml"
    config_file.write_text(
        'responder = "echo"\nseed = 5\n[faults]\ncontext_length = 1.0\n[limits]\nkey_rps = 50\n'
    )
    config = load_toml(config_file)
    assert config.faults.context_length == 1.0 and config.limits.key_rps == 50 and config.seed == 5
    proc = subprocess.Popen(
        [sys.executable, "-m", "ultra", "sim", "serve", "--config", str(config_file), "--fault-context-length", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_env(),
    )
    try:
        url = read_line(proc).split()[-1]
        r = httpx.post(f"{url}/v1/chat/completions", json={"model": "sim-good", "messages": []}, headers={"Authorization": "Bearer k"})
        assert r.status_code == 200  # the option turned the file's fault off
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0


def test_cli_serve_bad_config_is_one_line_and_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[faults]\nhang = 2.0\n")
    proc = subprocess.run(
        [sys.executable, "-m", "ultra", "sim", "serve", "--config", str(bad)],
        capture_output=True,
        env=child_env(),
        timeout=30,
    )
    assert proc.returncode == 2
    err = proc.stderr.decode().strip()
    assert len(err.splitlines()) == 1 and "faults.hang" in err


def tool_caller(model: str, skill: float, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> dict[str, Any]:
    assert tools, "the tools of the request reach the responder"
    name = tools[0]["function"]["name"]
    return {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": name, "arguments": f'{{"skill": {skill}}}'}}],
    }


def test_in_process_serve_with_an_injected_responder() -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(lambda task_status: serve(SimConfig(), responder=tool_caller, task_status=task_status))
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                tools = [{"type": "function", "function": {"name": "file_reader", "parameters": {}}}]
                r = await client.post(
                    "/v1/chat/completions",
                    json={"model": "sim-skill-70", "messages": [{"role": "user", "content": "go"}], "tools": tools},
                    headers={"Authorization": "Bearer k"},
                )
            nursery.cancel_scope.cancel()
        assert r.status_code == 200
        choice = r.json()["choices"][0]
        assert choice["finish_reason"] == "tool_calls"
        call = choice["message"]["tool_calls"][0]["function"]
        assert call == {"name": "file_reader", "arguments": '{"skill": 0.7}'}

    trio.run(main)
