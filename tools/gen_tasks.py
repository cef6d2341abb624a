"""Generate the workflow suite's task library (deterministic; the output is committed).

    .venv/bin/python tools/gen_tasks.py            # writes ultra/suites/workflow/data/
    .venv/bin/python tools/gen_tasks.py --check    # exit 1 if the committed data is stale

Writes `tools.json` (the tool registry: 30 tools in 6 categories, JSON-schema parameters,
declared error codes, dependencies), `tasks.json` (5 task types x 100 tasks, each with a
description per difficulty, inputs, expected outputs and an ordered list of required tools)
and `tasks.schema.json` (the format a team's own `--tasks FILE` follows).

Same seed, same bytes: nothing here reads the clock or the environment.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "ultra" / "suites" / "workflow" / "data"
SEED = 20250601
TASKS_PER_TYPE = 100

S = {"type": "string"}
I = {"type": "integer"}
B = {"type": "boolean"}
# Every array says what it holds and every object lists its properties (none fixed here):
# the OpenAI and Azure APIs refuse a tool schema without them (invalid_function_parameters).
O = {"type": "object", "properties": {}}
A = {"type": "array", "items": O}  # records
NUMBERS = {"type": "array", "items": {"type": "number"}}
NAMES = {"type": "array", "items": {"type": "string"}}


def _tool(name, category, description, required, optional=None, errors=(), depends_on=()):
    props = {**required, **(optional or {})}
    return {
        "name": name,
        "category": category,
        "description": description,
        "parameters": {
            "type": "object",
            "properties": props,
            "required": list(required),
            "additionalProperties": False,
        },
        "errors": list(errors),
        "depends_on": list(depends_on),
    }


# Dependencies name tools whose output a tool consumes; the executor enforces them only
# between tools of the same task (a dependency outside the task is met by its inputs).
TOOLS = [
    # file_operations
    _tool("read_file", "file_operations", "Read a file and return its content.",
          {"path": S}, {"encoding": S}, ["FILE_NOT_FOUND", "PERMISSION_DENIED"]),
    _tool("write_file", "file_operations", "Write content to a file.",
          {"path": S, "content": S}, {"overwrite": B}, ["DISK_FULL", "PERMISSION_DENIED"]),
    _tool("list_directory", "file_operations", "List the files of a directory.",
          {"path": S}, {"pattern": S}, ["DIRECTORY_NOT_FOUND", "PERMISSION_DENIED"]),
    _tool("compress_file", "file_operations", "Compress a file.",
          {"path": S, "format": {"type": "string", "enum": ["gzip", "zip", "zstd"]}}, None,
          ["FILE_NOT_FOUND", "UNSUPPORTED_FORMAT"]),
    _tool("copy_file", "file_operations", "Copy a file to a destination.",
          {"source": S, "destination": S}, None, ["FILE_NOT_FOUND", "DISK_FULL"]),
    # data_processing
    _tool("parse_csv", "data_processing", "Parse CSV text into records.",
          {"data": S}, {"delimiter": S}, ["PARSE_ERROR", "ENCODING_ERROR"],
          ["read_file", "http_get", "db_query"]),
    _tool("parse_json", "data_processing", "Parse JSON text into records.",
          {"data": S}, None, ["PARSE_ERROR", "ENCODING_ERROR"],
          ["read_file", "http_get", "fetch_api"]),
    _tool("transform_data", "data_processing", "Map records to a new shape.",
          {"records": A, "mapping": O}, None, ["TRANSFORM_ERROR", "TYPE_MISMATCH"],
          ["parse_csv", "parse_json"]),
    _tool("filter_records", "data_processing", "Keep the records matching a condition.",
          {"records": A, "condition": S}, None, ["INVALID_CONDITION", "TYPE_MISMATCH"],
          ["parse_csv", "parse_json"]),
    _tool("aggregate_data", "data_processing", "Group records and aggregate a metric.",
          {"records": A, "group_by": S},
          {"metric": {"type": "string", "enum": ["sum", "count", "mean"]}},
          ["AGGREGATION_ERROR", "TYPE_MISMATCH"],
          ["parse_csv", "parse_json", "filter_records", "transform_data", "deduplicate"]),
    # network
    _tool("http_get", "network", "Fetch a URL.",
          {"url": S}, {"headers": O}, ["TIMEOUT", "HTTP_404", "HTTP_500"]),
    _tool("http_post", "network", "POST a JSON body to a URL.",
          {"url": S, "body": O}, {"headers": O}, ["TIMEOUT", "HTTP_500", "PAYLOAD_TOO_LARGE"]),
    _tool("authenticate", "network", "Obtain an access token for a service.",
          {"service": S}, {"scope": S}, ["AUTH_FAILED", "TIMEOUT"]),
    _tool("fetch_api", "network", "Call an authenticated API endpoint.",
          {"endpoint": S}, {"params": O}, ["TIMEOUT", "RATE_LIMITED", "HTTP_500"],
          ["authenticate"]),
    _tool("send_webhook", "network", "Deliver a payload to a webhook.",
          {"url": S, "payload": O}, None, ["TIMEOUT", "HTTP_500"]),
    # computation
    _tool("calculate_statistics", "computation", "Summary statistics of numeric values.",
          {"values": NUMBERS}, {"metrics": NAMES}, ["INSUFFICIENT_DATA", "TYPE_MISMATCH"],
          ["parse_csv", "parse_json", "filter_records", "transform_data"]),
    _tool("sort_records", "computation", "Sort records by a key.",
          {"records": A, "key": S}, {"descending": B}, ["KEY_NOT_FOUND"],
          ["parse_csv", "parse_json", "db_query"]),
    _tool("deduplicate", "computation", "Remove duplicate records.",
          {"records": A}, {"key": S}, ["KEY_NOT_FOUND"],
          ["parse_csv", "parse_json", "db_query"]),
    _tool("compute_hash", "computation", "Hash data.",
          {"data": S}, {"algorithm": {"type": "string", "enum": ["sha256", "md5"]}},
          ["UNSUPPORTED_ALGORITHM"], ["read_file"]),
    _tool("validate_schema", "computation", "Check data against a JSON schema.",
          {"data": O, "schema": O}, None, ["SCHEMA_MISMATCH", "INVALID_SCHEMA"],
          ["parse_json", "fetch_api"]),
    # integration
    _tool("db_query", "integration", "Run a read-only SQL query.",
          {"query": S}, {"database": S}, ["CONNECTION_FAILED", "QUERY_TIMEOUT"]),
    _tool("db_insert", "integration", "Insert records into a table.",
          {"table": S, "records": A}, None, ["CONNECTION_FAILED", "CONSTRAINT_VIOLATION"],
          ["transform_data", "filter_records", "validate_schema"]),
    _tool("publish_message", "integration", "Publish a message to a queue topic.",
          {"topic": S, "message": O}, None, ["BROKER_UNAVAILABLE", "MESSAGE_TOO_LARGE"]),
    _tool("cache_set", "integration", "Store a value in the cache.",
          {"key": S, "value": S}, {"ttl": I}, ["CACHE_FULL", "CONNECTION_FAILED"]),
    _tool("send_email", "integration", "Send an email.",
          {"to": S, "subject": S}, {"body": S}, ["SMTP_ERROR", "INVALID_RECIPIENT"],
          ["format_report"]),
    # utility
    _tool("log_event", "utility", "Write an entry to the audit log.",
          {"message": S}, {"level": {"type": "string", "enum": ["info", "warning", "error"]}},
          ["LOG_BACKEND_DOWN"]),
    _tool("format_report", "utility", "Render data as a report.",
          {"data": O}, {"template": S}, ["TEMPLATE_ERROR"],
          ["aggregate_data", "calculate_statistics"]),
    _tool("schedule_job", "utility", "Schedule a recurring job.",
          {"name": S, "cron": S}, None, ["INVALID_SCHEDULE"]),
    _tool("notify_user", "utility", "Send a notification to a user.",
          {"user": S, "message": S}, None, ["DELIVERY_FAILED"], ["format_report"]),
    _tool("archive_results", "utility", "Archive a file for retention.",
          {"path": S}, {"retention_days": I}, ["ARCHIVE_FAILED", "DISK_FULL"],
          ["write_file", "compress_file"]),
]

# What each tool does, in words, for the explicit (easy) descriptions.
PHRASES = {
    "read_file": "read {source}", "write_file": "write the result to {destination}",
    "list_directory": "list the directory {source}", "compress_file": "compress it",
    "copy_file": "copy it to {destination}", "parse_csv": "parse it as CSV",
    "parse_json": "parse it as JSON", "transform_data": "reshape the records",
    "filter_records": "keep only the relevant records", "aggregate_data": "aggregate them",
    "http_get": "download {source}", "http_post": "post the result to {destination}",
    "authenticate": "authenticate with {service}", "fetch_api": "fetch {source} from the API",
    "send_webhook": "send the result to the webhook {destination}",
    "calculate_statistics": "compute summary statistics", "sort_records": "sort the records",
    "deduplicate": "remove duplicates", "compute_hash": "compute a checksum",
    "validate_schema": "validate them against the schema", "db_query": "query {source}",
    "db_insert": "insert the records into {destination}",
    "publish_message": "publish the result on {destination}",
    "cache_set": "cache the result as {destination}", "send_email": "email the report to {destination}",
    "log_event": "log the run", "format_report": "format a report",
    "schedule_job": "schedule it as a recurring job", "notify_user": "notify {destination}",
    "archive_results": "archive the output",
}

# Stages per task type: one tool is drawn from each stage, in order (so dependencies hold).
SOURCES = {"file": ["read_file"], "web": ["http_get"], "db": ["db_query"]}
PARSE_FOR = {"read_file": ["parse_csv", "parse_json"], "http_get": ["parse_json", "parse_csv"],
             "db_query": ["deduplicate", "sort_records"], "fetch_api": ["parse_json"]}
STAGES = {
    "simple_task": [
        [["read_file", "parse_csv"], ["read_file", "parse_json"], ["http_get", "parse_json"],
         ["authenticate", "fetch_api"], ["read_file", "compute_hash"], ["write_file", "archive_results"],
         ["list_directory", "compress_file"], ["db_query", "sort_records"], ["format_report", "send_email"],
         ["format_report", "notify_user"], ["db_query", "deduplicate"], ["copy_file", "log_event"]],
    ],
    "basic_task": [
        [["read_file", "parse_csv", "calculate_statistics"], ["read_file", "parse_json", "validate_schema"],
         ["http_get", "parse_json", "filter_records"], ["db_query", "sort_records", "write_file"],
         ["db_query", "deduplicate", "cache_set"], ["authenticate", "fetch_api", "cache_set"],
         ["read_file", "compute_hash", "log_event"], ["aggregate_data", "format_report", "send_email"],
         ["write_file", "compress_file", "archive_results"], ["http_get", "parse_csv", "aggregate_data"]],
    ],
}
DOMAINS = [
    ("sales", "sales records"), ("logs", "server log entries"), ("orders", "customer orders"),
    ("sensors", "sensor readings"), ("invoices", "invoices"), ("signups", "user signups"),
    ("inventory", "inventory items"), ("payments", "payment transactions"),
    ("tickets", "support tickets"), ("clicks", "clickstream events"), ("shipments", "shipments"),
    ("reviews", "product reviews"), ("expenses", "expense claims"), ("devices", "device telemetry"),
]
SERVICES = ["billing", "crm", "analytics", "warehouse", "payments", "identity"]
FORMATS = ["csv", "json"]


def _pipeline(rng: random.Random, task_type: str) -> list[str]:
    if task_type in STAGES:
        return list(rng.choice(STAGES[task_type][0]))
    if task_type == "data_pipeline":
        src = rng.choice(["read_file", "http_get", "db_query"])
        steps = [src, rng.choice(PARSE_FOR[src])]
        if rng.random() < 0.6:
            steps.append(rng.choice(["transform_data", "filter_records"]) if steps[1].startswith("parse")
                         else "aggregate_data")
        steps.append(rng.choice(["write_file", "db_insert"]) if "transform_data" in steps or "filter_records" in steps
                     else rng.choice(["write_file", "cache_set", "publish_message"]))
        return steps
    if task_type == "api_integration":
        middle = rng.choice([["parse_json", "validate_schema"], ["parse_json", "transform_data"],
                             ["parse_json", "filter_records"]])
        sink = rng.choice(["http_post", "send_webhook", "publish_message", "db_insert"])
        return ["authenticate", "fetch_api", *middle, sink]
    if task_type == "multi_stage_pipeline":
        src = rng.choice(["read_file", "http_get"])
        parse = rng.choice(PARSE_FOR[src])
        clean = rng.choice(["filter_records", "transform_data"])
        summary = rng.choice(["aggregate_data", "calculate_statistics"])
        steps = [src, parse, clean, summary, "format_report"]
        if rng.random() < 0.5:
            steps.append(rng.choice(["send_email", "notify_user"]))
        return steps
    raise ValueError(task_type)


def _describe(tools: list[str], domain: str, noun: str, inputs: dict, outputs: dict) -> dict[str, str]:
    """One description per difficulty: vaguer and shorter as it gets harder, same tools."""
    fields = {"source": inputs.get("source", ""), "service": inputs.get("service", ""),
              "destination": outputs.get("destination", "")}
    steps = [PHRASES[t].format(**fields) for t in tools]
    goal = f"the {noun}"
    very_easy = (f"Process {goal}: " + ", then ".join(steps)
                 + f"; the result is {outputs['destination']} ({outputs['format']}).")
    easy = (f"Take {goal} from {fields['source'] or fields['service']}, " + ", ".join(steps[1:])
            + f"; deliver {outputs['destination']}.")
    medium = f"Turn {goal} into a {outputs['format']} result at {outputs['destination']}."
    hard = f"Deal with {goal} end to end."
    very_hard = f"{noun.capitalize()}: sort it out."
    return {"very_easy": very_easy, "easy": easy, "medium": medium, "hard": hard, "very_hard": very_hard}


def _io(rng: random.Random, tools: list[str], domain: str, n: int) -> tuple[dict, dict]:
    fmt = rng.choice(FORMATS)
    year = 2019 + n % 7
    first = tools[0]
    inputs: dict[str, str] = {}
    if first in ("http_get",):
        inputs["source"] = f"https://data.example.com/{domain}/{year}.{fmt}"
    elif first in ("db_query",):
        inputs["source"] = f"SELECT * FROM {domain} WHERE year = {year}"
    elif first in ("authenticate",):
        inputs["service"] = rng.choice(SERVICES)
        inputs["source"] = f"/v1/{domain}?year={year}"
    else:
        inputs["source"] = f"data/{domain}_{year}.{fmt}"
    last = tools[-1]
    if last in ("http_post", "send_webhook"):
        dest = f"https://hooks.example.com/{domain}/{n}"
    elif last in ("publish_message",):
        dest = f"topic.{domain}.processed"
    elif last in ("db_insert",):
        dest = f"{domain}_clean"
    elif last in ("send_email",):
        dest = f"{domain}-team@example.com"
    elif last in ("notify_user",):
        dest = f"{domain}-owner"
    elif last in ("cache_set",):
        dest = f"{domain}:{year}"
    else:
        dest = f"out/{domain}_{year}_{n}.{'json' if fmt == 'json' else 'csv'}"
    return inputs, {"destination": dest, "format": "json" if last != "db_insert" else "table"}


def generate() -> tuple[list[dict], list[dict]]:
    rng = random.Random(SEED)
    tasks = []
    for task_type in ["simple_task", "basic_task", "data_pipeline", "api_integration", "multi_stage_pipeline"]:
        for n in range(TASKS_PER_TYPE):
            tools = _pipeline(rng, task_type)
            domain, noun = rng.choice(DOMAINS)
            inputs, outputs = _io(rng, tools, domain, n)
            tasks.append({
                "id": f"{task_type}_{n:03d}",
                "task_type": task_type,
                "descriptions": _describe(tools, domain, noun, inputs, outputs),
                "inputs": inputs,
                "expected_outputs": outputs,
                "required_tools": tools,
            })
    return tasks, TOOLS


SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://ultra.invalid/schemas/workflow-tasks.schema.json",
    "title": "ultra workflow task library",
    "description": (
        "A task library for the workflow suite (`ultra run --tasks FILE`). `tools` is optional: "
        "without it the built-in tool registry is used, and every required tool must exist there."
    ),
    "type": "object",
    "required": ["tasks"],
    "additionalProperties": False,
    "properties": {
        "version": {"const": 1},
        "tools": {"type": "array", "items": {"$ref": "#/$defs/tool"}},
        "tasks": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/task"}},
    },
    "$defs": {
        "tool": {
            "type": "object",
            "required": ["name", "category", "description", "parameters", "errors"],
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string", "pattern": "^[a-zA-Z_][a-zA-Z0-9_]*$"},
                "category": {"type": "string"},
                "description": {"type": "string"},
                "parameters": {
                    "description": "JSON schema of the arguments: an object schema with properties and required.",
                    "type": "object",
                    "required": ["type", "properties"],
                    "properties": {"type": {"const": "object"}, "properties": {"type": "object"},
                                   "required": {"type": "array", "items": {"type": "string"}}},
                },
                "errors": {"description": "Error codes a failing call returns.", "type": "array",
                           "minItems": 1, "items": {"type": "string"}},
                "depends_on": {"description": "Tools whose output this tool consumes; enforced when the task requires them.",
                               "type": "array", "items": {"type": "string"}},
            },
        },
        "task": {
            "type": "object",
            "required": ["id", "task_type", "descriptions", "required_tools"],
            "additionalProperties": False,
            "properties": {
                "id": {"type": "string", "minLength": 1},
                "task_type": {"type": "string", "minLength": 1},
                "descriptions": {
                    "description": "Task wording per difficulty; a missing difficulty uses the nearest easier one.",
                    "type": "object", "minProperties": 1,
                    "propertyNames": {"enum": ["very_easy", "easy", "medium", "hard", "very_hard"]},
                    "additionalProperties": {"type": "string", "minLength": 1},
                },
                "inputs": {"type": "object"},
                "expected_outputs": {"type": "object"},
                "required_tools": {"description": "Tools the task needs, in order, each at most once.",
                                   "type": "array", "minItems": 1, "items": {"type": "string"},
                                   "uniqueItems": True},
            },
        },
    },
}


def render() -> dict[str, str]:
    tasks, tools = generate()
    dump = lambda obj: json.dumps(obj, indent=1, ensure_ascii=False) + "\n"  # noqa: E731

    def lines(key: str, items: list[dict]) -> str:  # one item per line: small, diffable
        body = ",\n".join(json.dumps(i, ensure_ascii=False) for i in items)
        return f'{{"version": 1, "{key}": [\n{body}\n]}}\n'

    return {
        "tasks.json": lines("tasks", tasks),
        "tools.json": lines("tools", tools),
        "tasks.schema.json": dump(SCHEMA),
    }


def main(argv: list[str]) -> int:
    files = render()
    if "--check" in argv:
        stale = [n for n, text in files.items() if not (DATA / n).exists() or (DATA / n).read_text() != text]
        for n in stale:
            print(f"stale: {DATA / n}")
        return 1 if stale else 0
    DATA.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (DATA / name).write_text(text)
        print(f"wrote {DATA / name} ({len(text)} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
