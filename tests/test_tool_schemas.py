"""Tool schemas real APIs accept: the bundled registry is valid JSON Schema and meets the
OpenAI function-calling rules, and the simulator refuses a bad one as the API does."""

from __future__ import annotations

import json
from importlib import resources

import httpx
import jsonschema
import pytest

from ultra.function_schema import function_problem
from ultra.sim.config import SimConfig
from ultra.sim.process import SimProcess
from ultra.suites.workflow.library import default_library, load_library
from ultra.suites.workflow.registry import openai_tool

TOOLS = json.loads((resources.files("ultra") / "suites/workflow/data/tools.json").read_text())["tools"]


def walk(schema: dict, path: tuple = ()):
    """Every sub-schema with its path, independently of the rules module."""
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from walk(sub, (*path, "properties", name))
    if isinstance(schema.get("items"), dict):
        yield from walk(schema["items"], (*path, "items"))


@pytest.mark.parametrize("tool", TOOLS, ids=[t["name"] for t in TOOLS])
def test_every_bundled_tool_schema_is_valid_and_accepted(tool):
    params = tool["parameters"]
    jsonschema.Draft202012Validator.check_schema(params)
    jsonschema.Draft7Validator.check_schema(params)
    for path, sub in walk(params):
        if sub.get("type") == "array":
            assert isinstance(sub.get("items"), dict), (tool["name"], path)
        if sub.get("type") == "object":
            assert isinstance(sub.get("properties"), dict), (tool["name"], path)
    assert function_problem(tool["name"], params) is None


def test_the_rules_name_the_context_as_the_api_does():
    bad = {"type": "object", "properties": {"values": {"type": "array"}}}
    assert function_problem("calculate_statistics", bad) == (
        "Invalid schema for function 'calculate_statistics': "
        "In context=('properties', 'values'), array schema missing items.")
    assert function_problem("f", {"type": "object"}) == (
        "Invalid schema for function 'f': In context=(), object schema missing properties.")
    nested = {"type": "object", "properties": {"r": {"type": "array", "items": {"type": "object"}}}}
    assert "In context=('properties', 'r', 'items'), object schema missing properties." in \
        function_problem("g", nested)


def test_the_simulator_refuses_an_invalid_tool_like_the_openai_api():
    by_name = default_library().tools
    good = [openai_tool(by_name[n]) for n in ("read_file", "calculate_statistics", "parse_csv")]
    broken = json.loads(json.dumps(good))
    broken[1]["function"]["parameters"]["properties"]["values"] = {"type": "array"}
    name = broken[1]["function"]["name"]
    body = {"model": "sim-strong", "messages": [{"role": "user", "content": "hi"}]}
    with SimProcess(SimConfig(responder="echo")) as sim, httpx.Client(base_url=sim.url) as c:
        headers = {"authorization": "Bearer k"}
        ok = c.post("/v1/chat/completions", json={**body, "tools": good}, headers=headers)
        r = c.post("/v1/chat/completions", json={**body, "tools": broken}, headers=headers)
        az = c.post("/openai/deployments/sim-strong/chat/completions?api-version=2024-10-21",
                    json={"messages": body["messages"], "tools": broken}, headers={"api-key": "k"})
    assert ok.status_code == 200
    expected = {"error": {
        "message": f"Invalid schema for function '{name}': In context=('properties', 'values'), "
                   "array schema missing items.",
        "type": "invalid_request_error", "param": "tools[1].function.parameters",
        "code": "invalid_function_parameters"}}
    assert r.status_code == 400 and r.json() == expected
    assert az.status_code == 400 and az.json() == expected


def test_each_request_is_judged_by_its_own_tools_however_often_a_list_repeats():
    """The simulator decodes and checks a distinct tool list once: the same lists again,
    interleaved, get the same answers; tools that are not a list of objects are a 400."""
    by_name = default_library().tools
    good = [openai_tool(by_name[n]) for n in ("read_file", "parse_csv")]
    broken = json.loads(json.dumps(good))
    broken[0]["function"]["parameters"] = {"type": "object"}
    body = {"model": "sim-strong", "messages": [{"role": "user", "content": "hi"}]}
    with SimProcess(SimConfig(responder="echo")) as sim, httpx.Client(base_url=sim.url) as c:
        headers = {"authorization": "Bearer k"}
        codes = [c.post("/v1/chat/completions", json={**body, "tools": t}, headers=headers).status_code
                 for t in (good, broken, good, broken, None, {"not": "a list"}, [1, 2])]
    assert codes == [200, 400, 200, 400, 200, 400, 400]


def test_a_team_library_with_an_invalid_tool_is_refused(tmp_path):
    from ultra.errors import UserError

    tool = {"name": "stats", "category": "c", "description": "d", "errors": ["E"],
            "parameters": {"type": "object", "properties": {"values": {"type": "array"}},
                           "required": ["values"]}}
    task = {"id": "t1", "task_type": "simple_task", "descriptions": {"easy": "Compute."},
            "inputs": {}, "required_tools": ["stats"]}
    path = tmp_path / "lib.json"
    path.write_text(json.dumps({"tools": [tool], "tasks": [task]}))
    with pytest.raises(UserError, match=r"array schema missing items"):
        load_library(str(path))
