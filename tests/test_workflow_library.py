"""The task library: shape of the built-in one, the generator's determinism, and clear
errors for a team's malformed file."""

from __future__ import annotations

import importlib.util
import json
from collections import Counter
from pathlib import Path

import pytest

from ultra.errors import UserError
from ultra.suites import Suite
from ultra.suites.workflow import (
    BASE_PROMPT_TYPES,
    DIFFICULTIES,
    FLAWED_PROMPT_TYPES,
    PROMPT_TYPES,
    SUITE,
    TASK_TYPES,
    load_suite,
)
from ultra.suites.workflow.library import default_library
from ultra.suites.workflow.registry import argument_error

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "ultra" / "suites" / "workflow" / "data"


def test_suite_constants() -> None:
    assert isinstance(SUITE, Suite)
    assert SUITE.name == "workflow"
    assert SUITE.task_types == TASK_TYPES == (
        "simple_task", "basic_task", "data_pipeline", "api_integration", "multi_stage_pipeline")
    assert SUITE.difficulties == DIFFICULTIES == ("very_easy", "easy", "medium", "hard", "very_hard")
    assert BASE_PROMPT_TYPES == ("baseline", "optimal", "cot")
    assert len(FLAWED_PROMPT_TYPES) == 7 and all(p.startswith("flawed_") for p in FLAWED_PROMPT_TYPES)
    assert SUITE.prompt_types == PROMPT_TYPES == BASE_PROMPT_TYPES + FLAWED_PROMPT_TYPES


def test_builtin_library_shape() -> None:
    lib = default_library()
    assert 28 <= len(lib.tools) <= 32
    cats = Counter(t.category for t in lib.tools.values())
    assert len(cats) == 6
    for tool in lib.tools.values():
        assert tool.parameters["type"] == "object" and tool.parameters["required"]
        assert tool.errors
        assert set(tool.depends_on) <= set(lib.tools)
    per_type = Counter(t.task_type for t in lib.tasks.values())
    assert set(per_type) == set(TASK_TYPES) and min(per_type.values()) >= 100
    for task in lib.tasks.values():
        assert set(task.descriptions) == set(DIFFICULTIES)
        # vaguer as it gets harder: never longer than the easier wording
        lengths = [len(task.descriptions[d]) for d in DIFFICULTIES]
        assert lengths == sorted(lengths, reverse=True), task.id
        assert task.required_tools and task.inputs and task.expected_outputs


def test_task_id_is_instance_mod_n_and_offers_a_subset() -> None:
    n = len(default_library().by_type["data_pipeline"])
    assert SUITE.task_id("data_pipeline", "hard", 3) == SUITE.task_id("data_pipeline", "easy", 3 + n)
    assert SUITE.task_id("data_pipeline", "hard", 3) != SUITE.task_id("data_pipeline", "hard", 4)
    for i in range(0, 500, 37):
        task_type = TASK_TYPES[i % 5]
        view = default_library().view(SUITE.task_id(task_type, "easy", i))
        assert 8 <= len(view.offered) <= 10
        assert set(view.task.required_tools) <= set(view.offered)
        for name, args in view.arguments.items():
            assert argument_error(view.tools[name], args) is None


def test_generator_output_is_committed_and_deterministic() -> None:
    spec = importlib.util.spec_from_file_location("gen_tasks", ROOT / "tools" / "gen_tasks.py")
    gen = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(gen)
    files = gen.render()
    assert files == gen.render()
    for name, text in files.items():
        assert (DATA / name).read_text() == text, f"{name} is stale: run tools/gen_tasks.py"


def _write(tmp_path: Path, obj: object) -> Path:
    p = tmp_path / "tasks.json"
    p.write_text(json.dumps(obj) if not isinstance(obj, str) else obj)
    return p


GOOD = {"id": "t1", "task_type": "simple_task", "descriptions": {"easy": "Read data/a.csv and parse it."},
        "inputs": {"path": "data/a.csv"}, "required_tools": ["read_file", "parse_csv"]}


def test_team_library_loads_and_runs_its_tasks(tmp_path: Path) -> None:
    suite = load_suite(_write(tmp_path, {"tasks": [GOOD, {**GOOD, "id": "t2", "task_type": "own_type"}]}))
    assert isinstance(suite, Suite)
    assert suite.task_types == ("simple_task", "own_type")
    assert suite.task_id("own_type", "hard", 5) == "t2"
    # a missing difficulty falls back to the nearest easier wording
    assert suite.library.tasks["t1"].description("very_hard") == "Read data/a.csv and parse it."


@pytest.mark.parametrize(
    ("task", "needle"),
    [
        ({**GOOD, "required_tools": "read_file"}, "task 't1': field 'required_tools'"),
        ({k: v for k, v in GOOD.items() if k != "task_type"}, "task 't1': field 'task_type'"),
        ({**GOOD, "required_tools": ["read_file", "no_such_tool"]}, "field 'required_tools': unknown tool 'no_such_tool'"),
        ({**GOOD, "required_tools": ["parse_csv", "read_file"]}, "'parse_csv' depends on 'read_file'"),
        ({**GOOD, "descriptions": {"trivial": "x"}}, "task 't1': field 'descriptions': unknown difficulty"),
        ({**GOOD, "colour": "red"}, "task 't1': field 'colour'"),
        ({**GOOD, "descriptions": {}}, "task 't1': field 'descriptions'"),
    ],
)
def test_malformed_team_library_names_task_and_field(tmp_path: Path, task: dict, needle: str) -> None:
    with pytest.raises(UserError) as exc:
        load_suite(_write(tmp_path, {"tasks": [GOOD | {"id": "t0"}, task]}))
    msg = str(exc.value)
    assert needle in msg and "\n" not in msg


def test_unreadable_or_invalid_json_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="cannot read task library"):
        load_suite(tmp_path / "missing.json")
    with pytest.raises(UserError, match="not valid JSON"):
        load_suite(_write(tmp_path, "{"))
    with pytest.raises(UserError, match="duplicate task id"):
        load_suite(_write(tmp_path, {"tasks": [GOOD, GOOD]}))
