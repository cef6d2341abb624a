"""Helpers for the collection tests: configs on a test-owned simulator, `ultra` as a real
subprocess, events read back through `ultra events` (the public surface)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def ultra(*args: str, env: dict[str, str] | None = None, timeout: float = 240,
          cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "ultra", *args], capture_output=True, text=True,
        env=full_env, timeout=timeout, cwd=cwd or ROOT,
    )


def popen_ultra(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.Popen[str]:
    """`ultra` in its own process group, so a test can press Ctrl-C on the whole group."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "ultra", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=full_env, cwd=cwd or ROOT, start_new_session=True,
    )


def events(db: Path, *filters: str) -> list[dict]:
    proc = ultra("events", "--db", str(db), *filters)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def model(name: str, provider: str, strategy: str, workers: int | None = None,
          qps: float | None = None, **extra: object) -> str:
    """One `[models.NAME]` table of a config."""
    fields = dict(provider=provider, strategy=strategy, workers=workers, qps=qps, **extra)
    lines = [f"[models.{name}]"] + [f"{k} = {json.dumps(v)}" for k, v in fields.items() if v is not None]
    return "\n".join(lines) + "\n\n"


def sim_models_config(sim_url: str, *, models: str, instances: int = 2,
                      key_qps: float | None = None) -> str:
    """A config whose providers are the given (already running) simulator."""
    return f"""
[run]
prompt_types = ["baseline", "optimal"]
difficulties = ["easy"]
tool_success_rates = [0.8]
num_instances = {instances}

[providers.gw]
kind = "sim"
shape = "openai"
keys = 3
url = "{sim_url}"
{f"key_qps = {key_qps}" if key_qps else ""}

[providers.az]
kind = "sim"
shape = "azure"
url = "{sim_url}"

{models}
"""


def outcome_counts(evs: list[dict]) -> Counter:
    """How many completed / errored events each test key has."""
    c: Counter = Counter()
    for e in evs:
        if e["type"] in ("test.completed", "test.errored"):
            c[(e["test_key"], e["type"])] += 1
    return c
