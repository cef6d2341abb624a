"""The OpenAI function-calling rules for a tool's `parameters` schema, as the API applies
them (Azure OpenAI shares them). One home: the simulator refuses a request with them, a
team's task library is checked with them, and the bundled tools.json is tested with them.

The API answers a tool that breaks a rule with HTTP 400::

    {"error": {"message": "Invalid schema for function 'X': In context=('properties',
     'values'), array schema missing items.", "type": "invalid_request_error",
     "param": "tools[0].function.parameters", "code": "invalid_function_parameters"}}

and refuses the whole request: one bad tool fails every call that offers it.
"""

from __future__ import annotations

from typing import Any


def schema_problem(schema: Any, context: tuple[str, ...] = ()) -> str | None:
    """What the API says is wrong with a parameters schema ("In context=(...), ..."), or None."""
    if not isinstance(schema, dict):
        return f"In context={context!r}, schema must be a JSON object."
    kind = schema.get("type")
    kinds = kind if isinstance(kind, list) else [kind]
    if "object" in kinds:
        props = schema.get("properties")
        if not isinstance(props, dict):
            return f"In context={context!r}, object schema missing properties."
        for name, sub in props.items():
            problem = schema_problem(sub, (*context, "properties", name))
            if problem:
                return problem
    if "array" in kinds:
        items = schema.get("items")
        if items is None:
            return f"In context={context!r}, array schema missing items."
        problem = schema_problem(items, (*context, "items"))
        if problem:
            return problem
    for combinator in ("anyOf", "oneOf", "allOf"):
        for i, sub in enumerate(schema.get(combinator) or ()):
            problem = schema_problem(sub, (*context, combinator, str(i)))
            if problem:
                return problem
    return None


def function_problem(name: str, parameters: Any) -> str | None:
    """The API's whole message for one function's parameters, or None when it accepts them."""
    problem = schema_problem(parameters)
    return f"Invalid schema for function '{name}': {problem}" if problem else None


def tools_problem(tools: list[Any] | None) -> tuple[str, str] | None:
    """(message, param) for the first tool of a request the API refuses, or None."""
    for i, tool in enumerate(tools or ()):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict):
            continue
        if "parameters" not in function:
            continue  # a function without parameters takes none: accepted
        message = function_problem(str(function.get("name", "")), function["parameters"])
        if message:
            return message, f"tools[{i}].function.parameters"
    return None


__all__ = ["function_problem", "schema_problem", "tools_problem"]
