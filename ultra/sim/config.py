"""The simulator's configuration: one msgspec Struct, from TOML, JSON or CLI options.

Every section defaults to "off": a bare `SimConfig()` answers every request at once,
with no limits and no faults, which is what a speed benchmark wants.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from ultra.errors import UserError


# Ranges of the numbers (msgspec Meta: checked on every decode, and on CLI overrides by
# `with_overrides`), so NaN, infinities and absurd sizes are refused with one line.
Probability = Annotated[float, Meta(ge=0.0, le=1.0)]
Millis = Annotated[float, Meta(ge=0.0, le=86_400_000.0)]
SimSeconds = Annotated[float, Meta(ge=0.0, le=7 * 86_400.0)]
Rps = Annotated[float, Meta(gt=0.0, le=1e9)]
Tpm = Annotated[float, Meta(gt=0.0, le=1e12)]
Rpm = Annotated[float, Meta(ge=1.0, le=1e9)]


class Latency(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """How long a reply takes, from the request's arrival (with `slots`, from the slot's
    start). `median_ms == 0` means reply at once, without any sleep."""

    distribution: Literal["lognormal", "uniform"] = "lognormal"
    median_ms: Millis = 0.0
    # lognormal: one sigma multiplies the median by (1 + spread/median);
    # uniform: the delay is drawn from [median - spread, median + spread].
    spread_ms: Millis = 0.0
    max_ms: Millis = 60_000.0  # a lognormal tail must not turn into an accidental hang


class Faults(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Probabilities (per accepted request) of each injected fault; they must sum to <= 1."""

    server_error: Probability = 0.0  # 500, 502 or 503 with an OpenAI-style error body
    hang: Probability = 0.0  # no reply for `hang_s` (or until the client goes away)
    malformed: Probability = 0.0  # 200 with a body that is not JSON
    empty_content: Probability = 0.0  # 200, one choice whose message has no content
    empty_choices: Probability = 0.0  # 200 with "choices": []
    context_length: Probability = 0.0  # 400, code context_length_exceeded
    hang_s: SimSeconds = 3600.0  # far longer than any sane client timeout

    def total(self) -> float:
        return (
            self.server_error
            + self.hang
            + self.malformed
            + self.empty_content
            + self.empty_choices
            + self.context_length
        )


RETRY_HEADERS = ("retry-after", "retry-after-ms", "x-ratelimit-reset-requests", "x-ratelimit-reset-tokens")
# How the headers of every reply tell a limited route's state: "openai" (OpenAI and Azure:
# x-ratelimit-limit/remaining/reset-*), "litellm-key" (LiteLLM's key limits:
# x-ratelimit-api_key-limit/remaining-*, no reset; a deployment's limit as litellm-model),
# "litellm-model" (LiteLLM's model limits: x-ratelimit-limit/remaining-*, no reset).
HeaderStyle = Literal["openai", "litellm-key", "litellm-model"]
HEADER_STYLES: tuple[str, ...] = ("openai", "litellm-key", "litellm-model")


class Limits(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Rate limits in requests per second over a sliding 1 s window, and in tokens per
    minute evaluated as `tpm / 6` over a sliding 10 s window, as Azure does (None = unlimited).

    A request must pass both its key's and (on the Azure route) its deployment's limits.
    Overrides name a key by its fingerprint (`key_fingerprint(key)`), never by the key,
    and a deployment by its name.
    """

    key_rps: Rps | None = None
    deployment_rps: Rps | None = None
    # Requests per minute per key, over a sliding 60 s window (as LiteLLM's rpm_limit and
    # OpenAI's RPM count): a burst may spend the minute at once. Replaces key_rps.
    key_rpm: Rpm | None = None
    key_overrides: dict[str, Rps] = {}
    deployment_overrides: dict[str, Rps] = {}
    key_tpm: Tpm | None = None
    deployment_tpm: Tpm | None = None
    retry_after_s: SimSeconds = 1.0
    retry_after_http_date: bool = False  # send Retry-After as an HTTP date instead
    # Which headers a 429 carries (each says "wait retry_after_s"): any of RETRY_HEADERS.
    retry_headers: tuple[str, ...] = ("retry-after",)
    # x-ratelimit-limit/remaining/reset-requests (and -tokens) on every reply of a limited
    # route, as OpenAI and Azure send them.
    rate_headers: bool = True
    header_style: HeaderStyle = "openai"


class Storm(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """A 429 storm: for the first `duration_s` after start (or /stats/reset), a `fraction`
    of the requests (1.0 = all) are refused with 429, whatever the limits say."""

    duration_s: SimSeconds = 0.0
    fraction: Probability = 1.0
    # Start the storm at the first chat request instead: a test then sees it whatever
    # its client's start-up costs on a busy machine.
    from_first_request: bool = False


class Routes(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Which routes work. Keys are named by fingerprint (`key_fingerprint(key)`), never
    by the key itself."""

    # Only these keys are valid (401 for any other); None accepts every key.
    accept_keys: list[str] | None = None
    # A route that starts refusing after N accepted requests (a revoked key: 401; a
    # deleted deployment: 404): key fingerprint or deployment name -> N.
    refuse_after: dict[str, Annotated[int, Meta(ge=0)]] = {}
    # Real model names served as simulated ones: name -> skill in [0, 1].
    models: dict[str, Probability] = {}


class SimConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=0, le=65535)] = 0  # 0 = pick a free port; the listening line says which
    seed: int = 0
    latency: Latency = Latency()
    faults: Faults = Faults()
    limits: Limits = Limits()
    storm: Storm = Storm()
    routes: Routes = Routes()
    record_requests: Annotated[int, Meta(ge=0, le=1_000_000)] = 0  # keep the last N request bodies for GET /requests
    # Answer at most this many requests at a time (0: any number), the others queue in
    # arrival order, as a local model server with N slots does. Like such a server, it
    # goes on computing a request whose client gave up: its slot stays taken.
    slots: Annotated[int, Meta(ge=0, le=1_000_000)] = 0
    # Who writes the assistant message: "suites" (the registered suites' simulated
    # policies, with a trivial fallback), "echo" (always the trivial reply), or an import
    # path "package.module:function" with the signature of `replies.Responder`.
    responder: str = "suites"


def validate(config: SimConfig) -> SimConfig:
    """Reject values that would make the simulator lie about what it was asked to do."""
    problems: list[str] = []
    f = config.faults
    for name in ("server_error", "hang", "malformed", "empty_content", "empty_choices", "context_length"):
        p = getattr(f, name)
        if not 0.0 <= p <= 1.0:
            problems.append(f"faults.{name} must lie in [0, 1], got {p}")
    if f.total() > 1.0 + 1e-9:
        problems.append(f"fault probabilities sum to {f.total():.3f} > 1")
    lim = config.limits
    rates = {"limits.key_rps": lim.key_rps, "limits.deployment_rps": lim.deployment_rps}
    rates |= {f"limits.key_overrides[{k}]": v for k, v in lim.key_overrides.items()}
    rates |= {f"limits.deployment_overrides[{k}]": v for k, v in lim.deployment_overrides.items()}
    rates |= {"limits.key_tpm": lim.key_tpm, "limits.deployment_tpm": lim.deployment_tpm}
    for name, rps in rates.items():
        if rps is not None and rps <= 0:
            problems.append(f"{name} must be > 0, got {rps}")
    if lim.retry_after_s < 0:
        problems.append(f"limits.retry_after_s must be >= 0, got {lim.retry_after_s}")
    for h in lim.retry_headers:
        if h not in RETRY_HEADERS:
            problems.append(f"limits.retry_headers: unknown header {h!r} (known: {', '.join(RETRY_HEADERS)})")
    if lim.header_style not in HEADER_STYLES:
        problems.append(f"limits.header_style must be one of {', '.join(HEADER_STYLES)}, got {lim.header_style!r}")
    if lim.key_rpm is not None and lim.key_rpm < 1:
        problems.append(f"limits.key_rpm must be >= 1, got {lim.key_rpm}")
    for name, skill in config.routes.models.items():
        if not 0.0 <= skill <= 1.0:
            problems.append(f"routes.models[{name}] must lie in [0, 1], got {skill}")
    for name, n in config.routes.refuse_after.items():
        if n < 0:
            problems.append(f"routes.refuse_after[{name}] must be >= 0, got {n}")
    if not 0.0 <= config.storm.fraction <= 1.0:
        problems.append(f"storm.fraction must lie in [0, 1], got {config.storm.fraction}")
    if config.latency.distribution not in ("lognormal", "uniform"):
        problems.append(f"latency.distribution must be lognormal or uniform, got {config.latency.distribution!r}")
    if config.latency.median_ms < 0 or config.latency.spread_ms < 0:
        problems.append("latency.median_ms and latency.spread_ms must be >= 0")
    if not 0 <= config.port <= 65535:
        problems.append(f"port must lie in [0, 65535], got {config.port}")
    if problems:
        raise UserError("; ".join(problems))
    return config


def load_toml(path: Path) -> SimConfig:
    """A SimConfig from a TOML file; the keys are SimConfig's fields (sections for the
    nested ones: `[latency]`, `[faults]`, `[limits]`, `[storm]`)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read sim config {path}: {exc.strerror}") from None
    try:
        return validate(msgspec.toml.decode(data, type=SimConfig))
    except msgspec.ValidationError as exc:
        raise UserError(f"invalid sim config {path}: {exc}") from None
    except msgspec.DecodeError as exc:
        raise UserError(f"malformed sim config {path}: {exc}") from None


def to_json(config: SimConfig) -> str:
    return msgspec.json.encode(config).decode()


def from_json(text: str) -> SimConfig:
    try:
        return validate(msgspec.json.decode(text, type=SimConfig))
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise UserError(f"invalid sim config: {exc}") from None


# Command-line option -> (section, field) of SimConfig; None as a section means top level.
OVERRIDABLE: dict[str, tuple[str | None, str]] = {
    "host": (None, "host"),
    "port": (None, "port"),
    "seed": (None, "seed"),
    "responder": (None, "responder"),
    "slots": (None, "slots"),
    "latency_distribution": ("latency", "distribution"),
    "latency_ms": ("latency", "median_ms"),
    "latency_spread_ms": ("latency", "spread_ms"),
    "key_rps": ("limits", "key_rps"),
    "deployment_rps": ("limits", "deployment_rps"),
    "key_rpm": ("limits", "key_rpm"),
    "header_style": ("limits", "header_style"),
    "retry_after": ("limits", "retry_after_s"),
    "key_tpm": ("limits", "key_tpm"),
    "deployment_tpm": ("limits", "deployment_tpm"),
    "retry_after_http_date": ("limits", "retry_after_http_date"),
    "storm_seconds": ("storm", "duration_s"),
    "storm_fraction": ("storm", "fraction"),
    "fault_5xx": ("faults", "server_error"),
    "fault_hang": ("faults", "hang"),
    "fault_malformed": ("faults", "malformed"),
    "fault_empty_content": ("faults", "empty_content"),
    "fault_empty_choices": ("faults", "empty_choices"),
    "fault_context_length": ("faults", "context_length"),
    "hang_seconds": ("faults", "hang_s"),
}


def with_overrides(config: SimConfig, **options: object) -> SimConfig:
    """`config` with every option that is not None replacing its field (CLI over file)."""
    top: dict[str, object] = {}
    sections: dict[str, dict[str, object]] = {}
    for option, value in options.items():
        if value is None:
            continue
        section, field = OVERRIDABLE[option]
        if section is None:
            top[field] = value
        else:
            sections.setdefault(section, {})[field] = value
    for section, fields in sections.items():
        top[section] = msgspec.structs.replace(getattr(config, section), **fields)
    merged = msgspec.structs.replace(config, **top)
    try:  # a round trip applies the field ranges to the option values too
        merged = msgspec.convert(msgspec.to_builtins(merged), SimConfig)
    except msgspec.ValidationError as exc:
        path = str(exc).rpartition(" - at `$.")[2].rstrip("`")
        option = next((o for o, (sec, f) in OVERRIDABLE.items()
                       if (f"{sec}.{f}" if sec else f) == path), path)
        raise UserError(f"invalid --{option.replace('_', '-')}: {str(exc).split(' - at ')[0]}") from None
    return validate(merged)


__all__ = ["Faults", "from_json", "HEADER_STYLES", "HeaderStyle", "Latency", "Limits",
           "load_toml", "Millis", "OVERRIDABLE", "Probability", "RETRY_HEADERS", "Routes", "Rpm",
           "Rps", "SimConfig", "SimSeconds", "Storm", "to_json", "Tpm", "validate",
           "with_overrides"]
