"""The one config model: providers, models, run defaults (TOML, decoded with msgspec).

Secrets never live here: a provider names the *environment variables* that hold its API
keys; they are read only when a shard opens its HTTP client.
"""

from __future__ import annotations

import hashlib
import os
import tomllib
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from ultra import defaults as D
from ultra.errors import ConfigError, UserError
from ultra.providers import KINDS, provider
from ultra.sim.config import SimConfig

Strategy = Literal["per-key", "per-deployment", "single"]
STRATEGIES: tuple[str, ...] = ("per-key", "per-deployment", "single")

# Every number of a config (and of the command line, which checks its flags against the
# same types): a range, so no value can overflow, hang or allocate without bound later.
Rate = Annotated[float, Meta(ge=0.0, le=1.0)]
Workers = Annotated[int, Meta(ge=1, le=10_000)]
Qps = Annotated[float, Meta(gt=0.0, le=1_000_000.0)]
Tpm = Annotated[float, Meta(gt=0.0, le=1e12)]
Seconds = Annotated[float, Meta(gt=0.0, le=7 * 86_400.0)]
Retries = Annotated[int, Meta(ge=0, le=100)]
Keys = Annotated[int, Meta(ge=1, le=1_000)]
KeyIndex = Annotated[int, Meta(ge=0, le=999)]
Tokens = Annotated[int, Meta(ge=1, le=10_000_000)]
Temperature = Annotated[float, Meta(ge=0.0, le=2.0)]
Price = Annotated[float, Meta(ge=0.0, le=1e6)]
BrokenAfter = Annotated[int, Meta(ge=1, le=1_000_000)]
NumInstances = Annotated[int, Meta(ge=1, le=100_000)]
MaxTurns = Annotated[int, Meta(ge=1, le=1_000)]
Processes = Annotated[int, Meta(ge=1, le=1_024)]
ParamsB = Annotated[float, Meta(gt=0.0, le=1_000_000.0)]


def checked(value: object, kind: object, what: str) -> Any:
    """`value` if it lies in the range of `kind` (one of the types above), else UserError."""
    try:
        return msgspec.convert(value, kind)
    except msgspec.ValidationError as exc:
        raise UserError(f"invalid {what} {value!r}: {str(exc).split(' - at ')[0].lower()}") from None


class ProviderConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """An API provider.

    kind `openai`: OpenAI-compatible; one route per key (`api_key_envs`), optionally one
    base URL per key (`base_urls`). kind `azure`: `endpoint`, `api_version`, `api_key_env`;
    routes are the model's deployments. kind `sim`: the bundled loopback simulator, speaking
    `shape` (`openai` with `keys` virtual keys, or `azure`); ultra starts it unless `url`
    points at a running one.
    """

    kind: Literal[KINDS]  # type: ignore[valid-type]  # a module of ultra.providers each
    base_url: str | None = None
    api_key_envs: list[str] = []
    base_urls: list[str] | None = None
    endpoint: str | None = None
    api_version: str = D.AZURE_API_VERSION
    api_key_env: str | None = None
    shape: Literal["openai", "azure"] = "openai"
    keys: Keys = 1
    url: str | None = None
    route_prefix: str | None = None  # per-key route names: {route_prefix}-key{i}
    # A budget per API key shared by every model on that key (a gateway that limits keys,
    # not models); each shard keeps its own `qps` and `tpm` within it.
    key_qps: Qps | None = None
    key_tpm: Tpm | None = None  # tokens per minute per key, shared the same way


class ModelPreset(msgspec.Struct, kw_only=True, frozen=True):
    strategy: Strategy
    workers: int
    qps: float


# The four model classes of DESIGN.md and their shipped limits.
MODEL_CLASSES: dict[str, ModelPreset] = {
    "open-multikey": ModelPreset(strategy="per-key", workers=2, qps=10),
    "open-azure": ModelPreset(strategy="per-deployment", workers=50, qps=100),
    "closed-multikey": ModelPreset(strategy="single", workers=5, qps=10),
    "closed-azure": ModelPreset(strategy="single", workers=50, qps=100),
}


class ModelConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    provider: str
    model_class: str | None = msgspec.field(default=None, name="class")
    strategy: Strategy | None = None
    workers: Workers | None = None
    qps: Qps | None = None
    request_timeout: Seconds = D.REQUEST_TIMEOUT_S
    test_timeout: Seconds = D.TEST_TIMEOUT_S  # retries included
    max_retries: Retries = D.MAX_RETRIES  # 429 waits are bounded by time
    deployments: list[str] | None = None  # azure: defaults to [name, name-2, name-3]
    api_model: str | None = None  # the name sent in the request body; default: the model name
    family: str | None = None  # for `ultra report scale`: models of one family by size
    params_b: ParamsB | None = None  # parameters, in billions
    # single-route model on a multi-key provider: which key (default: a stable hash of the
    # model name spreads such models over the keys)
    key: KeyIndex | None = None
    tpm: Tpm | None = None  # tokens per minute per shard (prompt + completion)
    # Request options, sent as given. Reasoning models (o-series, gpt-5) take
    # `max_completion_tokens` and refuse `temperature`; others take `max_tokens`.
    max_tokens: Tokens | None = None
    max_completion_tokens: Tokens | None = None
    temperature: Temperature | None = None
    extra_body: dict[str, Any] = {}  # merged into every request body as it is
    input_price: Price | None = None  # per million prompt tokens, for the cost at the end of a run
    output_price: Price | None = None  # per million completion tokens (reasoning included)
    broken_after: BrokenAfter = D.BROKEN_AFTER  # consecutive non-retryable answers that mark a route broken


class RunConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    suite: str = D.SUITE
    tasks: str | None = None  # a team's own task library (JSON), relative to the config file
    models: list[str] | None = None  # default: every configured model
    prompt_types: list[str] = msgspec.field(default_factory=lambda: ["baseline"])
    difficulties: list[str] = msgspec.field(default_factory=lambda: ["easy"])
    task_types: list[str] | None = None  # default: all of the suite's
    tool_success_rates: list[Rate] = msgspec.field(default_factory=lambda: [0.8])
    num_instances: NumInstances = 1
    max_turns: MaxTurns = D.MAX_TURNS
    # whose transcripts the log stores (docs/transcripts.md); `ultra run --transcripts`
    transcripts: Literal["all", "failures", "none"] = D.TRANSCRIPTS


class Config(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    providers: dict[str, ProviderConfig] = {}
    models: dict[str, ModelConfig] = {}
    run: RunConfig = msgspec.field(default_factory=RunConfig)
    sim: SimConfig = msgspec.field(default_factory=SimConfig)  # the bundled simulator, when started


class RequestOptions(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    """What a model's requests carry besides messages and tools."""

    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    extra_body: dict[str, Any] = {}

    def body_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        for name in ("max_tokens", "max_completion_tokens", "temperature"):
            value = getattr(self, name)
            if value is not None:
                fields[name] = value
        return {**fields, **self.extra_body}


class EffectiveModel(msgspec.Struct, kw_only=True, frozen=True):
    """A model with its class preset and overrides resolved."""

    name: str
    provider: str
    strategy: Strategy
    workers: int
    qps: float
    request_timeout: float
    test_timeout: float
    max_retries: int
    deployments: list[str]
    api_model: str
    family: str | None = None
    params_b: float | None = None
    key: int | None
    tpm: float | None
    options: RequestOptions
    input_price: float | None
    output_price: float | None
    broken_after: int


BUNDLED = ("demo", "presets")


def _bundled_path(name: str) -> Path:
    return Path(str(resources.files("ultra") / "configs" / f"{name}.toml"))


def load_config(path: Path | str | None) -> tuple[Config, Path]:
    """Read and validate a config; `None` means the bundled demo. Returns it and its path."""
    if path is None or str(path) in BUNDLED:
        source = _bundled_path(str(path or "demo"))
    else:
        source = Path(path)
    try:
        raw = source.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config {source}: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"malformed config {source}: {exc}") from None
    try:
        config = msgspec.convert(data, Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid config {source}: {_where(data, exc)}") from None
    problems = validate(config)
    if problems:
        raise ConfigError("\n".join(problems))
    return config, source


def _where(data: object, exc: msgspec.ValidationError) -> str:
    """msgspec's message, naming the provider or model (its path shows `[...]` for them)."""
    sections = {"providers": ProviderConfig, "models": ModelConfig}
    if isinstance(data, dict):
        for section, kind in sections.items():
            entries = data.get(section)
            for name, entry in (entries.items() if isinstance(entries, dict) else ()):
                try:
                    msgspec.convert(entry, kind)
                except msgspec.ValidationError as inner:
                    return f"{section.rstrip('s')} {name!r}: {str(inner).replace('`$.', '`')}"
    return str(exc)


def digest(config: Config) -> str:
    return hashlib.sha256(msgspec.json.encode(config)).hexdigest()[:16]


def effective_model(config: Config, name: str) -> EffectiveModel:
    m = config.models[name]
    preset = MODEL_CLASSES.get(m.model_class or "")
    strategy = m.strategy or (preset.strategy if preset else "single")
    return EffectiveModel(
        name=name,
        provider=m.provider,
        strategy=strategy,
        workers=m.workers if m.workers is not None else (preset.workers if preset else 5),
        qps=m.qps if m.qps is not None else (preset.qps if preset else 10.0),
        request_timeout=m.request_timeout,
        test_timeout=m.test_timeout,
        max_retries=m.max_retries,
        deployments=m.deployments or [name, f"{name}-2", f"{name}-3"],
        api_model=m.api_model or name,
        family=m.family,
        params_b=m.params_b,
        key=m.key,
        tpm=m.tpm,
        options=RequestOptions(max_tokens=m.max_tokens, max_completion_tokens=m.max_completion_tokens,
                               temperature=m.temperature, extra_body=m.extra_body),
        input_price=m.input_price,
        output_price=m.output_price,
        broken_after=m.broken_after,
    )


def validate(config: Config) -> list[str]:
    """Every problem of a config, one line each (the environment is checked per run)."""
    problems: list[str] = []
    from ultra.events import NAME_MAX

    # Names enter events, which cap them: a route adds a suffix (`-key12`) to its model's.
    for kind, names, cap in (("provider", config.providers, NAME_MAX),
                             ("model", config.models, NAME_MAX - 16)):
        problems += [f"{kind} name {n[:40]!r}... is {len(n)} characters (at most {cap})"
                     for n in names if len(n) > cap]
    problems += [f"model {mname[:40]!r}: deployment name {d[:40]!r}... is {len(d)} characters"
                 f" (at most {NAME_MAX})" for mname, m in config.models.items()
                 for d in m.deployments or () if len(d) > NAME_MAX]
    for pname, p in config.providers.items():
        problems += provider(p.kind).problems(pname, p)
    for mname, m in config.models.items():
        if m.provider not in config.providers:
            problems.append(f"model {mname!r}: unknown provider {m.provider!r}")
        if m.model_class is not None and m.model_class not in MODEL_CLASSES:
            problems.append(
                f"model {mname!r}: unknown class {m.model_class!r} "
                f"(known: {', '.join(MODEL_CLASSES)})"
            )
        if m.max_tokens is not None and m.max_completion_tokens is not None:
            problems.append(f"model {mname!r}: set max_tokens or max_completion_tokens, not both")
        if m.key is not None and m.provider in config.providers:
            p = config.providers[m.provider]
            n = key_count(p)
            if not 0 <= m.key < n:
                problems.append(f"model {mname!r}: key {m.key} is not a key of provider "
                                f"{m.provider!r} (0..{n - 1})")
        if m.provider not in config.providers:
            continue
        eff = effective_model(config, mname)
        shape = provider_shape(config.providers[m.provider])
        if eff.strategy == "per-key" and shape != "openai":
            problems.append(f"model {mname!r}: strategy per-key needs an openai-shaped provider")
        if eff.strategy == "per-deployment" and shape != "azure":
            problems.append(f"model {mname!r}: strategy per-deployment needs an azure-shaped provider")
        # A deployment is one path segment of the URL: '.' and '..' would walk the path.
        for dep in m.deployments or ():
            if dep.strip() in ("", ".", ".."):
                problems.append(f"model {mname!r}: deployment name {dep!r} is not a path segment")
    return problems


def provider_shape(p: ProviderConfig) -> str:
    """`openai` or `azure`: how the provider's requests look."""
    return provider(p.kind).shape(p)


def key_count(p: ProviderConfig) -> int:
    """The API keys (routes for per-key models) of an openai-shaped provider (1 otherwise)."""
    return provider(p.kind).keys(p)


def masked(config: Config) -> dict:
    """The effective config as plain data, with every key variable shown as set/unset only.
    Each provider shows only what applies to its kind and shape: the true number of keys
    for an openai-shaped one, the deployments its models use for an azure-shaped one, and
    under `not_applied` the fields it sets that its shape ignores."""
    from ultra.collect.plan import route_names  # here: plan builds on this module

    out = msgspec.to_builtins(config)
    models: dict[str, dict] = {}
    for mname in config.models:
        eff = effective_model(config, mname)
        shown = msgspec.to_builtins(eff)
        # Only the routes a run really uses (not every deployment a default could name).
        del shown["deployments"], shown["key"]
        shown["routes"] = route_names(config, eff)
        models[mname] = shown
    out["models"] = models
    for pname, p in config.providers.items():
        shape = provider_shape(p)
        data, default = out["providers"][pname], msgspec.to_builtins(ProviderConfig(kind=p.kind))
        fields = provider(p.kind).fields(shape)
        shown = {"kind": p.kind, "shape": shape}
        shown.update({f: data[f] for f in fields if data[f] is not None})
        if shape == "openai":
            shown["keys"] = key_count(p)
        else:
            shown["deployments"] = list(dict.fromkeys(
                r["deployment"] for m in models.values() if m["provider"] == pname
                for r in m["routes"]))
        ignored = [f for f in data if f not in shown and f != "shape" and data[f] != default[f]]
        if ignored:
            shown["not_applied"] = ignored
        envs = provider(p.kind).key_envs(p)
        if envs:
            shown["secrets"] = {env: "<set>" if os.environ.get(env) else "<unset>" for env in envs}
        out["providers"][pname] = shown
    return out


__all__ = ["BrokenAfter", "BUNDLED", "checked", "Config", "digest", "effective_model",
           "EffectiveModel", "key_count", "KeyIndex", "Keys", "load_config", "masked",
           "MaxTurns", "MODEL_CLASSES", "ModelConfig", "ModelPreset", "NumInstances", "ParamsB",
           "Price", "Processes", "provider_shape", "ProviderConfig", "Qps", "Rate",
           "RequestOptions", "Retries", "RunConfig", "Seconds", "STRATEGIES", "Strategy",
           "Temperature", "Tokens", "Tpm", "validate", "Workers"]
