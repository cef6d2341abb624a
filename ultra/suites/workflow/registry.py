"""The tool registry: what a tool is, how its arguments are checked, what it looks like
on the wire. Pure functions over plain data."""

from __future__ import annotations

from typing import Any

import msgspec


class Tool(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    category: str
    description: str
    parameters: dict[str, Any]  # JSON schema of an object: properties, required
    errors: list[str]  # codes a failing call returns
    depends_on: list[str] = []  # tools whose output it consumes (enforced within a task)


# Only the JSON-schema types the registry uses; bool is not an int here, as in JSON.
_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
}


def _type_ok(value: Any, schema: dict[str, Any]) -> bool:
    kind = schema.get("type")
    if kind is None:
        return True
    types = _TYPES.get(kind)
    if types is None:
        return True
    if isinstance(value, bool) and kind in ("integer", "number"):
        return False
    return isinstance(value, types)


def argument_error(tool: Tool, args: Any) -> str | None:
    """Why `args` do not fit the tool's parameter schema, or None if they do."""
    if not isinstance(args, dict):
        return "arguments must be a JSON object"
    props: dict[str, Any] = tool.parameters.get("properties", {})
    for name in tool.parameters.get("required", []):
        if name not in args:
            return f"missing required parameter {name!r}"
    for name, value in args.items():
        schema = props.get(name)
        if schema is None:
            if tool.parameters.get("additionalProperties", True) is False:
                return f"unknown parameter {name!r}"
            continue
        if not _type_ok(value, schema):
            return f"parameter {name!r} must be of type {schema.get('type')}"
        if "enum" in schema and value not in schema["enum"]:
            return f"parameter {name!r} must be one of {schema['enum']}"
    return None


_SOURCE_PARAMS = frozenset({"path", "url", "query", "endpoint", "source", "data"})
_DEST_PARAMS = frozenset({"path", "url", "to", "user", "table", "topic", "key", "destination"})


def example_arguments(
    tool: Tool, inputs: dict[str, Any], outputs: dict[str, Any], *, first: bool = False, last: bool = False
) -> dict[str, Any]:
    """Valid arguments for a call of `tool` in a task: required parameters only, strings
    taken from the task's inputs (first step) and expected outputs (last step) where the
    names fit (the plan shows these)."""
    props: dict[str, Any] = tool.parameters.get("properties", {})
    args: dict[str, Any] = {}
    for name in tool.parameters.get("required", []):
        schema = props.get(name, {})
        if "enum" in schema:
            args[name] = schema["enum"][0]
            continue
        kind = schema.get("type", "string")
        if kind == "string":
            value = inputs.get(name) or outputs.get(name)
            if value is None and first and name in _SOURCE_PARAMS:
                value = inputs.get("source")
            if value is None and last and name in _DEST_PARAMS:
                value = outputs.get("destination")
            args[name] = str(value or _STRING_DEFAULTS.get(name, f"<{name}>"))
        else:
            args[name] = _DEFAULTS.get(kind, "x")
    return args


def wrong_arguments(tool: Tool, args: dict[str, Any]) -> dict[str, Any]:
    """`args` with the first required parameter given a value of the wrong type."""
    required = tool.parameters.get("required", [])
    if not required:  # nothing to break by type: pass a parameter the tool does not have
        return {**args, "unexpected_parameter": True}
    name = required[0]
    kind = tool.parameters.get("properties", {}).get(name, {}).get("type", "string")
    return {**args, name: 0 if kind != "integer" and kind != "number" else "zero"}


def missing_arguments(tool: Tool, args: dict[str, Any]) -> dict[str, Any]:
    """`args` without the first required parameter."""
    required = tool.parameters.get("required", [])
    if not required:
        return wrong_arguments(tool, args)
    return {k: v for k, v in args.items() if k != required[0]}


_DEFAULTS: dict[str, Any] = {"integer": 1, "number": 1.0, "boolean": True, "array": [], "object": {}}
_STRING_DEFAULTS = {
    "path": "out/result.json", "content": "<previous output>", "data": "<previous output>",
    "condition": "status == 'active'", "group_by": "category", "key": "id", "url": "https://example.com/hook",
    "topic": "results", "to": "team@example.com", "subject": "Report", "message": "done",
    "user": "owner", "query": "SELECT 1", "table": "results", "value": "<previous output>",
    "name": "job", "cron": "0 * * * *", "service": "api", "endpoint": "/v1/data",
    "source": "<input>", "destination": "out/copy", "format": "gzip",
}


def openai_tool(tool: Tool) -> dict[str, Any]:
    """The OpenAI function-tool schema the model is offered."""
    return {
        "type": "function",
        "function": {"name": tool.name, "description": tool.description, "parameters": tool.parameters},
    }


def signature(tool: Tool) -> str:
    """`read_file(path, encoding?)`: the one-line form the prompt lists for text-call models."""
    required = tool.parameters.get("required", [])
    names = [n if n in required else f"{n}?" for n in tool.parameters.get("properties", {})]
    return f"{tool.name}({', '.join(names)}): {tool.description}"


__all__ = ["argument_error", "example_arguments", "missing_arguments", "openai_tool",
           "signature", "Tool", "wrong_arguments"]
