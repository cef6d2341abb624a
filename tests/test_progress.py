"""Progress of `ultra run`: the live table fits 80 columns, plain lines every 10 s for logs,
and a run ends with a per-model table and the report command that shows more."""

from __future__ import annotations

import io
import re
import time

import msgspec
import trio
from collection_helpers import ultra

from ultra.collect.plan import Route, Shard

from ultra.collect.progress import PLAIN_EVERY, Display, plain_line, shard_table
from ultra.collect.shard import ShardProgress, ShardSnapshot

SHARDS = {
    "Llama-3.3-70B-Instruct@Llama-3.3-70B-Instruct-3": ShardSnapshot(
        shard="Llama-3.3-70B-Instruct@Llama-3.3-70B-Instruct-3", planned=1200, completed=610,
        succeeded=500, errored=3, requests=2400, retries=12, throttled=7, seconds=40.0, rate=96.5,
        workers=8, window=8),
    "qwen2.5-72b-instruct@qwen2.5-72b-instruct-key2": ShardSnapshot(
        shard="qwen2.5-72b-instruct@qwen2.5-72b-instruct-key2", planned=400, completed=100,
        succeeded=81, errored=0, requests=500, retries=0, throttled=0, seconds=40.0, rate=10.0,
        workers=128, window=3),
    "gpt-5-mini@gpt-5-mini": ShardSnapshot(shard="gpt-5-mini@gpt-5-mini", planned=50,
                                           completed=50, succeeded=50, seconds=12.0, rate=200.0,
                                           workers=4, window=4),
}


def test_live_table_fits_80_columns_with_suffixes_totals_and_elapsed_time():
    text = shard_table(SHARDS, elapsed=83.0)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "1:23 elapsed" in lines[0]
    names = [line.split()[0] for line in lines if "/" in line and not line.startswith("ultra")]
    assert any(n.startswith("Llama") and n.endswith("-3") for n in names)  # the deployment
    assert any(n.startswith("qwen") and n.endswith("-key2") for n in names)  # and the key
    assert "gpt-5-mini" in names
    total = next(line for line in lines if line.startswith("total")).split()
    assert lines[1].split() == ["route", "done", "succ%", "err", "req/s", "pace", "conc",
                                "retry", "429s", "ETA"]  # one header line, nothing wrapped
    # done/total, success %, errored, req/s over elapsed, summed pace, window, retries, 429s
    assert total[1:9] == ["763/1650", f"{100 * 631 / 760:.1f}", "3", f"{2900 / 83:.1f}", "306.5",
                          "15/140", "12", "7"]
    row = next(line for line in lines if line.startswith("gpt-5-mini")).split()
    assert row[1:] == ["50/50", "100.0", "0", "0.0", "200.0", "4", "0", "0", "done"]
    qwen = next(line for line in lines if line.startswith("qwen")).split()
    assert qwen[6] == "3/128"  # timeouts cut the window of requests in flight


def test_plain_lines_come_every_10_seconds_and_once_at_the_end():
    now = [0.0]
    out = io.StringIO()
    with Display("plain", stream=out, now=lambda: now[0]) as display:
        while now[0] < 35.0:
            display.update(SHARDS)
            now[0] += 0.25
    lines = out.getvalue().splitlines()
    assert [line.split("]")[0] for line in lines] == ["[0:10", "[0:20", "[0:30", "[0:35"]
    assert lines[0] == plain_line(SHARDS, PLAIN_EVERY)
    assert re.fullmatch(r"\[0:10\] 763/1650 tests \(46%\), success 83\.0%, errored 3, "
                        r"290\.0 req/s, 429s 7, ETA 0:11", lines[0]), lines[0]


def test_none_is_silent_and_auto_is_plain_off_a_terminal():
    out = io.StringIO()
    with Display("none", stream=out, now=lambda: 100.0) as d:
        d.update(SHARDS)
    assert out.getvalue() == ""
    assert Display("auto", stream=io.StringIO()).mode == "plain"


def test_a_run_ends_with_a_model_table_and_the_report_command(tmp_path):
    db, out = tmp_path / "e.db", tmp_path / "m.json"
    p = ultra("run", "--db", str(db), "--out", str(out), "--models", "sim-strong,sim-weak",
              "--prompt-types", "baseline", "--num-instances", "1", "--progress", "plain",
              "--processes", "1")
    assert p.returncode == 0, p.stderr
    progress = p.stderr.strip().splitlines()
    assert re.fullmatch(r"\[\d+:\d\d\] 10/10 tests \(100%\), success .*ETA done", progress[-1])
    lines = p.stdout.splitlines()
    table = lines[lines.index("This run, per model"):-1]  # the last line is the command
    assert max(len(line) for line in table) <= 80
    rows = {line.split()[0]: line.split() for line in lines if line.startswith("sim-")}
    assert set(rows) == {"sim-strong", "sim-weak"} and all(r[1] == "5" for r in rows.values())
    assert all(r[3] == "0" and r[4].endswith("k") for r in rows.values())  # errored, tokens
    command = lines[-1].removeprefix("more: ")
    run_id = re.search(r"--run (\w+)", command).group(1)
    assert command == f"ultra report --run {run_id} --db {db} --out {out}"
    shown = ultra(*command.split()[1:])
    assert shown.returncode == 0, shown.stderr
    assert "sim-strong" in shown.stdout and "sim-weak" in shown.stdout


def test_progress_mode_is_checked():
    p = ultra("run", "--progress", "loud")
    assert p.returncode == 2 and "--progress 'loud'" in p.stderr and p.stderr.count("\n") == 1


def test_rich_mode_draws_the_table_within_80_columns():
    out = io.StringIO()
    with Display("rich", stream=out, now=lambda: 83.0) as display:
        display.update(SHARDS)
    text = out.getvalue()
    assert "ultra run" in text and "total" in text and "763/1650" in text
    assert max(len(line) for line in text.splitlines()) <= 80


def test_a_pause_the_server_imposed_is_shown_with_its_end_and_counted_in_the_eta():
    now = time.mktime((2025, 5, 1, 12, 0, 0, 0, 0, -1))  # local noon
    paused = dict(SHARDS)
    name = "qwen2.5-72b-instruct@qwen2.5-72b-instruct-key2"
    paused[name] = msgspec.structs.replace(SHARDS[name], paused_until=now + 65)  # a 429's 60 s
    text = shard_table(paused, elapsed=83.0, now=now)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "  paused by the server until 12:01:05: qwen2.5-72b-instruct-key2" in lines
    # 300 left at 100 per 40 s: 2:00, plus 1:05 of pause
    row = next(line for line in lines if line.startswith("qwen")).split()
    assert row[-1] == "3:05"
    assert shard_table(SHARDS, elapsed=83.0, now=now).count("paused") == 0
    # once the pause is over it is no longer shown, nor counted
    later = shard_table(paused, elapsed=83.0, now=now + 70)
    assert "paused" not in later
    assert next(line for line in later.splitlines() if line.startswith("qwen")).split()[-1] == "2:00"
    line = plain_line(paused, 83.0, now=now)
    assert line.endswith(", paused by the server until 12:01:05"), line
    assert "paused" not in plain_line(SHARDS, 83.0, now=now)


def test_the_rich_display_shows_the_pause_in_local_time():
    now = time.mktime((2025, 5, 1, 9, 30, 0, 0, 0, -1))
    name = "Llama-3.3-70B-Instruct@Llama-3.3-70B-Instruct-3"
    paused = dict(SHARDS)
    paused[name] = msgspec.structs.replace(SHARDS[name], paused_until=now + 59.6)
    out = io.StringIO()
    with Display("rich", stream=out, now=lambda: 83.0, wall=lambda: now) as display:
        display.update(paused)
    text = out.getvalue()
    assert "paused by the server until 09:30:59: Llama-3.3-70B-Instruct-3" in text
    assert max(len(line) for line in text.splitlines()) <= 80


def test_a_shard_held_back_reports_until_when_in_wall_clock_time():
    route = Route(url="http://127.0.0.1:1/v1/chat/completions", shape="openai", api_model="m",
                  key_literal="k")
    shard = Shard(shard_id="m@m", model="m", instance="m", provider="openai", strategy="key",
                  key_index=None, deployment=None, workers=1, qps=10,
                  request_timeout=5, test_timeout=10, max_retries=0, max_turns=1, route=route,
                  tests=[])

    async def main():
        progress = ShardProgress(shard)
        assert progress.snapshot().paused_until is None
        progress.limiter.pace(1.0)  # a short spacing is not worth a line
        assert progress.snapshot().paused_until is None
        progress.limiter.on_429(60.0)  # LiteLLM's retry-after: 60
        t = time.time()
        until = progress.snapshot().paused_until
        assert until is not None and t + 59 <= until <= t + 61
        progress.finished = True
        assert progress.snapshot().paused_until is None

    trio.run(main)
