"""The HTTP chat model against the real simulator: each failure mode is classified once."""

from __future__ import annotations

import contextlib
import random

import msgspec
import pytest
import trio

from ultra.collect.client import (
    CONNECTIONS_PER_CLIENT,
    HttpChatModel,
    RouteClient,
    ShardCounters,
    open_clients,
)
from ultra.collect.secrets import redact, server_message
from ultra.collect.limits import RateLimiter
from ultra.collect.plan import Route
from ultra.sim.config import Faults, Latency, Limits, Routes, SimConfig
from ultra.sim.process import SimProcess
from ultra.sim.server import key_fingerprint
from ultra.suites import ContextLengthExceeded, ModelUnavailable

MESSAGES = [{"role": "system", "content": "hi"}, {"role": "user", "content": "hello"}]


def openai_route(url: str, model: str = "sim-strong") -> Route:
    return Route(url=f"{url}/v1/chat/completions", shape="openai", api_model=model,
                 key_literal="sim-key-0")


def azure_route(url: str, deployment: str) -> Route:
    return Route(url=f"{url}/openai/deployments/{deployment}/chat/completions?api-version=2024-12-01-preview",
                 shape="azure", api_model=None, key_literal="az-key")


def complete(route: Route, *, max_retries: int = 2, request_timeout: float = 5.0, qps: float = 1000):
    counters = ShardCounters()

    async def main():
        async with RouteClient(route, 2) as client:
            model = HttpChatModel(client, route, (RateLimiter(qps),), counters,
                                  request_timeout=request_timeout, max_retries=max_retries,
                                  rng=random.Random(0))
            return await model.complete(MESSAGES, None), model

    return trio.run(main), counters


def test_both_shapes_answer():
    with SimProcess(SimConfig(responder="echo")) as sim:
        (resp, model), _ = complete(openai_route(sim.url))
        (resp2, _), _ = complete(azure_route(sim.url, "sim-strong-2"))
    assert resp.text and resp2.text
    assert model.prompt_tokens > 0 and model.retries == 0


def test_reasoning_model_text_comes_from_reasoning_content():
    with SimProcess(SimConfig(responder="echo")) as sim:
        (resp, _), _ = complete(openai_route(sim.url, "sim-strong-reasoner"))
    assert not resp.content and resp.reasoning_content and resp.text == resp.reasoning_content


@pytest.mark.parametrize("faults, reason", [
    (Faults(server_error=1.0), "server_error"),
    (Faults(malformed=1.0), "malformed_response"),
    (Faults(empty_choices=1.0), "malformed_response"),
    (Faults(empty_content=1.0), "malformed_response"),
    (Faults(hang=1.0), "timeout"),
])
def test_retryable_faults_end_in_model_unavailable(faults, reason):
    with SimProcess(SimConfig(responder="echo", faults=faults)) as sim:
        with pytest.raises(ModelUnavailable) as info:
            complete(openai_route(sim.url), max_retries=2, request_timeout=0.3)
        stats = sim.stats()
    assert info.value.reason == reason
    assert info.value.retries == 3
    assert stats["total"]["requests"] == 3  # the first try and exactly max_retries more


def test_context_length_is_final_and_not_retried():
    with SimProcess(SimConfig(responder="echo", faults=Faults(context_length=1.0))) as sim:
        with pytest.raises(ContextLengthExceeded):
            complete(openai_route(sim.url))
        assert sim.stats()["total"]["requests"] == 1


def test_unknown_deployment_is_final():
    with SimProcess(SimConfig(responder="echo")) as sim:
        with pytest.raises(ModelUnavailable) as info:
            complete(azure_route(sim.url, "no-such-deployment"))
        assert sim.stats()["total"]["requests"] == 1
    assert info.value.reason == "bad_request"


def test_429_is_waited_out_not_counted_as_a_failure():
    # 1 request per second allowed, asked at 50 qps: the first passes, the next gets 429s
    # until the window frees; with max_retries=0 the calls still succeed.
    with SimProcess(SimConfig(responder="echo", limits=Limits(key_rps=1))) as sim:
        (_, first), _ = complete(openai_route(sim.url), max_retries=0, qps=50)
        (_, second), counters = complete(openai_route(sim.url), max_retries=0, qps=50)
    assert first.retries == 0
    assert second.retries >= 1 and counters.throttled == second.retries


def test_a_shards_connections_split_over_small_clients_all_in_flight_at_once():
    """23 workers: clients of at most CONNECTIONS_PER_CLIENT connections, and all 23 requests
    in flight together (nothing queues for a connection)."""
    workers = 23

    async def main(url: str) -> int:
        r = Route(url=f"{url}/v1/chat/completions", shape="openai", api_model="sim-strong",
                  key_literal="sim-key-0")
        async with open_clients(r, workers) as clients:
            assert len(clients) == -(-workers // CONNECTIONS_PER_CLIENT) > 1
            counters = ShardCounters()
            async with trio.open_nursery() as nursery:
                for i in range(workers):
                    model = HttpChatModel(clients[i % len(clients)], r, (RateLimiter(1000),),
                                          counters, request_timeout=30.0, max_retries=0,
                                          rng=random.Random(i))
                    nursery.start_soon(model.complete, MESSAGES, None)
        return counters.retries

    with SimProcess(SimConfig(responder="echo", latency=Latency(median_ms=1500))) as sim:
        assert trio.run(main, sim.url) == 0
        assert sim.stats()["total"]["max_in_flight"] == workers


def timed_completes(route: Route, n: int, *, qps: float = 1000, max_retries: int = 0):
    """n requests one after another on one model: (seconds, model, counters)."""
    counters = ShardCounters()

    async def main():
        async with RouteClient(route, 1) as client:
            model = HttpChatModel(client, route, (RateLimiter(qps),), counters,
                                  request_timeout=10, max_retries=max_retries,
                                  rng=random.Random(0))
            t0 = trio.current_time()
            for _ in range(n):
                await model.complete(MESSAGES, None)
            return trio.current_time() - t0, model

    elapsed, model = trio.run(main)
    return elapsed, model, counters


@pytest.mark.parametrize("header, http_date, wait", [
    ("retry-after", False, 2.0),  # whole seconds: 1.5 rounds up
    ("retry-after", True, 1.4),  # an HTTP date has whole seconds: rounded up from 1.5 s
    ("retry-after-ms", False, 1.5),
    ("x-ratelimit-reset-requests", False, 1.5),
    ("x-ratelimit-reset-tokens", False, 1.5),
])
def test_each_rate_limit_header_makes_the_next_request_wait_as_long_as_it_says(header, http_date, wait):
    # One request per second: the second request gets a 429 whose one header says 1.5 s.
    # Waiting as told, one retry suffices; a client that ignored it would collect more 429s.
    limits = Limits(key_rps=1, retry_after_s=1.5, retry_headers=(header,),
                    retry_after_http_date=http_date, rate_headers=False)
    with SimProcess(SimConfig(responder="echo", limits=limits)) as sim:
        elapsed, model, counters = timed_completes(openai_route(sim.url), 2)
        stats = sim.stats()
    assert counters.throttled == 1 and model.retries == 1
    assert stats["total"]["rate_limited"] == 1
    assert elapsed >= wait - 0.05


def test_remaining_requests_running_low_slows_down_before_a_429():
    with SimProcess(SimConfig(responder="echo", limits=Limits(key_rps=3, rate_headers=True))) as sim:
        elapsed, _, counters = timed_completes(openai_route(sim.url), 8, qps=100)
        stats = sim.stats()
    assert stats["total"]["rate_limited"] == counters.throttled == 0
    assert stats["total"]["max_per_second"] <= 3
    assert elapsed >= 1.9  # 8 requests at 3 a second


def test_remaining_tokens_running_low_slows_down_before_a_429():
    # 300 tokens a minute: 50 in any 10 s; each exchange takes a dozen or so.
    with SimProcess(SimConfig(responder="echo", limits=Limits(key_tpm=300, rate_headers=True))) as sim:
        elapsed, model, counters = timed_completes(openai_route(sim.url), 5, qps=100)
        stats = sim.stats()
    per_request = (model.prompt_tokens + model.completion_tokens) / 5
    assert 50 / per_request < 5  # so the five did not fit in one window
    assert stats["total"]["rate_limited"] == counters.throttled == 0
    assert stats["keys"][key_fingerprint("sim-key-0")]["max_tokens_10s"] <= 50
    assert elapsed >= 5


def completes_for(route: Route, seconds: float, *, workers: int = 1, qps: float = 100):
    """Workers completing one request after another for `seconds`: (counters, limiter)."""
    counters = ShardCounters()
    limiter = RateLimiter(qps)

    async def main():
        async with RouteClient(route, workers) as client:
            async def worker(i: int) -> None:
                model = HttpChatModel(client, route, (limiter,), counters, request_timeout=10,
                                      max_retries=0, rng=random.Random(i))
                while True:
                    await model.complete(MESSAGES, None)

            with trio.move_on_after(seconds):
                async with trio.open_nursery() as nursery:
                    for i in range(workers):
                        nursery.start_soon(worker, i)
            return limiter.held_for()

    return counters, limiter, trio.run(main)


@pytest.mark.parametrize("style, accepted, held", [
    # reset named (6 of 20 left is plenty; at 0 it pauses until the oldest request ages out)
    ("openai", 20, 55.0),
    # no reset: below half the limit the slots are spaced W / (R + 1): 9 left -> 6 s
    ("litellm-key", 11, 4.0),
    ("litellm-model", 11, 4.0),
])
def test_each_header_style_of_a_per_minute_limit_holds_back_before_a_429(style, accepted, held):
    # 20 requests a minute; a client going at 100 a second would see its 21st refused.
    limits = Limits(key_rpm=20, header_style=style, retry_after_s=60)
    with SimProcess(SimConfig(responder="echo", limits=limits)) as sim:
        counters, _, held_for = completes_for(openai_route(sim.url), 2.0)
        stats = sim.stats()
    assert stats["total"]["rate_limited"] == counters.throttled == 0
    assert stats["total"]["accepted"] == accepted
    assert held_for > held  # and it says so: the progress shows the pause


def test_a_gateway_without_headers_is_learnt_from_its_429_only():
    # The same limit without any header: the client runs into it and waits the 429's 60 s.
    limits = Limits(key_rpm=20, rate_headers=False, retry_after_s=60)
    with SimProcess(SimConfig(responder="echo", limits=limits)) as sim:
        counters, _, held_for = completes_for(openai_route(sim.url), 2.0)
        stats = sim.stats()
    assert stats["total"]["accepted"] == 20 and counters.throttled >= 1
    assert held_for > 55.0


def test_the_simulator_mark_makes_a_reply_simulated_whatever_the_route_says():
    with SimProcess(SimConfig(responder="echo")) as sim:
        (_, model), _ = complete(openai_route(sim.url))
    assert model.simulated


def test_a_refusal_keeps_the_status_and_the_server_message_without_the_key():
    key = "sk-test-0123456789abcdefXYZW"
    route = Route(url="", shape="openai", api_model="sim-strong", key_literal=key)
    with SimProcess(SimConfig(responder="echo", routes=Routes(accept_keys=["nobody"]))) as sim:
        route = msgspec.structs.replace(route, url=f"{sim.url}/v1/chat/completions")
        counters = ShardCounters()

        async def main():
            async with RouteClient(route, 1) as client:
                model = HttpChatModel(client, route, (RateLimiter(100),), counters,
                                      request_timeout=5, max_retries=3, rng=random.Random(0),
                                      secrets=(key,))
                await model.complete(MESSAGES, None)

        with pytest.raises(ModelUnavailable) as info:
            trio.run(main)
        assert sim.stats()["total"]["requests"] == 1  # final: not retried
    exc = info.value
    assert exc.http_status == 401 and exc.reason == "bad_request"
    assert exc.message.startswith("Incorrect API key provided: ***")
    assert key not in exc.message and key[-4:] not in exc.message


def test_redaction_of_what_servers_echo():
    secret = "0123456789abcdef0123456789abcdef"
    text = f"bad key {secret} from Bearer abc.def and sk-proj-abcdef123456 or sk-ab***********wxyz"
    out = redact(text, (secret,))
    assert secret not in out and "abc.def" not in out and "abcdef123456" not in out
    assert "wxyz" not in out
    assert server_message(b'{"error": {"message": "' + b"word " * 100 + b'"}}') == ("word " * 40).strip()
    assert server_message(b"<html>502 Bad Gateway</html>") == "<html>502 Bad Gateway</html>"


def test_routes_use_the_proxy_the_environment_names(monkeypatch):
    """The transport alone reads no environment: HTTP(S)_PROXY / ALL_PROXY and NO_PROXY are
    applied as httpx.AsyncClient would."""
    import httpx

    from ultra.collect.http11 import environment_proxy as _environment_proxy

    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy",
                 "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert _environment_proxy(httpx.URL("https://api.openai.com/v1/chat/completions")) is None
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.corp:3128")
    monkeypatch.setenv("NO_PROXY", "internal.corp,127.0.0.1")
    assert _environment_proxy(httpx.URL("https://api.openai.com/v1")) == "http://proxy.corp:3128"
    assert _environment_proxy(httpx.URL("https://x.internal.corp/v1")) is None
    assert _environment_proxy(httpx.URL("http://127.0.0.1:8000/v1")) is None
    monkeypatch.setenv("ALL_PROXY", "http://all.corp:8080")
    assert _environment_proxy(httpx.URL("http://plain.example/v1")) == "http://all.corp:8080"


def test_redaction_removes_every_piece_of_a_key_in_any_case():
    """A suffix, the key upper-cased, lower-cased or reversed: none of it survives."""
    key = "sK7fQ2mZ9xLpW4vR8tNb3cYd"
    for echoed in (key[-12:], key.upper(), key.lower(), key[::-1], key[::-1].upper(), key[3:11]):
        out = redact(f"bad key '{echoed}' given", (key,))
        assert "***" in out
        for variant in (key, key.upper(), key.lower(), key[::-1]):
            for i in range(len(variant) - 7):
                assert variant[i:i + 8].lower() not in out.lower(), (echoed, out)
    assert redact("nothing secret here", (key,)) == "nothing secret here"


@contextlib.asynccontextmanager
async def _loopback(handler):
    """A loopback server running `handler` per connection, for the block: its port."""
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, handler, [listener])
        yield listener.socket.getsockname()[1]
        nursery.cancel_scope.cancel()


async def _unavailable(route: Route, *, timeout: float, retries: int, health=None):
    """One test's `complete` on `route`, which must fail: (the error, the model)."""
    async with RouteClient(route, 1) as client:
        model = HttpChatModel(client, route, (RateLimiter(100),), ShardCounters(),
                              request_timeout=timeout, max_retries=retries,
                              rng=random.Random(0), health=health)
        with pytest.raises(ModelUnavailable) as info:
            await model.complete(MESSAGES, None)
    return info.value, model


def test_a_server_that_never_answers_breaks_its_route_within_broken_after_timeouts():
    """Accepts connections, never answers: each timeout counts against the route, and a
    broken route stops the test's retries."""
    from ultra.collect.client import RouteHealth

    async def silent(stream) -> None:
        await trio.sleep_forever()

    async def main() -> None:
        async with _loopback(silent) as port:
            route = Route(url=f"http://127.0.0.1:{port}/v1/chat/completions?secret=s3",
                          shape="openai", api_model="m", key_literal="k" * 40)
            health = RouteHealth(3)
            error, model = await _unavailable(route, timeout=0.2, retries=10, health=health)
            assert health.broken is not None and model.retries == 3
            assert error.reason == "timeout"
            assert f"127.0.0.1:{port}/v1/chat/completions" in error.message
            assert "s3" not in error.message

    trio.run(main)


def test_a_runaway_response_body_is_an_error_not_read_whole():
    """A server that answers 200 with 64 MB: the body is refused past 8 MB, not retried."""
    from ultra.collect.client import MAX_BODY_BYTES

    size = 64 * 2**20

    async def main() -> None:
        listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
        port = listener.socket.getsockname()[1]
        sent = [0]

        async def huge(stream) -> None:
            await stream.receive_some(65536)
            head = (f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    f"content-length: {size}\r\n\r\n").encode()
            try:
                await stream.send_all(head)
                chunk = b" " * 65536
                while sent[0] < size:
                    await stream.send_all(chunk)
                    sent[0] += len(chunk)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the client stopped reading and closed: as it should

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, huge, [listener])
            route = Route(url=f"http://127.0.0.1:{port}/v1/chat/completions", shape="openai",
                          api_model="m", key_literal="k" * 20)
            async with RouteClient(route, 1) as client:
                model = HttpChatModel(client, route, (RateLimiter(100),), ShardCounters(),
                                      request_timeout=60, max_retries=3, rng=random.Random(0))
                with pytest.raises(ModelUnavailable) as info:
                    await model.complete([{"role": "user", "content": "hi"}], None)
            assert info.value.reason == "malformed_response"
            assert "response body over 8 MB" in info.value.message
            assert model.retries == 1  # the one failed attempt; it is not sent again
            assert sent[0] < size  # the client let go long before the end
            assert sent[0] >= MAX_BODY_BYTES - 2**20  # and only after reading up to the limit
            nursery.cancel_scope.cancel()

    trio.run(main)


def _canned(status_line: bytes, headers: list[bytes], body: bytes):
    """A loopback server answering every request with one fixed response; (run, port)."""

    async def serve(stream) -> None:
        data = b""
        try:
            while True:
                while b"\r\n\r\n" not in data:
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        return
                    data += chunk
                head, _, rest = data.partition(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                while len(rest) < length:
                    rest += await stream.receive_some(65536)
                data = rest[length:]
                await stream.send_all(b"\r\n".join([status_line, *headers,
                                                    b"content-length: %d" % len(body), b"", body]))
        except trio.BrokenResourceError:
            return

    return serve


@pytest.mark.parametrize("status_line, headers, body, want", [
    (b"HTTP/1.1 307 Temporary Redirect", [b"location: https://login.example/sso?token=abc"], b"",
     "redirected to https://login.example/sso"),
    (b"HTTP/1.1 404 Not Found", [b"content-type: application/json"], b'{"detail":"Not Found"}',
     "Not Found"),
    (b"HTTP/1.1 422 Unprocessable Entity", [b"content-type: application/json"],
     b'{"detail":[{"loc":["body","messages"],"msg":"field required"}]}', "field required"),
])
def test_a_refused_route_says_the_url_ultra_built_and_what_the_server_said(status_line, headers, body, want):
    from ultra.collect.client import RouteHealth

    async def main() -> None:
        async with _loopback(_canned(status_line, headers, body)) as port:
            route = Route(url=f"http://127.0.0.1:{port}/v1/chat/completions?key=s3cret",
                          shape="openai", api_model="m", key_literal="k" * 40)
            health = RouteHealth(1)
            error, model = await _unavailable(route, timeout=5, retries=2, health=health)
            assert want in error.message and model.retries == 1  # refused: not retried
            assert health.broken is not None and want in health.broken
            assert f"(from http://127.0.0.1:{port}/v1/chat/completions)" in health.broken
            assert "s3cret" not in health.broken and "token=abc" not in health.broken

    trio.run(main)


def test_a_server_error_says_the_url_ultra_built():
    async def main() -> None:
        async with _loopback(_canned(b"HTTP/1.1 500 Internal Server Error", [],
                                     b"Internal Server Error")) as port:
            route = Route(url=f"http://127.0.0.1:{port}/openai/chat/completions?api-version=x",
                          shape="azure", api_model=None, key_literal="k" * 32)
            error, _ = await _unavailable(route, timeout=5, retries=1)
            assert error.http_status == 500 and error.retries == 2
            assert error.message == (f"Internal Server Error (from http://127.0.0.1:{port}"
                                     "/openai/chat/completions)")

    trio.run(main)
