"""The event schema: one msgspec tagged union, the only thing ever written to the log.

Every event carries `event_id`, `type` (the tag), `version` and `recorded_at`; the log
assigns `seq`. Events are immutable: corrections are new events (`alias.defined`,
`tests.retracted`). Readers skip, and count, types they do not know.

Every field is constrained (ranges, enums, formats: msgspec `Meta`). Python code that
builds an event is trusted; the constraints apply wherever bytes become events: on
`ultra import` and on every read of the log. `event_id` and `recorded_at` get fresh
values when code builds an event; in bytes they are required (`require_identity`).

Versions: 2 is written. Version 1 differs only in `test.completed` (its result fields
were flat on the event; `decode` lifts them into `result`) and `tests.retracted` (it
named a selector but no event ids; it withdraws nothing now: see `TestsRetracted`).
"""

from __future__ import annotations

import datetime as _dt
import time
import uuid
from typing import Annotated, Literal, Union

import msgspec
from msgspec import Meta

from ultra.defaults import DEFAULT_CONDITION

SCHEMA_VERSION = 2
KNOWN_VERSIONS: tuple[int, ...] = (1, 2)

Outcome = Literal["full_success", "partial_success", "failure"]

# The benchmark's error categories: exactly one for every test that is not a full success.
ErrorCategory = Literal[
    "tool_call_format",
    "timeout",
    "max_turns",
    "tool_selection",
    "parameter_config",
    "sequence_order",
    "dependency",
    "other",
]
ERROR_CATEGORIES: tuple[str, ...] = ErrorCategory.__args__  # type: ignore[attr-defined]

# Why a test could not be taken at all (`test.errored`): collection faults, not model faults.
ErroredReason = Literal[
    "rate_limited",
    "timeout",
    "server_error",
    "connection",
    "malformed_response",
    "bad_request",
    "cancelled",
    "other",
]
ERRORED_REASONS: tuple[str, ...] = ErroredReason.__args__  # type: ignore[attr-defined]

# ---- field constraints (checked when bytes are decoded: import and read) ----
# UTC, ISO 8601, "Z": the form `utc_now` writes; strings in this form sort in time order.
TIMESTAMP_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?Z$"
Timestamp = Annotated[str, Meta(pattern=TIMESTAMP_PATTERN)]
# Lengths, not patterns, where a pattern would cost a regex per event read (recorded_at
# keeps its format check: it orders the log's time).
EventId = Annotated[str, Meta(min_length=1, max_length=128)]
NAME_MAX = 512
Name = Annotated[str, Meta(min_length=1, max_length=NAME_MAX)]  # models, routes, runs, tasks, keys
Text = Annotated[str, Meta(max_length=4000)]
Version = Annotated[int, Meta(ge=1, le=SCHEMA_VERSION)]
Count = Annotated[int, Meta(ge=0, le=2**53)]
Rate = Annotated[float, Meta(ge=0.0, le=1.0)]
Seconds = Annotated[float, Meta(ge=0.0, le=1e9)]
Score = Annotated[float, Meta(ge=-1e12, le=1e12)]  # finite; a suite's scale is its own
MetricName = Annotated[str, Meta(min_length=1, max_length=64)]
Strategy = Literal["per-key", "per-deployment", "single"]
Digest = Annotated[str, Meta(min_length=64, max_length=64)]  # sha256, hex
FinishReason = Annotated[str, Meta(max_length=64)]  # "stop", "tool_calls", "length", ...


def new_event_id() -> str:
    """Unique, and time-ordered (like UUIDv7): nanoseconds first, then 64 random bits.
    Ordered ids append to the end of the event_id index instead of scattering writes."""
    return f"{time.time_ns():016x}{uuid.uuid4().hex[:16]}"


def utc_now() -> str:
    """ISO 8601 UTC with microseconds; sorts lexically in time order."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class _Event(msgspec.Struct, tag_field="type", kw_only=True, frozen=True, omit_defaults=False):
    event_id: EventId = msgspec.field(default_factory=new_event_id)
    version: Version = SCHEMA_VERSION
    recorded_at: Timestamp = msgspec.field(default_factory=utc_now)


class PlanSummary(msgspec.Struct, frozen=True, kw_only=True):
    tests: Count
    shards: Count
    models: list[Name]
    skipped_completed: Count = 0


Aggregate = Literal["mean", "sum"]
AGGREGATES: tuple[str, ...] = Aggregate.__args__  # type: ignore[attr-defined]


class Metric(msgspec.Struct, frozen=True, kw_only=True):
    """A metric a suite declares: its name in `TestResult.metrics` and how the projections
    aggregate it over tests. `mean`: per test, a test without it adding 0 (shown as
    `avg_<name>`); `sum`: the total over the tests (shown as `total_<name>`)."""

    name: MetricName
    aggregate: Aggregate = "mean"
    description: Text = ""

    @property
    def stat(self) -> str:
        return metric_stat(self.name, self.aggregate)


def metric_stat(name: str, aggregate: str) -> str:
    """The name a metric's aggregate has in every projection (`avg_x`, `total_x`)."""
    return f"total_{name}" if aggregate == "sum" else f"avg_{name}"


class RunStarted(_Event, tag="run.started", kw_only=True, frozen=True):
    run_id: Name
    argv: list[Text]
    config_digest: Text
    plan: PlanSummary
    # condition id (as the run's test events carry it) -> what sets it apart, readable:
    # {"max_turns": "4"}; the default condition has no fields
    conditions: dict[Name, dict[MetricName, Text]] = {}
    # the suite the run takes and the metrics it declares (absent in logs from before
    # suites declared them: their metrics are means)
    suite: Name | None = None
    metrics: Annotated[list[Metric], Meta(max_length=1000)] = []


class RunFinished(_Event, tag="run.finished", kw_only=True, frozen=True):
    run_id: Name
    completed: Count
    errored: Count
    interrupted: bool = False


Price = Annotated[float, Meta(ge=0.0, le=1e9)]


class Prices(msgspec.Struct, frozen=True, kw_only=True):
    """A model's prices per million tokens, as its config gave them (0 where it gave one
    price only): the projections price the shard's tokens by them."""

    input: Price = 0.0  # per million prompt tokens
    output: Price = 0.0  # per million completion tokens (reasoning included)


class ShardStarted(_Event, tag="shard.started", kw_only=True, frozen=True):
    run_id: Name
    shard_id: Name
    model: Name  # canonical model name
    instance: Name  # route name: qwen-key0, DeepSeek-V3-0324-2, gpt-4o-mini
    provider: Name
    strategy: Strategy
    key_index: Count | None = None
    deployment: Name | None = None
    workers: Annotated[int, Meta(ge=1, le=2**31)]
    qps: Annotated[float, Meta(gt=0.0, le=1e9)]
    planned: Count
    prices: Prices | None = None  # None: the config gave the model no price


class ShardFinished(_Event, tag="shard.finished", kw_only=True, frozen=True):
    run_id: Name
    shard_id: Name
    model: Name
    instance: Name
    planned: Count
    completed: Count
    errored: Count
    interrupted: bool = False


class Usage(msgspec.Struct, frozen=True, kw_only=True):
    prompt_tokens: Count = 0
    completion_tokens: Count = 0  # includes reasoning tokens, as the APIs count them
    reasoning_tokens: Count = 0  # completion_tokens_details.reasoning_tokens, when reported


def _stat(name: str, kind: Literal["rate", "mean"]) -> Meta:
    """The name under which the projections average a result field over tests (a "rate"
    or a "mean"; metrics are means named `avg_<name>`): folds derive their sums from these
    marks, not from lists of their own."""
    return Meta(extra={"stat": name, "kind": kind})


# The built-in workflow suite's metrics, in the order the projections show them: results.db
# keeps a column for each (others get theirs as they appear), and legacy files name them.
WORKFLOW_METRICS: tuple[str, ...] = ("final_score", "workflow_score", "phase2_score", "quality_score")


class TestResult(msgspec.Struct, frozen=True, kw_only=True):
    """What a suite scored for one test the model took: the body of `test.completed`.

    The fields every tool-use suite shares are typed here; `metrics` holds the suite's own
    scores by name (the workflow suite: workflow_score, phase2_score, quality_score,
    final_score), each averaged by the projection as `avg_<name>`.
    """

    __test__ = False  # not a pytest test class, despite the name

    outcome: Outcome
    error_category: ErrorCategory | None = None  # exactly one unless full_success
    turns: Annotated[Count, _stat("avg_turns", "mean")] = 0
    tool_calls: Annotated[Count, _stat("avg_tool_calls", "mean")] = 0
    # the share of the required tools that succeeded
    tool_coverage: Annotated[Rate, _stat("tool_coverage_rate", "rate")] = 0.0
    required_tools: Count = 0
    assisted_turns: Count = 0  # turns in which format help was given
    metrics: dict[MetricName, Score] = {}
    # each answer's finish_reason, in turn order ("" where the server gave none): a turn cut
    # off at `length` is a truncated test (counted apart in master_database.json)
    finish_reasons: Annotated[list[FinishReason], Meta(max_length=10_000)] = []

    @property
    def truncated(self) -> bool:
        return "length" in self.finish_reasons

    def __post_init__(self) -> None:
        if (self.outcome == "full_success") != (self.error_category is None):
            raise ValueError("error_category is required unless the outcome is full_success")


class _TestEvent(_Event, kw_only=True, frozen=True):
    """Fields shared by both results of one test: what it was, where it ran."""

    __test__ = False  # not a pytest test class, despite the name

    run_id: Name
    shard_id: Name
    test_key: Name
    suite: Name = "workflow"
    model: Name  # canonical model name
    instance: Name
    provider: Name
    simulated: bool = False  # True when the provider is the bundled simulator
    task_id: Name
    task_type: Name
    difficulty: Name
    prompt_type: Name
    tool_success_rate: Rate
    retries: Count = 0
    execution_time: Seconds = 0.0  # seconds, wall time of the whole test
    started_at: Annotated[str, Meta(max_length=40)] = ""  # recorded_at's form, or empty
    # The sha256 (hex) of the test's transcript, stored in the log's `transcripts` table
    # (ultra/transcripts/__init__.py); None: none stored. The chain covers it through this field.
    transcript: Digest | None = None
    # every input of the test key but model, instance and cell (max_turns, request options,
    # task library, suite): a short digest, "default" for the defaults (and older events);
    # run.started says what it stands for. Reports never add tests of two conditions.
    condition: Name = DEFAULT_CONDITION


class TestCompleted(_TestEvent, tag="test.completed", kw_only=True, frozen=True):
    """A test the model actually took; its outcome enters the success statistics."""

    result: TestResult
    usage: Usage = Usage()


class TestErrored(_TestEvent, tag="test.errored", kw_only=True, frozen=True):
    """The test could not be taken; the next `ultra run` takes it again."""

    reason: ErroredReason
    message: Text = ""  # the server's message: redacted, at most 200 characters; no secret
    # The last HTTP answer, if any (None: no answer at all).
    http_status: Annotated[int, Meta(ge=100, le=599)] | None = None
    # what the answers the test did get cost (paid for, even though the test is taken again)
    usage: Usage = Usage()


class RouteChecked(_Event, tag="route.checked", kw_only=True, frozen=True):
    """A route's preflight request before the run's tests: did it answer, and its tokens."""

    run_id: Name
    shard_id: Name
    model: Name
    instance: Name
    provider: Name
    simulated: bool = False
    ok: bool
    http_status: Annotated[int, Meta(ge=100, le=599)] | None = None
    message: Text = ""
    usage: Usage = Usage()
    prices: Prices | None = None  # as its shard.started (which comes later in the log)


class AliasDefined(_Event, tag="alias.defined", kw_only=True, frozen=True):
    alias: Name
    canonical: Name
    reason: Text = ""


class Selector(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What the user asked to retract; all given fields must match (kept for the record:
    the retraction's `withdraws` says which completions it matched when it was made)."""

    model: Name | None = None  # canonical (after normalization and aliases)
    run_id: Name | None = None
    shard_id: Name | None = None
    instance: Name | None = None
    test_keys: list[Name] | None = None
    recorded_before: Timestamp | None = None
    recorded_after: Timestamp | None = None


class TestsRetracted(_Event, tag="tests.retracted", kw_only=True, frozen=True):
    """Withdraws the `test.completed` events named in `withdraws`, resolved from the
    selector when the retraction was made: clock skew and import order cannot change what
    it hides. (A version-1 retraction has no `withdraws` and withdraws nothing.)"""

    selector: Selector
    reason: Annotated[str, Meta(min_length=1, max_length=4000)]
    withdraws: list[EventId] = []

    def __post_init__(self) -> None:
        if self.version >= 2 and not self.withdraws:
            raise ValueError("a retraction must withdraw at least one completion")


class LegacyImported(_Event, tag="legacy.imported", kw_only=True, frozen=True):
    """One import of a legacy master_database.json (`ultra import-legacy`). Its cells follow
    as `legacy.cell` events naming this event's id; the latest import of a source replaces
    the earlier ones in every projection (their events stay: the history is kept)."""

    source: Name
    sha256: Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$")]
    file_name: Text = ""
    file_version: Text = ""  # the file's own `version`
    last_updated: Text = ""  # the file's own `last_updated`, as written
    cells: Count
    tests: Count
    models: Count
    anomalies: dict[Name, Count] = {}  # kind -> leaves
    skipped: Count = 0  # leaves not imported (anomalies whose counts are inconsistent)
    excluded_models: list[Name] = []
    notes: list[Text] = []


class LegacyCell(_Event, tag="legacy.cell", kw_only=True, frozen=True):
    """One leaf of an imported legacy file, as ultra counts it. `sums` holds, for each
    average the leaf has, average x total (`execution_time`, `turns`, `tool_calls`,
    `tool_coverage`, and the suite's metrics): a mean the leaf lacks is absent, and its
    tests are then not in that mean's denominator."""

    source: Name
    import_id: EventId  # the legacy.imported event this cell belongs to
    model: Name  # canonical
    legacy_model: Name  # as the file spells it
    prompt_type: Name
    tool_success_rate: Rate | None = None  # None: the file does not place it (version 2.0)
    difficulty: Name
    task_type: Name
    path: Text  # the leaf's path in the file
    counting: Annotated[str, Meta(max_length=64)] = ""  # how the leaf counted `success`
    full_success: Count
    partial_success: Count
    failure: Count
    tests_with_assistance: Count = 0
    errors: dict[ErrorCategory, Count] = {}
    sums: dict[MetricName, Score] = {}
    anomaly: Annotated[str, Meta(max_length=200)] = ""  # imported despite this anomaly

    @property
    def total(self) -> int:
        return self.full_success + self.partial_success + self.failure


Event = Union[RunStarted, RunFinished, ShardStarted, ShardFinished, TestCompleted, TestErrored,
              AliasDefined, TestsRetracted, RouteChecked, LegacyImported, LegacyCell]

EVENT_TYPES: dict[str, type] = {cls.__struct_config__.tag: cls for cls in Event.__args__}  # type: ignore[attr-defined]
IDENTITY_FIELDS: tuple[str, ...] = ("event_id", "type", "version", "recorded_at")

__all__ = ["WORKFLOW_METRICS", "Aggregate", "AGGREGATES", "AliasDefined", "Count", "Digest",
           "ERROR_CATEGORIES", "ErrorCategory", "ERRORED_REASONS", "ErroredReason", "Event",
           "EVENT_TYPES", "EventId", "FinishReason", "IDENTITY_FIELDS",
           "KNOWN_VERSIONS", "LegacyCell", "LegacyImported", "Metric", "metric_stat", "MetricName", "Name", "NAME_MAX",
           "new_event_id", "Outcome", "PlanSummary", "Price", "Prices", "Rate",
           "RouteChecked", "RunFinished", "RunStarted", "SCHEMA_VERSION",
           "Score", "Seconds", "Selector", "ShardFinished", "ShardStarted", "Strategy",
           "TestCompleted", "TestErrored", "TestResult", "TestsRetracted", "Text", "Timestamp",
           "TIMESTAMP_PATTERN", "Usage", "utc_now", "Version"]
