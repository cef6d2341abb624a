"""The event schema: one msgspec tagged union, the only thing ever written to the log.

Every event carries `event_id`, `type` (the tag), `version` and `recorded_at`; the log
assigns `seq`. Events are immutable: corrections are new events (`alias.defined`,
`tests.retracted`). Readers skip, and count, types they do not know.
"""

from __future__ import annotations

import datetime as _dt
import time
import uuid
from typing import Literal, Union

import msgspec

SCHEMA_VERSION = 1

Outcome = Literal["full_success", "partial_success", "failure"]

# The benchmark's error categories: exactly one for every test that is not a full success.
ERROR_CATEGORIES: tuple[str, ...] = (
    "tool_call_format",
    "timeout",
    "max_turns",
    "tool_selection",
    "parameter_config",
    "sequence_order",
    "dependency",
    "other",
)

# Why a test could not be taken at all (`test.errored`): collection faults, not model faults.
ERRORED_REASONS: tuple[str, ...] = (
    "rate_limited",
    "timeout",
    "server_error",
    "connection",
    "malformed_response",
    "bad_request",
    "cancelled",
    "other",
)


def new_event_id() -> str:
    """Unique, and time-ordered (like UUIDv7): nanoseconds first, then 64 random bits.
    Ordered ids append to the end of the event_id index instead of scattering writes."""
    return f"{time.time_ns():016x}{uuid.uuid4().hex[:16]}"


def utc_now() -> str:
    """ISO 8601 UTC with microseconds; sorts lexically in time order."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class _Event(msgspec.Struct, tag_field="type", kw_only=True, frozen=True, omit_defaults=False):
    event_id: str = msgspec.field(default_factory=new_event_id)
    version: int = SCHEMA_VERSION
    recorded_at: str = msgspec.field(default_factory=utc_now)


class PlanSummary(msgspec.Struct, frozen=True, kw_only=True):
    tests: int
    shards: int
    models: list[str]
    skipped_completed: int = 0


class RunStarted(_Event, tag="run.started", kw_only=True, frozen=True):
    run_id: str
    argv: list[str]
    config_digest: str
    plan: PlanSummary


class RunFinished(_Event, tag="run.finished", kw_only=True, frozen=True):
    run_id: str
    completed: int
    errored: int
    interrupted: bool = False


class ShardStarted(_Event, tag="shard.started", kw_only=True, frozen=True):
    run_id: str
    shard_id: str
    model: str  # canonical model name
    instance: str  # route name: qwen-key0, DeepSeek-V3-0324-2, gpt-4o-mini
    provider: str
    strategy: str
    key_index: int | None = None
    deployment: str | None = None
    workers: int
    qps: float
    planned: int


class ShardFinished(_Event, tag="shard.finished", kw_only=True, frozen=True):
    run_id: str
    shard_id: str
    model: str
    instance: str
    planned: int
    completed: int
    errored: int
    interrupted: bool = False


class Usage(msgspec.Struct, frozen=True, kw_only=True):
    prompt_tokens: int = 0
    completion_tokens: int = 0  # includes reasoning tokens, as the APIs count them
    reasoning_tokens: int = 0  # completion_tokens_details.reasoning_tokens, when reported


class _TestEvent(_Event, kw_only=True, frozen=True):
    """Fields shared by both results of one test: what it was, where it ran."""

    __test__ = False  # not a pytest test class, despite the name

    run_id: str
    shard_id: str
    test_key: str
    suite: str = "workflow"
    model: str  # canonical model name
    instance: str
    provider: str
    simulated: bool = False  # True when the provider is the bundled simulator
    task_id: str
    task_type: str
    difficulty: str
    prompt_type: str
    tool_success_rate: float
    retries: int = 0
    execution_time: float = 0.0  # seconds, wall time of the whole test
    started_at: str = ""


class TestCompleted(_TestEvent, tag="test.completed", kw_only=True, frozen=True):
    """A test the model actually took; its outcome enters the success statistics."""

    outcome: Outcome
    workflow_score: float = 0.0
    phase2_score: float = 0.0
    quality_score: float = 0.0
    final_score: float = 0.0
    turns: int = 0
    tool_calls: int = 0
    tool_coverage: float = 0.0  # fraction of required tools called successfully
    required_tools: int = 0
    error_category: str | None = None  # one of ERROR_CATEGORIES unless full_success
    assisted_turns: int = 0  # turns in which format help was given
    usage: Usage = Usage()


class TestErrored(_TestEvent, tag="test.errored", kw_only=True, frozen=True):
    """The test could not be taken; the next `ultra run` takes it again."""

    reason: str  # one of ERRORED_REASONS
    message: str = ""  # the server's message: redacted, at most 200 characters; no secret
    http_status: int | None = None  # the last HTTP answer, if any (None: no answer at all)


class AliasDefined(_Event, tag="alias.defined", kw_only=True, frozen=True):
    alias: str
    canonical: str
    reason: str = ""


class Selector(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Which earlier `test.completed` events a retraction removes; all given fields must match."""

    model: str | None = None  # canonical (after normalization and aliases)
    run_id: str | None = None
    shard_id: str | None = None
    instance: str | None = None
    test_keys: list[str] | None = None
    recorded_before: str | None = None
    recorded_after: str | None = None


class TestsRetracted(_Event, tag="tests.retracted", kw_only=True, frozen=True):
    selector: Selector
    reason: str


Event = Union[
    RunStarted,
    RunFinished,
    ShardStarted,
    ShardFinished,
    TestCompleted,
    TestErrored,
    AliasDefined,
    TestsRetracted,
]

EVENT_TYPES: dict[str, type] = {cls.__struct_config__.tag: cls for cls in Event.__args__}  # type: ignore[attr-defined]

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Event)


def encode(event: Event) -> bytes:
    return _encoder.encode(event)


def decode(data: bytes | str) -> Event:
    """Decode one known event; raises msgspec.ValidationError/DecodeError otherwise."""
    return _decoder.decode(data)
