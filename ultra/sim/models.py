"""The simulator's model names and their skill levels.

Simulated models are named `sim-*` so that no one takes their results for a real model's;
every event they produce also carries `simulated: true`.
"""

from __future__ import annotations

import re

from ultra.naming import KNOWN_MODELS

SIM_SKILLS: dict[str, float] = {
    "sim-oracle": 1.0,
    "sim-strong": 0.9,
    "sim-good": 0.75,
    "sim-medium": 0.55,
    "sim-weak": 0.3,
    "sim-hopeless": 0.0,
}

# Each is a known model name (ultra.naming), so its route names fold into it.
assert set(SIM_SKILLS) <= set(KNOWN_MODELS), "a simulated model must be in naming.KNOWN_MODELS"

_SKILL_NAME = re.compile(r"^sim-skill-(\d{1,3})$")


def sim_skill(model: str) -> float | None:
    """Skill in [0, 1] of a simulated model name (`sim-strong`, `sim-skill-70`), else None."""
    if model in SIM_SKILLS:
        return SIM_SKILLS[model]
    m = _SKILL_NAME.match(model)
    if m and int(m.group(1)) <= 100:
        return int(m.group(1)) / 100
    return None


_REASONING = re.compile(r"^(o\d|gpt-5)", re.I)


def is_reasoning_model(model: str) -> bool:
    """Models that take `max_completion_tokens` and refuse `temperature` (o-series, gpt-5),
    and the simulator's own reasoning style (`sim-*-reasoner`)."""
    return bool(_REASONING.match(model)) or "reasoner" in model


__all__ = ["is_reasoning_model", "sim_skill", "SIM_SKILLS"]
