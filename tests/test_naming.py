"""The one normalization function: instances, case variants and aliases fold; models stay."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ultra.naming import KNOWN_MODELS, canonical_model

CASES = [
    # what the old system got wrong: these are models, not instances of others
    ("grok-3", "grok-3"),
    ("qwen2.5-7b-instruct", "qwen2.5-7b-instruct"),
    ("qwen2.5-3b-instruct", "qwen2.5-3b-instruct"),
    ("gpt-4o-mini", "gpt-4o-mini"),
    ("o3-0416-global", "o3-0416-global"),
    # physical deployments and case variants
    ("DeepSeek-V3-0324", "DeepSeek-V3-0324"),
    ("DeepSeek-V3-0324-2", "DeepSeek-V3-0324"),
    ("DeepSeek-V3-0324-3", "DeepSeek-V3-0324"),
    ("deepseek-v3-0324", "DeepSeek-V3-0324"),
    ("deepseek-v3-0324-2", "DeepSeek-V3-0324"),
    ("DeepSeek-R1-0528-2", "DeepSeek-R1-0528"),
    ("llama-3.3-70b-instruct-3", "Llama-3.3-70B-Instruct"),
    # virtual key instances
    ("qwen2.5-72b-instruct-key0", "qwen2.5-72b-instruct"),
    ("qwen2.5-7b-instruct-key2", "qwen2.5-7b-instruct"),
    # unknown names are left alone, suffix or not
    ("my-model-2", "my-model-2"),
    ("some-model-key1", "some-model-key1"),
    ("  gpt-4o  ", "gpt-4o"),
]


@pytest.mark.parametrize("name, canonical", CASES)
def test_normalization_table(name, canonical):
    assert canonical_model(name) == canonical


def test_aliases_apply_first_and_chain():
    aliases = {"dsv3": "deepseek-v3-0324", "team-a": "dsv3", "grok-3": "grok-3-beta"}
    assert canonical_model("dsv3", aliases) == "DeepSeek-V3-0324"
    assert canonical_model("team-a", aliases) == "DeepSeek-V3-0324"
    assert canonical_model("grok-3", aliases) == "grok-3-beta"
    assert canonical_model("x", {"x": "y", "y": "x"}) in {"x", "y"}  # a cycle ends


@given(st.sampled_from(KNOWN_MODELS), st.sampled_from(["", "-2", "-3", "-key0", "-key1"]),
       st.booleans())
def test_every_known_model_instance_and_case_folds_to_it(model, suffix, lower):
    name = model + suffix
    assert canonical_model(name.lower() if lower else name) == model


@given(st.text(min_size=1, max_size=30))
def test_canonical_is_idempotent(name):
    once = canonical_model(name)
    assert canonical_model(once) == once
