"""What the simulator answers: routes, keys and deployments, limits and their headers,
faults, accounting, and the responder's reply; the HTTP around it is ultra/sim/server.py."""

from __future__ import annotations

import hashlib
import math
import random
import time
from collections import deque
from typing import Any
from urllib.parse import unquote

import h11
import msgspec
import trio

from ultra.function_schema import tools_problem
from ultra.naming import canonical_model
from ultra.sim.accounting import RouteStats, SlidingWindow, Stats, TokenWindow
from ultra.sim.config import SimConfig, validate
from ultra.sim.models import is_reasoning_model
from ultra.sim.refusals import (AZURE_BAD_KEY, CONTEXT_LENGTH, MAX_TOKENS_UNSUPPORTED, NO_API_VERSION,
                                 NO_KEY, RATE_LIMITED, SERVER_ERRORS, masked_key, rate_headers,
                                 retry_headers)
from ultra.sim.replies import (
    MALFORMED_BODY, Responder, completion_body, empty_choices_body, error_body, model_skill,
    prompt_tokens, responder_failure,
)

__all__ = ["AZURE_PREFIX", "AZURE_SUFFIX", "ChatRequest", "HANG", "LISTENING_PREFIX", "SIMULATED_HEADER", "Simulator",
           "key_fingerprint"]

LISTENING_PREFIX = "ultra-sim listening on "


def key_fingerprint(key: str) -> str:
    """How /stats names an API key: enough to tell keys apart, useless to an attacker."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


class ChatRequest(msgspec.Struct):
    model: str = ""
    messages: list[dict[str, Any]] = []
    tools: msgspec.Raw = msgspec.Raw(b"")  # decoded and checked once per distinct list: Simulator._tools
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None


SIMULATED_HEADER = b"x-ultra-simulated"  # on every reply: what ultra records as `simulated`


_decode_chat = msgspec.json.Decoder(ChatRequest).decode
_decode_tools = msgspec.json.Decoder(list[dict[str, Any]] | None).decode
TOOL_LISTS_KEPT = 512  # distinct tool lists remembered, decoded and checked

ToolsSeen = tuple[list[dict[str, Any]] | None, tuple[str, str] | None]  # (tools, problem)

AZURE_PREFIX = b"/openai/deployments/"
AZURE_SUFFIX = b"/chat/completions"
HANG = -1  # pseudo status: do not answer at all
_FAULT_KINDS = ("server_error", "hang", "malformed", "empty_content", "empty_choices", "context_length")

class Simulator:
    """The state of one server: config, RNG, limits and accounting. Lives in one trio run."""

    def __init__(self, config: SimConfig, responder: Responder) -> None:
        self.config = validate(config)
        self.responder = responder
        self.rng = random.Random(config.seed)
        now = trio.current_time()
        self.stats = Stats(now)
        self.storm_until = now + config.storm.duration_s
        self._storm_pending = config.storm.from_first_request
        self._key_windows: dict[str, SlidingWindow | None] = {}
        self._deployment_windows: dict[str, SlidingWindow | None] = {}
        self._key_tokens: dict[str, TokenWindow | None] = {}
        self._deployment_tokens: dict[str, TokenWindow | None] = {}
        self._served: dict[str, int] = {}  # accepted requests per route, for refuse_after
        self.recorded: deque[Any] = deque(maxlen=max(1, config.record_requests))
        self._fingerprints: dict[str, str] = {}
        self._skills: dict[str, float | None] = {}
        self._next_id = 0
        # A benchmark offers the same few tool lists on every turn: decoding and checking
        # them once each, not per request, saves a quarter of the simulator's CPU per request.
        self._tools_seen: dict[bytes, ToolsSeen] = {}
        # Cumulative fault probabilities, so one uniform draw picks at most one fault.
        cumulative, table = 0.0, []
        for kind in _FAULT_KINDS:
            p = getattr(config.faults, kind)
            if p > 0:
                cumulative += p
                table.append((cumulative, kind))
        self._fault_table: list[tuple[float, str]] = table
        self._latency_on = config.latency.median_ms > 0
        self._slots = trio.Semaphore(config.slots) if config.slots else None  # FIFO

    # -- lookups, cached: the same few keys and models arrive thousands of times ----------

    def _fingerprint(self, key: str) -> str:
        fp = self._fingerprints.get(key)
        if fp is None:
            if len(self._fingerprints) > 10_000:
                self._fingerprints.clear()
            fp = self._fingerprints[key] = key_fingerprint(key)
        return fp

    def _skill(self, model: str) -> float | None:
        try:
            return self._skills[model]
        except KeyError:
            if len(self._skills) > 10_000:
                self._skills.clear()
            skill = model_skill(model)
            if skill is None:
                extra = self.config.routes.models
                skill = extra.get(model, extra.get(canonical_model(model)))
            self._skills[model] = skill
            return skill

    def _window(self, table: dict[str, SlidingWindow | None], name: str, default: float | None, overrides: dict[str, float],
                rpm: float | None = None) -> SlidingWindow | None:
        try:
            return table[name]
        except KeyError:
            rps = overrides.get(name, None if rpm is not None else default)
            if rps is not None:
                window = SlidingWindow(rps)
            else:
                window = SlidingWindow.per_minute(rpm) if rpm is not None else None
            table[name] = window
            return window

    @staticmethod
    def _tokens(table: dict[str, TokenWindow | None], name: str | None, tpm: float | None) -> TokenWindow | None:
        if name is None:
            return None
        try:
            return table[name]
        except KeyError:
            window = table[name] = TokenWindow(tpm) if tpm is not None else None
            return window

    def reset(self) -> None:
        now = trio.current_time()
        self.stats.reset(now)
        self.storm_until = now + self.config.storm.duration_s
        self._storm_pending = self.config.storm.from_first_request
        self._key_windows.clear()
        self._deployment_windows.clear()
        self._key_tokens.clear()
        self._deployment_tokens.clear()
        self._served.clear()
        self.recorded.clear()

    # -- the chat routes -----------------------------------------------------------------

    def _bad_key(self, counters: list[RouteStats], key: str, deployment: str | None) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        if deployment is not None:
            return self._reject(counters, 401, AZURE_BAD_KEY)
        msg = (f"Incorrect API key provided: {masked_key(key)}. You can find your API key at "
               "https://platform.openai.com/account/api-keys.")
        return self._reject(counters, 401, error_body(msg, "invalid_request_error", "invalid_api_key"))

    def _tools(self, raw: msgspec.Raw) -> ToolsSeen:
        """The request's tools, decoded, and what is wrong with their schemas if anything
        (raises msgspec errors when they are not a list of objects)."""
        key = bytes(raw)
        seen = self._tools_seen.get(key)
        if seen is None:
            tools = _decode_tools(key)
            seen = (tools, tools_problem(tools) if tools else None)
            if len(self._tools_seen) >= TOOL_LISTS_KEPT:
                self._tools_seen.clear()
            self._tools_seen[key] = seen
        return seen

    async def chat(
        self, req: h11.Request, path: bytes, query: bytes, body: bytes, counters: list[RouteStats]
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        """Answer one chat request: (status, body, extra headers); `HANG` means no answer.

        Appends the counters it charged to `counters`, so the caller can take the request
        out of flight once the reply is sent.
        """
        stats = self.stats
        deployment: str | None = None
        if path[:20] == AZURE_PREFIX:
            deployment = unquote(path[20 : -len(AZURE_SUFFIX)].decode("latin-1"))
        key: str | None = None
        for name, value in req.headers:
            if name == b"authorization":
                if value[:7].lower() == b"bearer ":
                    key = value[7:].strip().decode("latin-1") or None
            elif name == b"api-key" and deployment is not None:
                key = value.strip().decode("latin-1") or None
        try:
            chat = _decode_chat(body)
            seen = self._tools(chat.tools) if chat.tools else (None, None)
        except (msgspec.DecodeError, msgspec.ValidationError):
            chat = seen = None
        model = deployment if deployment is not None else (chat.model if chat is not None else "")
        skill = self._skill(model) if model else None

        now = trio.current_time()
        stats.total.arrive(now)
        counters.append(stats.total)
        fp = None
        if key is not None:
            fp = self._fingerprint(key)
            c = stats.keys.get(fp)
            if c is None:
                c = stats.keys[fp] = RouteStats()
            c.arrive(now)
            counters.append(c)
        if skill is not None:
            if deployment is not None:
                c = stats.deployments.get(deployment)
                if c is None:
                    c = stats.deployments[deployment] = RouteStats()
                c.arrive(now)
                counters.append(c)
            canonical = canonical_model(model)
            c = stats.models.get(canonical)
            if c is None:
                c = stats.models[canonical] = RouteStats()
            c.arrive(now)
            counters.append(c)

        # -- refusals before admission -----------------------------------------------------
        if chat is None or seen is None:
            return self._reject(counters, 400, error_body("The body is not a valid chat request.", "invalid_request_error"))
        tools, bad_tools = seen
        if self.config.record_requests:
            self.recorded.append({"path": path.decode("latin-1"), "body": msgspec.json.decode(body)})
        if key is None:
            return self._reject(counters, 401, NO_KEY)
        routes = self.config.routes
        if routes.accept_keys is not None and fp not in routes.accept_keys:
            return self._bad_key(counters, key, deployment)
        if deployment is not None and b"api-version=" not in query:
            return self._reject(counters, 400, NO_API_VERSION)
        if bad_tools is not None:  # one invalid tool schema refuses the whole request, as the API does
            message, param = bad_tools
            return self._reject(counters, 400, error_body(
                message, "invalid_request_error", "invalid_function_parameters", param))
        if skill is None:
            if deployment is not None:
                msg = f"The API deployment {deployment} does not exist."
                return self._reject(counters, 404, error_body(msg, "invalid_request_error", "DeploymentNotFound"))
            msg = f"The model {model} does not exist or you do not have access to it."
            return self._reject(counters, 404, error_body(msg, "invalid_request_error", "model_not_found"))
        if routes.refuse_after:  # a key revoked, a deployment deleted, after N requests
            assert fp is not None
            if self._served.get(fp, 0) >= routes.refuse_after.get(fp, 1 << 62):
                return self._bad_key(counters, key, deployment)
            if deployment is not None and self._served.get(deployment, 0) >= routes.refuse_after.get(deployment, 1 << 62):
                msg = f"The API deployment {deployment} does not exist."
                return self._reject(counters, 404, error_body(msg, "invalid_request_error", "DeploymentNotFound"))
        if is_reasoning_model(model):  # what o-series and gpt-5 models refuse
            if chat.max_tokens is not None:
                return self._reject(counters, 400, MAX_TOKENS_UNSUPPORTED)
            if chat.temperature is not None and chat.temperature != 1:
                msg = (f"Unsupported value: 'temperature' does not support {chat.temperature:g} with this model. "
                       "Only the default (1) value is supported.")
                return self._reject(counters, 400, error_body(msg, "invalid_request_error", "unsupported_value", "temperature"))

        # -- storm, then rate limits -------------------------------------------------------
        if self._storm_pending:
            self._storm_pending = False
            self.storm_until = now + self.config.storm.duration_s
        if now < self.storm_until:
            fraction = self.config.storm.fraction
            if fraction >= 1.0 or self.rng.random() < fraction:
                return self._rate_limited(counters)
        limits = self.config.limits
        key_window = self._window(self._key_windows, fp, limits.key_rps, limits.key_overrides, limits.key_rpm)  # type: ignore[arg-type]
        dep_window = (
            self._window(self._deployment_windows, deployment, limits.deployment_rps, limits.deployment_overrides)
            if deployment is not None
            else None
        )
        key_tokens = self._tokens(self._key_tokens, fp, limits.key_tpm)
        dep_tokens = self._tokens(self._deployment_tokens, deployment, limits.deployment_tpm)
        prompt_toks = prompt_tokens(body)
        if ((key_window is not None and key_window.is_full(now)) or (dep_window is not None and dep_window.is_full(now))
                or (key_tokens is not None and key_tokens.is_full(now, prompt_toks))
                or (dep_tokens is not None and dep_tokens.is_full(now, prompt_toks))):
            return self._rate_limited(counters)
        if key_window is not None:
            key_window.take(now)
        if dep_window is not None:
            dep_window.take(now)
        token_windows = [w for w in (key_tokens, dep_tokens) if w is not None]
        for w in token_windows:
            w.take(now, prompt_toks)
        for c in counters:
            c.accepted += 1
            c.charge(now, prompt_toks)
        if routes.refuse_after:
            assert fp is not None
            self._served[fp] = self._served.get(fp, 0) + 1
            if deployment is not None:
                self._served[deployment] = self._served.get(deployment, 0) + 1
        headers = [(SIMULATED_HEADER, b"true")]
        limited = limits.rate_headers and (key_window or dep_window or key_tokens or dep_tokens)

        # -- faults, latency, the reply ----------------------------------------------------
        fault = None
        if self._fault_table:
            u = self.rng.random()
            for threshold, kind in self._fault_table:
                if u < threshold:
                    fault = kind
                    break
            if fault is not None:
                for c in counters:
                    c.faults += 1
        if self._latency_on and fault != "hang":
            if self._slots is None:  # from the request's arrival, as a client measures it
                await trio.sleep_until(now + self._latency_s())
            else:
                async with self._slots:  # the queue of a server with few slots
                    await trio.sleep(self._latency_s())

        # Azure answers with the model behind the deployment, OpenAI with the name asked for.
        reply_model = canonical_model(model) if deployment is not None else model
        self._next_id += 1
        completion_id = f"chatcmpl-sim{self._next_id}"
        created = int(time.time())
        if fault is None or fault == "empty_content":
            try:
                message = self.responder(model, skill, chat.messages, tools)
            except Exception as exc:  # a responder bug is a visible 500, not a dead server
                return 500, responder_failure(exc), headers
            reply, completion_toks = completion_body(
                completion_id=completion_id,
                created=created,
                model=reply_model,
                message=message,
                prompt_toks=prompt_toks,
                empty_content=fault == "empty_content",
                limit=chat.max_completion_tokens if chat.max_completion_tokens is not None else chat.max_tokens,
            )
            done = trio.current_time()  # the completion's tokens count when it is made
            for w in token_windows:
                w.take(done, completion_toks)
            for c in counters:
                c.charge(done, completion_toks)
                c.usage_prompt_tokens += prompt_toks
                c.usage_completion_tokens += completion_toks
            if limited:  # what is left once this request's tokens are all counted
                headers += rate_headers(self.config.limits.header_style, done, key_window, dep_window, key_tokens, dep_tokens)
            return 200, reply, headers
        if limited:
            headers += rate_headers(self.config.limits.header_style, trio.current_time(), key_window, dep_window, key_tokens, dep_tokens)
        if fault == "server_error":
            status = self.rng.choice((500, 502, 503))
            return status, SERVER_ERRORS[status], headers
        if fault == "hang":
            return HANG, b"", []
        if fault == "malformed":
            return 200, MALFORMED_BODY, headers
        if fault == "empty_choices":
            return 200, empty_choices_body(completion_id=completion_id, created=created, model=reply_model), headers
        return 400, CONTEXT_LENGTH, headers  # context_length

    def _reject(self, counters: list[RouteStats], status: int, body: bytes) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        for c in counters:
            c.rejected += 1
        return status, body, [(SIMULATED_HEADER, b"true")]

    def _rate_limited(self, counters: list[RouteStats]) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        for c in counters:
            c.rate_limited += 1
        headers = [(SIMULATED_HEADER, b"true"), *retry_headers(self.config.limits)]
        return 429, RATE_LIMITED, headers

    def _latency_s(self) -> float:
        lat = self.config.latency
        median, spread = lat.median_ms, lat.spread_ms
        if spread <= 0:
            ms = median
        elif lat.distribution == "uniform":
            ms = self.rng.uniform(max(0.0, median - spread), median + spread)
        else:
            ms = self.rng.lognormvariate(math.log(median), math.log1p(spread / median))
        return min(ms, lat.max_ms) / 1000.0
