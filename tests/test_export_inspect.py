"""`ultra export inspect`: Inspect AI eval logs read back with inspect_ai's own API, and
served by `inspect view` on loopback into headless Chromium (no network)."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.collection_helpers import ROOT, events, ultra



@pytest.fixture(scope="module")
def inspect_extra():
    """The `inspect` extra, installed into this environment if it is not yet."""
    if importlib.util.find_spec("inspect_ai") is None:
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"{ROOT}[inspect]"],
                              capture_output=True, text=True, timeout=600)
        if proc.returncode != 0 or importlib.util.find_spec("inspect_ai") is None:
            pytest.fail(f"pip install 'ultra[inspect]' failed: {proc.stderr[-300:]}")
    return Path(sys.executable).with_name("inspect")


@pytest.fixture(scope="module")
def demo(demo, tmp_path_factory):
    """A copy of the session's demo run (tests/conftest.py): its directory, log, run id."""
    tmp = tmp_path_factory.mktemp("demo")
    return tmp, demo.copy_to(tmp) / "events.db", demo.run_id


def test_the_export_reads_back_with_inspect_ai(inspect_extra, demo, tmp_path):
    from inspect_ai.log import read_eval_log
    from inspect_ai.model import ChatMessageAssistant, ChatMessageTool

    _, db, run = demo
    out = tmp_path / "logs"
    proc = ultra("export", "inspect", "--run", run, "--models", "sim-good", "--output", str(out),
                 "--db", str(db))
    assert proc.returncode == 0, proc.stderr
    files = sorted(out.glob("*.eval"))
    assert [f.name for f in files] == [f"{run}_sim-good.eval"]
    tests = {e["test_key"]: e for e in events(db, "--run", run)
             if e["type"] in ("test.completed", "test.errored") and e["model"] == "sim-good"}
    log = read_eval_log(str(files[0]))
    assert log.status == "success" and log.eval.model == "ultra/sim-good"
    assert {s.id for s in log.samples} == set(tests)
    assert log.results.total_samples == len(tests)
    for s in log.samples:
        e = tests[s.id]
        assert s.messages and s.input and s.messages[0].role == "system"
        assert s.scores["outcome"].value == e["result"]["outcome"]
        assert s.scores["final_score"].value == e["result"]["metrics"]["final_score"]
        assert s.metadata["task_id"] == e["task_id"] and s.metadata["prompt_type"] == e["prompt_type"]
        assert s.model_usage["sim-good"].input_tokens == e["usage"]["prompt_tokens"]
        assert sum(isinstance(m, ChatMessageAssistant) for m in s.messages) == e["result"]["turns"]
    native = [s for s in log.samples if any(isinstance(m, ChatMessageTool) for m in s.messages)]
    assert native and native[0].messages[2].tool_calls  # calls with their results
    names = {m.function for m in native[0].messages if isinstance(m, ChatMessageTool)}
    assert names <= {c.function for m in native[0].messages if isinstance(m, ChatMessageAssistant)
                     for c in (m.tool_calls or ())}
    every = ultra("export", "inspect", "--run", run, "--output", str(tmp_path / "all"), "--db", str(db))
    assert every.returncode == 0 and len(list((tmp_path / "all").glob("*.eval"))) == 4


def test_bad_export_input_is_one_line(inspect_extra, demo, tmp_path):
    _, db, run = demo
    for args, said in ((["--run", "nope"], "no run 'nope'"),
                       (["--run", run, "--models", "gpt-9"], "has no tests of gpt-9")):
        proc = ultra("export", "inspect", *args, "--output", str(tmp_path / "x"), "--db", str(db))
        assert proc.returncode == 2 and said in proc.stderr, proc.stderr
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_inspect_view_shows_a_samples_messages(inspect_extra, demo, tmp_path, chromium):
    from playwright.sync_api import sync_playwright

    _, db, run = demo
    out = tmp_path / "logs"
    assert ultra("export", "inspect", "--run", run, "--models", "sim-good", "--output", str(out),
                 "--db", str(db)).returncode == 0
    from inspect_ai.log import read_eval_log
    from inspect_ai.model import ChatMessageTool

    log = read_eval_log(str(next(out.glob("*.eval"))))
    sample = next(s for s in log.samples if any(isinstance(m, ChatMessageTool) for m in s.messages))
    tool = next(m for m in sample.messages if isinstance(m, ChatMessageTool))
    port = _free_port()
    server = subprocess.Popen(
        [str(inspect_extra), "view", "--log-dir", str(out), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "INSPECT_TELEMETRY": "false"}, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, server.stdout.read()
                time.sleep(0.2)
        hosts: set[str] = set()
        with sync_playwright() as p:
            browser = p.chromium.launch(**chromium)
            page = browser.new_page()

            def only_loopback(route) -> None:  # no network: anything else is refused
                host = route.request.url.split("/")[2]
                hosts.add(host)
                route.continue_() if host == f"127.0.0.1:{port}" else route.abort()

            page.route("**/*", only_loopback)
            page.goto(f"http://127.0.0.1:{port}/")
            page.get_by_text("sim-good").first.click()
            page.get_by_text(str(sample.id)).first.click()
            page.wait_for_url("**/samples/**", timeout=20_000)
            page.get_by_text("result stored as").first.wait_for(timeout=20_000)  # a tool result
            body = page.inner_text("body")
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=20)
    assert "SYSTEM" in body.upper() and "[ultra-workflow v1]" in body  # the system prompt
    assert "result stored as" in body  # a tool result
    assert tool.function in body  # the call
    assert hosts == {f"127.0.0.1:{port}"}
