"""The collection commands: plan, run, config show."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from ultra.errors import UserError

if TYPE_CHECKING:
    from collections import Counter

    from ultra.config import Config
    from ultra.collect.plan import Selection, Shard

from ultra.cli import (
    _check_common, _csv, _rates, app, config_app, ConfigOpt, DbOpt, DifficultyOpt, InstancesOpt,
    JsonOpt, ListOpt, ModelsOpt, OutOpt, PromptOpt, RateOpt, ResultsOpt, SuiteOpt, TasksOpt,
    TaskTypesOpt, TurnsOpt, UnusedOutOpt, UnusedResultsOpt,
)
from ultra.defaults import DEFAULT_DB, DEFAULT_OUT

def _selection(
    config_path: Optional[Path], *, suite_name: Optional[str], tasks: Optional[Path],
    models: ListOpt, prompt_types: ListOpt, difficulty: ListOpt, task_types: ListOpt,
    rates: ListOpt, num_instances: Optional[int], max_turns: Optional[int],
) -> "tuple[Config, Selection, str | None]":
    """Config plus flags -> (config, Selection, task library path): shared by plan and run."""
    from ultra.config import MaxTurns, NumInstances, checked, load_config
    from ultra.collect.plan import Selection, expand_prompt_types
    from ultra.suites import get_suite

    if num_instances is not None:  # flags are checked before the config is even read
        checked(num_instances, NumInstances, "--num-instances")
    if max_turns is not None:
        checked(max_turns, MaxTurns, "--max-turns")

    config, path = load_config(config_path)
    r = config.run
    if tasks is not None:
        tasks_path: str | None = str(tasks)
    else:  # a library named in the config is relative to the config file
        tasks_path = str((path.parent / r.tasks).resolve()) if r.tasks else None
    suite = get_suite(suite_name or r.suite, tasks_path)
    sel = Selection(
        suite=suite_name or r.suite,
        models=_csv(models) or r.models or list(config.models),
        prompt_types=expand_prompt_types(suite, _csv(prompt_types) or r.prompt_types),
        difficulties=_csv(difficulty) or r.difficulties,
        task_types=_csv(task_types) or r.task_types or list(suite.task_types),
        tool_success_rates=_rates(rates) or r.tool_success_rates,
        num_instances=num_instances if num_instances is not None else r.num_instances,
        max_turns=max_turns if max_turns is not None else r.max_turns,
    )
    return config, sel, tasks_path


@app.command()
def plan(
    config: ConfigOpt = None, db: DbOpt = DEFAULT_DB, out: UnusedOutOpt = None,
    results: UnusedResultsOpt = None, suite: SuiteOpt = None,
    tasks: TasksOpt = None, models: ModelsOpt = None, prompt_types: PromptOpt = None,
    difficulty: DifficultyOpt = None, task_types: TaskTypesOpt = None,
    tool_success_rate: RateOpt = None, num_instances: InstancesOpt = None,
    max_turns: TurnsOpt = None, json_output: JsonOpt = False,
) -> None:
    """Print the shard table of a run; nothing runs."""
    from collections import Counter

    import msgspec

    from ultra.collect.plan import effective_qps
    from ultra.collect.resume import key_problems, plan_run

    _check_common(out, results)  # as `ultra run` would, so the plan says what the run will
    cfg, sel, tasks_path = _selection(
        config, suite_name=suite, tasks=tasks, models=models, prompt_types=prompt_types,
        difficulty=difficulty, task_types=task_types, rates=tool_success_rate,
        num_instances=num_instances, max_turns=max_turns)
    result = plan_run(cfg, sel, db, tasks_path)
    for env, (provider, problem) in key_problems(result).items():
        print(f"warning: {env} {problem} (provider {provider!r}); ultra run will refuse it",
              file=sys.stderr)
    on_key = Counter(s.shared_limit.name for s in result.shards if s.shared_limit)
    rows = [
        dict(shard=s.shard_id, model=s.model, instance=s.instance, provider=s.provider,
             strategy=s.strategy, key_index=s.key_index, deployment=s.deployment,
             workers=s.workers, qps=s.qps, effective_qps=effective_qps(s), tpm=s.tpm,
             **(dict(key_budget=s.shared_limit.name, key_qps=s.shared_limit.qps,
                     key_tpm=s.shared_limit.tpm, key_shards=on_key[s.shared_limit.name])
                if s.shared_limit else {}),
             tests=len(s.tests))
        for s in result.shards
    ]
    from ultra.collect.processes import choose_processes

    choice = choose_processes(result)
    if json_output:
        print(msgspec.json.encode(dict(planned=result.planned,
                                       skipped_completed=result.skipped_completed,
                                       shards=rows, processes=choice)).decode())
        return
    from rich.console import Console
    from rich.table import Table

    shared = any(s.shared_limit for s in result.shards)  # then: effective qps, key budget
    cols = ["model", "instance", "strategy", "provider", "route", "workers", "qps"]
    cols += ["effective qps", "key budget"] if shared else []
    table = Table(title=f"{result.planned} tests in {len(rows)} shards "
                        f"({result.skipped_completed} already completed)",
                  caption="key budget: the provider's key_qps / key_tpm, one budget that every"
                          " shard on that key shares" if shared else None)
    for col in cols + ["tests"]:
        table.add_column(col, justify="left" if col in cols[:5] else "right")
    for s in result.shards:
        route = f"key {s.key_index}" if s.key_index is not None else (s.deployment or "-")
        cells = [s.model, s.instance, s.strategy, s.provider, route, str(s.workers), f"{s.qps:g}"]
        if shared:
            cells += [f"{effective_qps(s):g}", _key_budget(s, on_key)]
        table.add_row(*cells, str(len(s.tests)))
    console = Console()
    if not console.is_terminal:
        console.width = 200  # a pipe gets whole names, not an 80-column squeeze
    console.print(table)
    console.print(f"{choice.line()}; `ultra run` measures each route's latency at preflight")


def _key_budget(s: "Shard", on_key: "Counter[str]") -> str:
    """The key budget a shard draws from, for people: `2 qps, 3 shards`."""
    if s.shared_limit is None:
        return "-"
    budget = [f"{s.shared_limit.qps:g} qps"] if s.shared_limit.qps else []
    budget += [f"{s.shared_limit.tpm:g} tpm"] if s.shared_limit.tpm else []
    n = on_key[s.shared_limit.name]
    return ", ".join(budget + [f"{n} shard{'s' if n > 1 else ''}"])


@app.command()
def run(
    config: ConfigOpt = None, db: DbOpt = DEFAULT_DB, out: OutOpt = DEFAULT_OUT,
    results: ResultsOpt = None, suite: SuiteOpt = None, tasks: TasksOpt = None, models: ModelsOpt = None,
    prompt_types: PromptOpt = None, difficulty: DifficultyOpt = None,
    task_types: TaskTypesOpt = None, tool_success_rate: RateOpt = None,
    num_instances: InstancesOpt = None, max_turns: TurnsOpt = None,
    processes: Annotated[Optional[int], typer.Option(
        "--processes",
        help="Shard processes (default: what the load needs, at most the CPU count).")] = None,
    no_preflight: Annotated[bool, typer.Option(
        "--no-preflight", help="Skip the one cheap request per route before any test.")] = False,
    max_errors: Annotated[Optional[str], typer.Option(
        "--max-errors", help="Errored tests accepted with exit code 0: a count (10) or a share (5%).")] = None,
    json_output: JsonOpt = False,
    progress: Annotated[str, typer.Option(
        "--progress", help="rich (live table) | plain (a line every 10 s) | none | auto "
                           "(rich on a terminal, else plain; none with --json).")] = "auto",
    wait: Annotated[bool, typer.Option(
        "--wait", help="Wait for routes and tests that other runs on this log hold, instead"
        " of leaving them to those runs.")] = False,
    lease_seconds: Annotated[float, typer.Option(
        "--lease-seconds", help="How long a dead collector's routes and tests stay held"
        " (renewed every sixth of it while alive).")] = 30.0,
    store_timeout: Annotated[float, typer.Option(
        "--store-timeout", help="How long a lost event log (PostgreSQL restarting, a network"
        " cut) is waited for, reconnecting, before the run stops (exit 1).")] = 60.0,
    transcripts: Annotated[Optional[str], typer.Option(
        "--transcripts", help="Store the transcript of all tests, of failures (errored or"
        " not a full success) or none (default: the config's [run] transcripts, all).")] = None,
) -> None:
    """Plan, run every shard, project. Tests already completed are skipped (resume).

    Exit code: 0 every planned test completed (or the errored ones are within --max-errors);
    1 tests errored, a route broke, a shard process crashed or the event log failed mid-run;
    2 bad input or a route refused at preflight; 130 interrupted."""
    import msgspec

    from ultra.config import digest
    from ultra.collect.run_result import error_allowance
    from ultra.collect.runner import execute
    from ultra.collect.summary import simulated_line, simulated_tests, summary_lines

    cfg, sel, tasks_path = _selection(
        config, suite_name=suite, tasks=tasks, models=models, prompt_types=prompt_types,
        difficulty=difficulty, task_types=task_types, rates=tool_success_rate,
        num_instances=num_instances, max_turns=max_turns)
    if processes is not None:
        from ultra.config import Processes, checked

        checked(processes, Processes, "--processes")
    if transcripts is not None:
        from ultra.transcripts import MODES as TRANSCRIPT_MODES

        if transcripts not in TRANSCRIPT_MODES:
            raise UserError(f"--transcripts {transcripts!r}: must be one of"
                            f" {', '.join(TRANSCRIPT_MODES)}")
        cfg = msgspec.structs.replace(cfg, run=msgspec.structs.replace(cfg.run, transcripts=transcripts))
    from ultra.collect.progress import MODES, summary_text

    if progress not in MODES:
        raise UserError(f"--progress {progress!r}: must be one of {', '.join(MODES)}")
    error_allowance(max_errors, 0)  # a malformed budget is bad input, before anything runs
    if not 1.0 <= lease_seconds <= 3600.0:
        raise UserError(f"invalid --lease-seconds {lease_seconds} (must be in [1, 3600])")
    if not 1.0 <= store_timeout <= 86400.0:
        raise UserError(f"invalid --store-timeout {store_timeout} (must be in [1, 86400])")
    _check_common(out, results)  # before any test runs, not after all of them
    result = execute(cfg, digest(cfg), sel, db=db, out=out, results=results,
                     processes=processes, tasks=tasks_path,
                     argv=sys.argv[1:], json_output=json_output,
                     check_first=not no_preflight, max_errors=max_errors, progress=progress,
                     wait=wait, lease_seconds=lease_seconds, store_timeout=store_timeout)
    sim, sim_of = simulated_tests(result.results, result.run_id)
    if json_output:
        print(msgspec.json.encode({**msgspec.to_builtins(result), "simulated": sim}).decode())
    else:
        rate = f"{100 * result.succeeded / result.completed:.1f}%" if result.completed else "-"
        print(f"run {result.run_id}: {result.completed} completed (success {rate}), "
              f"{result.errored} errored, {result.skipped_completed} skipped as already "
              f"completed{'; INTERRUPTED' if result.interrupted else ''}")
        if simulated_line(sim, sim_of):
            print(simulated_line(sim, sim_of))
        if result.crashed_processes:
            print(f"{result.crashed_processes} shard process(es) died; run again to resume",
                  file=sys.stderr)
        for line in summary_lines(result):
            print(line)
        if result.elsewhere:
            print(f"{result.elsewhere} tests were completed by another run meanwhile")
        print(f"events: {result.db}\nresults: {result.out}, {result.results}")
        more = ["ultra report", "--run", result.run_id]
        for flag, value, default in (("--db", db, DEFAULT_DB), ("--out", out, DEFAULT_OUT),
                                     ("--results", results, None), ("--config", config, None)):
            if value is not None and str(value) != str(default):
                more += [flag, str(value)]
        if result.shards:
            print()
            print(summary_text({s.shard: s for s in result.shards}, result.shard_models,
                               " ".join(more)), end="")
    for line in result.held():  # on stderr also with --json: what this run left, and to whom
        print(line, file=sys.stderr)
    if result.not_taken:
        print(f"{result.not_taken} tests left to the runs holding them; `ultra run --wait`"
              " waits for them", file=sys.stderr)
    raise typer.Exit(result.exit_code)


@config_app.command("show")
def config_show(config: ConfigOpt = None) -> None:
    """The effective config (presets applied), with every secret masked; each provider
    shows only what applies to its kind and shape (keys or deployments)."""
    import msgspec

    from ultra.config import load_config, masked

    cfg, path = load_config(config)
    data = masked(cfg)
    data["source"] = str(path)
    print(msgspec.json.format(msgspec.json.encode(data), indent=2).decode())


__all__ = ["config_show", "plan", "run"]
