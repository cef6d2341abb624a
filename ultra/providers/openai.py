"""kind `openai`: an OpenAI-compatible API (a gateway such as LiteLLM, vLLM, llama.cpp, or
OpenAI itself). One route per API key (`api_key_envs`), optionally one base URL per key
(`base_urls`); a per-key model runs a shard on each key, a single-route one on one key
(`key`, or a stable hash of its name)."""

from __future__ import annotations

import contextlib
import hashlib
from typing import Any

from ultra.providers import RouteSpec
from ultra.providers.wire import openai_route


def default_key(model: str, keys: int) -> int:
    """The key a single-route model uses on a multi-key provider when the config names none:
    a stable hash of its name, so such models spread over the keys (not all on key 0)."""
    return int.from_bytes(hashlib.sha256(model.encode()).digest()[:8], "big") % max(1, keys)


def key_routes(eff: Any, prefix: str, keys: list[tuple[str | None, str | None, str]]) -> list[RouteSpec]:
    """The routes of a model over keys given as (key env, literal key, base URL)."""
    indexed = list(enumerate(keys))
    if eff.strategy != "per-key":
        k = eff.key if eff.key is not None else default_key(eff.name, len(keys))
        indexed = indexed[k:k + 1]
    return [RouteSpec(f"{prefix}-key{i}" if eff.strategy == "per-key" else eff.name, i, None,
                      openai_route(url, eff.api_model, key_env=env, key_literal=literal))
            for i, (env, literal, url) in indexed]


class OpenAIProvider:
    def shape(self, p: Any) -> str:
        return "openai"

    def keys(self, p: Any) -> int:
        return len(p.api_key_envs)

    def routes(self, p: Any, eff: Any, base: str | None) -> list[RouteSpec]:
        urls = p.base_urls or [p.base_url or ""] * len(p.api_key_envs)
        return key_routes(eff, p.route_prefix or eff.name,
                          [(env, None, url) for env, url in zip(p.api_key_envs, urls)])

    def fields(self, shape: str) -> tuple[str, ...]:
        return ("base_url", "base_urls", "api_key_envs", "route_prefix", "key_qps", "key_tpm")

    def key_envs(self, p: Any) -> list[str]:
        return list(p.api_key_envs)

    def serving(self, ps: dict[str, Any], config: Any
                ) -> contextlib.AbstractContextManager[dict[str, str]]:
        return contextlib.nullcontext({})  # servers of their own

    def problems(self, name: str, p: Any) -> list[str]:
        out = []
        if not p.base_url and not p.base_urls:
            out.append(f"provider {name!r}: kind openai needs base_url")
        if not p.api_key_envs:
            out.append(f"provider {name!r}: kind openai needs api_key_envs")
        if p.base_urls is not None and len(p.base_urls) != len(p.api_key_envs):
            out.append(f"provider {name!r}: base_urls must give one URL per key")
        return out


PROVIDER = OpenAIProvider()


__all__ = ["default_key", "key_routes", "OpenAIProvider", "PROVIDER"]
