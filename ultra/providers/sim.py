"""kind `sim`: the bundled loopback simulator (`ultra.sim`), an ordinary provider that
speaks either shape: `openai` with `keys` virtual keys (`sim-key-<i>`, not secrets), or
`azure` with its deployments. ultra starts it for the run (with the config's `[sim]`
settings) unless `url` points at one already running. Its replies carry the simulator's
mark, which is what makes a result `simulated`: a `sim` provider pointed at another server
gives unmarked, real results."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from ultra.providers import RouteSpec
from ultra.providers.azure import deployment_routes
from ultra.providers.openai import key_routes
from ultra.defaults import AZURE_API_VERSION

AZURE_KEY = "sim-azure-key"  # the simulator's keys are names, not secrets


class SimProvider:
    def shape(self, p: Any) -> str:
        return p.shape

    def keys(self, p: Any) -> int:
        return p.keys if p.shape == "openai" else 1

    def routes(self, p: Any, eff: Any, base: str | None) -> list[RouteSpec]:
        base = p.url or base or "http://127.0.0.1:0"
        if p.shape == "openai":
            return key_routes(eff, p.route_prefix or eff.name,
                              [(None, f"sim-key-{i}", f"{base}/v1") for i in range(p.keys)])
        return deployment_routes(eff, base, AZURE_API_VERSION, key_literal=AZURE_KEY)

    def fields(self, shape: str) -> tuple[str, ...]:
        return ("url", "route_prefix", "key_qps", "key_tpm") if shape == "openai" else ("url",)

    def key_envs(self, p: Any) -> list[str]:
        return []

    @contextlib.contextmanager
    def serving(self, ps: dict[str, Any], config: Any) -> Iterator[dict[str, str]]:
        """One simulator for every provider without a `url` (those with one run already)."""
        bundled = [name for name, p in ps.items() if not p.url]
        if not bundled:
            yield {}
            return
        from ultra.sim.process import SimProcess

        with SimProcess(config.sim) as sim:
            yield dict.fromkeys(bundled, sim.url)

    def problems(self, name: str, p: Any) -> list[str]:
        return []


PROVIDER = SimProvider()


__all__ = ["AZURE_KEY", "PROVIDER", "SimProvider"]
