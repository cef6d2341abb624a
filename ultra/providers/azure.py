"""kind `azure`: Azure OpenAI. `endpoint`, `api_version`, `api_key_env`; a model's routes
are its deployments (`deployments`, default `[name, name-2, name-3]`): a per-deployment
model runs a shard on each, a single-route one on the first."""

from __future__ import annotations

import contextlib
from typing import Any

from ultra.providers import RouteSpec
from ultra.providers.wire import azure_route


def deployment_routes(eff: Any, endpoint: str, version: str, *, key_env: str | None = None,
                      key_literal: str | None = None) -> list[RouteSpec]:
    deployments = eff.deployments if eff.strategy == "per-deployment" else eff.deployments[:1]
    return [RouteSpec(dep, None, dep, azure_route(endpoint, dep, version, key_env=key_env,
                                                  key_literal=key_literal))
            for dep in deployments]


class AzureProvider:
    def shape(self, p: Any) -> str:
        return "azure"

    def keys(self, p: Any) -> int:
        return 1

    def routes(self, p: Any, eff: Any, base: str | None) -> list[RouteSpec]:
        return deployment_routes(eff, p.endpoint or "", p.api_version, key_env=p.api_key_env)

    def fields(self, shape: str) -> tuple[str, ...]:
        return ("endpoint", "api_version", "api_key_env")

    def key_envs(self, p: Any) -> list[str]:
        return [p.api_key_env] if p.api_key_env else []

    def serving(self, ps: dict[str, Any], config: Any
                ) -> contextlib.AbstractContextManager[dict[str, str]]:
        return contextlib.nullcontext({})  # servers of their own

    def problems(self, name: str, p: Any) -> list[str]:
        out = []
        if not p.endpoint:
            out.append(f"provider {name!r}: kind azure needs endpoint")
        if not p.api_key_env:
            out.append(f"provider {name!r}: kind azure needs api_key_env")
        return out


PROVIDER = AzureProvider()


__all__ = ["AzureProvider", "deployment_routes", "PROVIDER"]
