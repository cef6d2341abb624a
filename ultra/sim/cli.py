"""`ultra sim`: the loopback LLM simulator's commands (its CLI options mirror `SimConfig`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

sim_app = typer.Typer(name="sim", help="The loopback LLM simulator.", no_args_is_help=True)


@sim_app.command("serve")
def sim_serve(
    config: Annotated[Optional[Path], typer.Option("--config", help="Simulator config (TOML, SimConfig fields).")] = None,
    host: Annotated[Optional[str], typer.Option(help="Address to bind (default 127.0.0.1).")] = None,
    port: Annotated[Optional[int], typer.Option(help="Port; 0 picks a free one (default 0).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the fault/latency RNG.")] = None,
    responder: Annotated[Optional[str], typer.Option(help="suites | echo | module:function.")] = None,
    slots: Annotated[Optional[int], typer.Option(help="Answer this many requests at a time, queue the rest (0: any).")] = None,
    latency_ms: Annotated[Optional[float], typer.Option(help="Median latency (0: reply at once).")] = None,
    latency_spread_ms: Annotated[Optional[float], typer.Option(help="Latency spread.")] = None,
    latency_distribution: Annotated[Optional[str], typer.Option(help="lognormal | uniform.")] = None,
    key_rps: Annotated[Optional[float], typer.Option(help="Rate limit per API key (req/s, 1 s window).")] = None,
    deployment_rps: Annotated[Optional[float], typer.Option(help="Rate limit per Azure deployment.")] = None,
    key_rpm: Annotated[Optional[float], typer.Option(help="Requests per minute per API key (60 s window).")] = None,
    header_style: Annotated[
        Optional[str], typer.Option(help="Rate-limit headers: openai | litellm-key | litellm-model.")
    ] = None,
    retry_after: Annotated[Optional[float], typer.Option(help="Retry-After seconds on 429.")] = None,
    key_tpm: Annotated[Optional[float], typer.Option(help="Tokens per minute per API key (tpm/6 per 10 s).")] = None,
    deployment_tpm: Annotated[Optional[float], typer.Option(help="Tokens per minute per Azure deployment.")] = None,
    retry_after_http_date: Annotated[
        Optional[bool], typer.Option("--retry-after-http-date/--retry-after-seconds", help="Retry-After form.")
    ] = None,
    storm_seconds: Annotated[Optional[float], typer.Option(help="429 storm for the first N seconds.")] = None,
    storm_fraction: Annotated[Optional[float], typer.Option(help="Share of requests refused in a storm.")] = None,
    fault_5xx: Annotated[Optional[float], typer.Option(help="P(500/502/503).")] = None,
    fault_hang: Annotated[Optional[float], typer.Option(help="P(no reply for --hang-seconds).")] = None,
    fault_malformed: Annotated[Optional[float], typer.Option(help="P(200 with invalid JSON).")] = None,
    fault_empty_content: Annotated[Optional[float], typer.Option(help="P(empty message).")] = None,
    fault_empty_choices: Annotated[Optional[float], typer.Option(help='P("choices": []).')] = None,
    fault_context_length: Annotated[Optional[float], typer.Option(help="P(400 context_length_exceeded).")] = None,
    hang_seconds: Annotated[Optional[float], typer.Option(help="How long a hang lasts (default 3600).")] = None,
) -> None:
    """Serve the loopback LLM simulator until SIGINT/SIGTERM.

    The first stdout line is `ultra-sim listening on http://HOST:PORT`.
    """
    options = {name: value for name, value in locals().items() if name != "config"}  # before imports
    from ultra.sim.config import SimConfig, load_toml, with_overrides
    from ultra.sim.server import run

    base = load_toml(config) if config is not None else SimConfig()
    raise typer.Exit(run(with_overrides(base, **options)))


__all__ = ["sim_app", "sim_serve"]
