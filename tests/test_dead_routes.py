"""Dead and slow routes, end to end: a server that accepts connections and never answers,
one that answers one request at a time, one that refuses with 429s and no Retry-After.
Each is a real simulator process reached as a real provider (kind `openai`), and each
`ultra run` a real process."""

from __future__ import annotations

import json
import time

from tests.collection_helpers import events, model
from tests.test_routes import real_providers, run, write
from ultra.sim.config import Faults, Latency, Limits, SimConfig, Storm
from ultra.sim.process import SimProcess


def test_a_silent_server_fails_preflight_within_60_s_with_the_defaults_and_says_it_waits(tmp_path):
    """Defaults: request_timeout 120 s, test_timeout 900 s, 5 retries. Preflight has its own
    30 s bound, and says what it waits for meanwhile."""
    with SimProcess(SimConfig(faults=Faults(hang=1.0))) as sim:
        config = write(tmp_path, real_providers(sim.url, models=model("sim-good", "gw", "single")))
        t0 = time.monotonic()
        proc = run(config, tmp_path, timeout=120)
        elapsed = time.monotonic() - t0
        stats = sim.stats()
    assert proc.returncode == 2, proc.stderr
    assert elapsed < 60
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr
    waiting = [line for line in lines if line.startswith("preflight: waiting")]
    assert waiting and "1 of 1 routes" in waiting[0] and "model 'sim-good'" in waiting[0]
    assert lines[-1].startswith("ultra: error: route broken at preflight: provider 'gw', model 'sim-good'")
    assert "no answer" in lines[-1] and f"{sim.url}/v1/chat/completions" in lines[-1]
    assert stats["total"]["requests"] == 1  # one request, never re-sent behind itself


def test_a_silent_server_breaks_its_route_within_broken_after_timeouts(tmp_path):
    with SimProcess(SimConfig(faults=Faults(hang=1.0))) as sim:
        config = write(tmp_path, real_providers(sim.url, instances=4, models=model(
            "sim-good", "gw", "single", workers=2, qps=50, request_timeout=1.0, max_retries=5,
            broken_after=3)))
        t0 = time.monotonic()
        proc = run(config, tmp_path, "--no-preflight", "--json")
        elapsed = time.monotonic() - t0
        stats = sim.stats()
    assert proc.returncode == 1, proc.stderr
    result = json.loads(proc.stdout)
    (broken,) = result["broken_routes"]
    assert broken["reason"].startswith("timeout: no response within 1s from http://")
    # three timeouts break the route; the other worker's request was already on its way
    assert stats["total"]["requests"] <= 3 + 1
    assert elapsed < 60  # not 4 tests x 6 attempts x 1 s each
    assert result["completed"] == 0 and result["errored"] <= 2


def test_a_one_slot_server_completes_every_test(tmp_path):
    """A local model server with one slot answers requests one by one and goes on computing
    the ones a client gave up on. Eight workers at 0.1 s a request would wait 0.8 s each,
    beyond the 0.6 s timeout, and every retry would queue behind the abandoned requests:
    the shard's window of requests in flight must shrink until they fit."""
    sim_cfg = SimConfig(latency=Latency(median_ms=100), slots=1)
    with SimProcess(sim_cfg) as sim:
        config = write(tmp_path, real_providers(sim.url, instances=16, models=model(
            "sim-good", "gw", "single", workers=8, qps=100, request_timeout=0.6, max_retries=6,
            test_timeout=300)))
        proc = run(config, tmp_path, "--json", timeout=400)
        stats = sim.stats()
    assert proc.returncode == 0, (proc.stderr[-2000:], proc.stdout[-3000:])
    result = json.loads(proc.stdout)
    assert result["completed"] == result["planned"] == 16 and result["errored"] == 0
    (shard,) = result["shards"]
    assert shard["min_window"] < 8  # timeouts cut it ...
    assert stats["total"]["max_in_flight"] <= 8
    completed = events(tmp_path / "events.db", "--type", "test.completed")
    assert len({e["test_key"] for e in completed}) == 16


def test_preflight_against_429s_without_retry_after_never_exceeds_the_route_qps(tmp_path):
    """Every request refused with 429 and no Retry-After (no reset header either): the
    preflight backs off on its own, and never sends faster than the route's qps."""
    sim_cfg = SimConfig(storm=Storm(duration_s=600, fraction=1.0), limits=Limits(retry_headers=()))
    with SimProcess(sim_cfg) as sim:
        config = write(tmp_path, real_providers(sim.url, models=model(
            "sim-good", "gw", "single", workers=2, qps=2, test_timeout=8)))
        proc = run(config, tmp_path, timeout=120)
        stats = sim.stats()
    assert proc.returncode == 2, proc.stderr
    assert "HTTP 429" in proc.stderr.strip().splitlines()[-1]
    total = stats["total"]
    assert total["rate_limited"] == total["requests"] > 1
    assert total["max_per_second"] <= 2
    assert total["requests"] <= 2 * 8 + 1  # the 8 s preflight bound at 2 per second, at most
