"""Providers: how the routes of a model are reached, one module per kind.

A provider kind (the `kind` of a `[providers.NAME]` table) is a module here with one object
`PROVIDER` that says, for a provider's config:

- `shape(p)`: how its requests look on the wire, `openai` or `azure` (`ultra.providers.wire`:
  the URL of a route, its auth header, whether the body names the model);
- `keys(p)`: how many API keys an openai-shaped provider has (its per-key routes);
- `routes(p, eff, base)`: the routes a model's strategy uses, as `RouteSpec`s;
- `fields(shape)`: the config fields that apply to it (what `ultra config show` prints);
- `key_envs(p)`: the environment variables holding its keys (checked before a run);
- `serving(ps, config)`: for the providers `ps` of its kind that a run uses (by name), a
  context manager yielding the base URL of each server it starts for the run, by provider
  name (only the bundled simulator starts one: one for all its providers).

The planner, the runner and `ultra config show` ask the provider; none of them knows a
kind by name. Whether a result is simulated is what the server's reply says, never the kind.
"""

from __future__ import annotations

import contextlib
import importlib
import pkgutil
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple, Protocol

import msgspec

# A kind is a module of this package (its name), each with a `PROVIDER`; `wire` is shared.
KINDS: tuple[str, ...] = tuple(sorted(m.name for m in pkgutil.iter_modules(__path__)
                                      if m.name != "wire"))


class Route(msgspec.Struct, kw_only=True, frozen=True):
    """Where a shard's requests go. The secret itself is never here: only the name of the
    environment variable that holds it (or, for the simulator, a non-secret literal)."""

    url: str
    shape: str  # "openai" or "azure": which auth header and whether the body names the model
    api_model: str | None  # model name sent in the body (openai shape)
    key_env: str | None = None
    key_literal: str | None = None


class RouteSpec(NamedTuple):
    instance: str  # the route's name: qwen-key1, DeepSeek-V3-0324-2, gpt-4o-mini
    key_index: int | None
    deployment: str | None
    route: Route


class Provider(Protocol):
    def shape(self, p: Any) -> str: ...

    def keys(self, p: Any) -> int: ...

    def routes(self, p: Any, eff: Any, base: str | None) -> list[RouteSpec]: ...

    def fields(self, shape: str) -> tuple[str, ...]: ...

    def key_envs(self, p: Any) -> list[str]: ...

    def serving(self, ps: dict[str, Any], config: Any
                ) -> contextlib.AbstractContextManager[Mapping[str, str]]: ...

    def problems(self, name: str, p: Any) -> list[str]: ...


def provider(kind: str) -> Provider:
    """The provider of a kind (a ValueError for a kind no module serves)."""
    if kind not in KINDS:
        raise ValueError(f"unknown provider kind {kind!r} (known: {', '.join(KINDS)})")
    return importlib.import_module(f"ultra.providers.{kind}").PROVIDER  # type: ignore[no-any-return]


@contextlib.contextmanager
def serving(config: Any, names: list[str]) -> Iterator[Mapping[str, str]]:
    """For the run of the models `names`: start what their providers serve themselves
    (the bundled simulator) and yield the base URL of each, by provider name."""
    by_kind: dict[str, dict[str, Any]] = {}
    for m in names:
        name = config.models[m].provider
        p = config.providers[name]
        by_kind.setdefault(p.kind, {})[name] = p
    with contextlib.ExitStack() as stack:
        bases: dict[str, str] = {}
        for kind, ps in by_kind.items():
            bases.update(stack.enter_context(provider(kind).serving(ps, config)))
        yield bases


__all__ = ["KINDS", "Provider", "provider", "Route", "RouteSpec", "serving"]
