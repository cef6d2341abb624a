"""Canonical names: models (one normalization function, driven by tables) and rate keys.

Results reach the log under route names (`DeepSeek-V3-0324-2`, `qwen2.5-72b-instruct-key1`),
case variants (`deepseek-v3-0324`) and team aliases. All of them fold into one canonical
name here, and only here. A suffix is stripped only when what remains is a known model,
so `grok-3` and `qwen2.5-7b-instruct` stay themselves.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from ultra.defaults import DEFAULT_CONDITION

KNOWN_MODELS: tuple[str, ...] = (
    # open-source on the multi-key OpenAI-compatible provider
    "qwen2.5-72b-instruct",
    "qwen2.5-32b-instruct",
    "qwen2.5-14b-instruct",
    "qwen2.5-7b-instruct",
    "qwen2.5-3b-instruct",
    # open-source on Azure, several deployments each
    "DeepSeek-V3-0324",
    "DeepSeek-R1-0528",
    "Llama-3.3-70B-Instruct",
    # closed-source on the multi-key provider
    "o3-0416-global",
    "gemini-2.5-flash-06-17",
    "kimi-k2",
    # closed-source on Azure
    "gpt-4o-mini",
    "gpt-5-mini",
    # others seen in results
    "grok-3",
    "gpt-4o",
    # the models the bundled simulator serves (ultra.sim.models gives each its skill)
    "sim-oracle",
    "sim-strong",
    "sim-good",
    "sim-medium",
    "sim-weak",
    "sim-hopeless",
)

# Route suffixes that name an instance of a model rather than a model.
INSTANCE_SUFFIXES: tuple[re.Pattern[str], ...] = (
    re.compile(r"^(?P<base>.+)-key\d+$"),  # virtual per-key instance
    re.compile(r"^(?P<base>.+)-\d{1,2}$"),  # physical deployment
)

_BY_LOWER: dict[str, str] = {m.lower(): m for m in KNOWN_MODELS}


def _known(name: str) -> str | None:
    return _BY_LOWER.get(name.lower())


def canonical_model(name: str, aliases: Mapping[str, str] | None = None) -> str:
    """The canonical name of `name`: aliases first, then case, then instance suffixes."""
    aliases = aliases or {}
    seen: set[str] = set()
    current = name.strip()
    while current not in seen:  # aliases may chain; a cycle stops where it repeats
        seen.add(current)
        current = aliases.get(current, current)
        known = _known(current)
        if known is None:
            for rule in INSTANCE_SUFFIXES:
                m = rule.match(current)
                if m and (base := _known(m.group("base"))) is not None:
                    known = base
                    break
        current = known or current
    return current


def rate_key(rate: float) -> str:
    """The one spelling of a tool success rate as a key: `str(round(rate, 4))`."""
    return str(round(rate, 4))


def condition_label(fields: dict[str, str]) -> str:
    """`max_turns=4, options=...`: what sets a condition apart ("default" for none)."""
    return ", ".join(f"{k}={v}" for k, v in sorted(fields.items())) or DEFAULT_CONDITION


__all__ = ["canonical_model", "condition_label", "INSTANCE_SUFFIXES", "KNOWN_MODELS", "rate_key"]
