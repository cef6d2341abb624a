"""One set of common options: `--db`, `--out`, `--results` and `--config` mean the same on
every command that reads a log, and a bad one is one line on stderr, exit code 2, before
any work (real `ultra` processes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from storage_helpers import completed

from tests.collection_helpers import ultra
from tests.test_bad_input import one_error_line
from ultra.eventlog.store import EventLog


def _log(tmp_path: Path) -> Path:
    db = tmp_path / "events.db"
    with EventLog.open(db) as log:
        log.append([completed(i) for i in range(3)])
    return db


def _common(tmp_path: Path, db: Path, **override: str) -> list[str]:
    flags = {"--db": str(db), "--out": str(tmp_path / "out" / "master.json"),
             "--results": str(tmp_path / "res" / "r.db"), "--config": "demo", **override}
    return [part for flag, value in flags.items() for part in (flag, value)]


COMMANDS = [["project"], ["audit"], ["events"], ["report"], ["plan"],
            ["repair", "alias", "old-name", "new-name"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_every_log_command_takes_the_same_four_options(tmp_path, command):
    db = _log(tmp_path)
    if command[0] in ("audit", "report"):  # they read the projections the others write
        assert ultra("project", *_common(tmp_path, db)).returncode == 0
    proc = ultra(*command, *_common(tmp_path, db))
    assert proc.returncode == 0, proc.stderr
    if command[0] in ("project", "repair"):  # --results is where results.db goes
        assert (tmp_path / "res" / "r.db").is_file()
        assert not (tmp_path / "out" / "results.db").exists()


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
@pytest.mark.parametrize("flag", ["--out", "--results"])
def test_a_directory_out_or_results_is_one_line_on_every_command(tmp_path, command, flag):
    db = _log(tmp_path)
    (tmp_path / "somedir").mkdir()
    proc = ultra(*command, *_common(tmp_path, db, **{flag: str(tmp_path / "somedir")}))
    assert f"{flag} {tmp_path / 'somedir'} is a directory" in one_error_line(proc)
    assert not (tmp_path / "out").exists() and not (tmp_path / "res").exists()


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_a_bad_config_is_one_line_on_every_command(tmp_path, command):
    db = _log(tmp_path)
    (tmp_path / "bad.toml").write_text("[models.x\n")
    proc = ultra(*command, *_common(tmp_path, db, **{"--config": str(tmp_path / "bad.toml")}))
    assert "malformed config" in one_error_line(proc)
    proc = ultra(*command, *_common(tmp_path, db, **{"--config": str(tmp_path / "nope.toml")}))
    assert "cannot read config" in one_error_line(proc)


def test_project_without_typer_refuses_a_directory_results_in_one_line(tmp_path):
    """The quick `ultra project` (ultra.launch) checks the paths as the typer command does."""
    db = _log(tmp_path)
    (tmp_path / "somedir").mkdir()
    proc = ultra("project", "--db", str(db), "--results", str(tmp_path / "somedir"))
    assert "is a directory" in one_error_line(proc)


def test_help_says_what_config_means_where_no_config_is_read():
    proc = ultra("audit", "--help", env={"COLUMNS": "200"})
    assert proc.returncode == 0 and "this command reads none" in proc.stdout


def test_run_results_puts_results_db_there(tmp_path):
    db, out, results = tmp_path / "e.db", tmp_path / "out" / "m.json", tmp_path / "r" / "x.db"
    proc = ultra("run", "--db", str(db), "--out", str(out), "--results", str(results),
                 "--models", "sim-medium", "--num-instances", "1", "--progress", "none")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert results.is_file() and out.is_file()
    assert not (out.parent / "results.db").exists()
    assert f"--results {results}" in proc.stdout  # the `ultra report` it suggests finds it
    report = ultra("report", "--db", str(db), "--results", str(results), "--format", "csv")
    assert report.returncode == 0 and "sim-medium" in report.stdout, report.stderr


def test_run_refuses_a_directory_results_before_any_test_runs(tmp_path):
    (tmp_path / "somedir").mkdir()
    proc = ultra("run", "--db", str(tmp_path / "e.db"), "--results", str(tmp_path / "somedir"))
    assert "--results" in one_error_line(proc)
    assert not (tmp_path / "e.db").exists()


SHARED_KEY = """
[providers.gw]
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
api_key_envs = ["ULTRA_T_OPENAI_KEY_1"]
key_qps = 2

[models.a]
provider = "gw"
strategy = "single"
[models.b]
provider = "gw"
strategy = "single"
[models.c]
provider = "gw"
strategy = "per-key"
qps = 1
"""


def test_plan_warns_of_each_unset_key_variable_and_still_exits_0(tmp_path):
    (tmp_path / "c.toml").write_text(SHARED_KEY)
    proc = ultra("plan", "--config", str(tmp_path / "c.toml"), "--db", str(tmp_path / "e.db"),
                 env={"ULTRA_T_OPENAI_KEY_1": ""})
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [
        "warning: ULTRA_T_OPENAI_KEY_1 is not set (provider 'gw'); ultra run will refuse it"]
    set_ = ultra("plan", "--config", str(tmp_path / "c.toml"), "--db", str(tmp_path / "e.db"),
                 env={"ULTRA_T_OPENAI_KEY_1": "sk-test"})
    assert set_.returncode == 0 and set_.stderr == ""


def test_plan_shows_the_qps_a_shared_key_budget_leaves(tmp_path):
    (tmp_path / "c.toml").write_text(SHARED_KEY)
    args = ("plan", "--config", str(tmp_path / "c.toml"), "--db", str(tmp_path / "e.db"))
    env = {"ULTRA_T_OPENAI_KEY_1": "sk-test"}
    rows = {r["model"]: r for r in json.loads(ultra(*args, "--json", env=env).stdout)["shards"]}
    assert {m: (r["qps"], r["effective_qps"]) for m, r in rows.items()} == {
        "a": (10, 2), "b": (10, 2), "c": (1, 1)}
    assert all(r["key_qps"] == 2 and r["key_shards"] == 3 for r in rows.values())
    table = ultra(*args, env=env).stdout
    line_a = next(ln for ln in table.splitlines() if ln.startswith("│ a "))
    assert [c.strip() for c in line_a.strip("│ ").split("│")][6:] == [
        "10", "2", "2 qps, 3 shards", "5"]
    assert "effective qps" in table and "key budget" in table


def test_plan_without_key_budgets_keeps_the_short_table():
    proc = ultra("plan", "--models", "sim-good")
    assert proc.returncode == 0 and "effective qps" not in proc.stdout


def test_config_show_prints_only_what_applies_to_each_provider(tmp_path):
    (tmp_path / "c.toml").write_text("""
[providers.gw]
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
api_key_envs = ["ULTRA_T_K0", "ULTRA_T_K1", "ULTRA_T_K2"]

[providers.az]
kind = "azure"
endpoint = "https://example.invalid"
api_key_env = "ULTRA_T_AZ"
key_qps = 5

[models.open]
provider = "gw"
class = "open-multikey"
[models.big]
provider = "az"
class = "open-azure"
deployments = ["big-east", "big-west"]
""")
    secret = "sk-do-not-print-me"
    proc = ultra("config", "show", "--config", str(tmp_path / "c.toml"),
                 env={"ULTRA_T_K0": secret, "ULTRA_T_K1": "", "ULTRA_T_K2": "", "ULTRA_T_AZ": ""})
    assert proc.returncode == 0, proc.stderr
    assert secret not in proc.stdout
    shown = json.loads(proc.stdout)["providers"]
    gw, az = shown["gw"], shown["az"]
    assert gw["shape"] == "openai" and gw["keys"] == 3 and "deployments" not in gw
    assert gw["secrets"] == {"ULTRA_T_K0": "<set>", "ULTRA_T_K1": "<unset>", "ULTRA_T_K2": "<unset>"}
    assert not {"endpoint", "api_key_env", "url", "base_urls"} & set(gw)
    assert az["shape"] == "azure" and az["deployments"] == ["big-east", "big-west"]
    assert az["endpoint"] == "https://example.invalid" and az["api_key_env"] == "ULTRA_T_AZ"
    assert not {"keys", "api_key_envs", "base_url", "key_qps", "route_prefix"} & set(az)
    assert az["not_applied"] == ["key_qps"]  # set, but an azure provider has no key budget
    assert az["secrets"] == {"ULTRA_T_AZ": "<unset>"}


def test_config_show_of_the_demo_gives_each_simulated_shape_its_own_fields():
    shown = json.loads(ultra("config", "show").stdout)["providers"]
    assert shown["sim-gateway"] == {"kind": "sim", "shape": "openai", "keys": 3}
    assert shown["sim-azure"] == {"kind": "sim", "shape": "azure",
                                  "deployments": ["sim-strong", "sim-strong-2", "sim-strong-3"]}
