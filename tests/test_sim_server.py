"""The simulator over real loopback HTTP: routes, accounting, limits, storms and faults."""

from __future__ import annotations

import email.utils
from collections.abc import Iterator

import httpx
import msgspec
import pytest

from ultra.sim.config import Faults, Limits, Storm
from ultra.sim.server import SimConfig, SimProcess, key_fingerprint

MESSAGES = [{"role": "user", "content": "Plan the workflow."}]
API_VERSION = {"api-version": "2024-10-21"}


def openai_post(client: httpx.Client, key: str | None, model: str, path: str = "/v1/chat/completions") -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    return client.post(path, json={"model": model, "messages": MESSAGES}, headers=headers)


def azure_post(client: httpx.Client, key: str | None, deployment: str, params: dict[str, str] | None = None) -> httpx.Response:
    headers = {"api-key": key} if key is not None else {}
    return client.post(
        f"/openai/deployments/{deployment}/chat/completions",
        params=API_VERSION if params is None else params,
        json={"messages": MESSAGES},
        headers=headers,
    )


@pytest.fixture(scope="module")
def sim() -> Iterator[SimProcess]:
    with SimProcess(SimConfig(responder="echo")) as s:
        yield s


@pytest.fixture
def client(sim: SimProcess) -> Iterator[httpx.Client]:
    sim.reset()
    with httpx.Client(base_url=sim.url, timeout=10) as c:
        yield c


def assert_chat_completion(body: dict, model: str) -> None:
    assert body["object"] == "chat.completion"
    assert body["id"] and isinstance(body["created"], int)
    assert body["model"] == model
    (choice,) = body["choices"]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"]
    assert choice["finish_reason"] == "stop"
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/chat/completions"])
def test_openai_route_replies_a_chat_completion(client: httpx.Client, path: str) -> None:
    r = openai_post(client, "sk-one", "sim-strong", path)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert_chat_completion(r.json(), "sim-strong")


def test_azure_route_maps_the_deployment_to_its_model(client: httpx.Client, sim: SimProcess) -> None:
    r = azure_post(client, "az-key", "sim-strong-2")
    assert r.status_code == 200
    assert_chat_completion(r.json(), "sim-strong")
    stats = sim.stats()
    assert stats["deployments"]["sim-strong-2"]["accepted"] == 1
    assert stats["models"]["sim-strong"]["accepted"] == 1


def test_accounting_is_exact_per_key_deployment_and_model(client: httpx.Client, sim: SimProcess) -> None:
    sent = {("k0", "sim-good"): 3, ("k1", "sim-good"): 5, ("k2", "sim-weak"): 2}
    for (key, model), n in sent.items():
        for _ in range(n):
            assert openai_post(client, key, model).status_code == 200
    for deployment, n in {"sim-medium": 4, "sim-medium-2": 1, "sim-medium-3": 2}.items():
        for _ in range(n):
            assert azure_post(client, "azure-key", deployment).status_code == 200

    stats = sim.stats()
    keys = stats["keys"]
    assert set(keys) == {key_fingerprint(k) for k in ("k0", "k1", "k2", "azure-key")}
    for key, n in {"k0": 3, "k1": 5, "k2": 2, "azure-key": 7}.items():
        counters = keys[key_fingerprint(key)]
        assert counters["requests"] == counters["accepted"] == n
        assert counters["rate_limited"] == counters["faults"] == counters["rejected"] == counters["in_flight"] == 0
        assert counters["max_in_flight"] == 1  # one sequential client
        assert 1 <= counters["max_per_second"] <= n
    assert {d: c["requests"] for d, c in stats["deployments"].items()} == {
        "sim-medium": 4,
        "sim-medium-2": 1,
        "sim-medium-3": 2,
    }
    assert {m: c["requests"] for m, c in stats["models"].items()} == {"sim-good": 8, "sim-weak": 2, "sim-medium": 7}
    assert stats["total"]["requests"] == stats["total"]["accepted"] == 17
    assert stats["status"] == {"200": 17}


def test_reset_zeroes_the_accounting(client: httpx.Client, sim: SimProcess) -> None:
    openai_post(client, "k-reset", "sim-good")
    sim.reset()
    stats = sim.stats()
    assert stats["keys"] == {} and stats["models"] == {} and stats["status"] == {}
    assert stats["total"]["requests"] == 0


def test_max_per_second_counts_arrivals_in_a_sliding_second(client: httpx.Client, sim: SimProcess) -> None:
    import time

    # The server's arrivals lie between our send and our receive times; a run of requests
    # whose whole exchange fits in under a second must be counted in one window.
    spans = []
    for _ in range(12):
        start = time.monotonic()
        assert openai_post(client, "k-window", "sim-good").status_code == 200
        spans.append((start, time.monotonic()))
    lower = max(
        j - i + 1 for i in range(len(spans)) for j in range(i, len(spans)) if spans[j][1] - spans[i][0] < 1.0
    )
    counted = sim.stats()["keys"][key_fingerprint("k-window")]["max_per_second"]
    assert lower <= counted <= 12


def test_reasoner_models_answer_in_reasoning_content(client: httpx.Client) -> None:
    for r in (openai_post(client, "k", "sim-strong-reasoner"), azure_post(client, "k", "sim-good-reasoner-2")):
        assert r.status_code == 200
        message = r.json()["choices"][0]["message"]
        assert message["content"] == ""
        assert message["reasoning_content"]


def test_missing_key_is_401(client: httpx.Client, sim: SimProcess) -> None:
    r = openai_post(client, None, "sim-good")
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_api_key"
    assert azure_post(client, None, "sim-good").status_code == 401
    # a Bearer key does not count on the Azure route's api-key header, nor the reverse
    r = client.post("/v1/chat/completions", json={"model": "sim-good", "messages": MESSAGES}, headers={"api-key": "x"})
    assert r.status_code == 401
    assert sim.stats()["total"]["rejected"] == 3


def test_unknown_model_or_deployment_is_404(client: httpx.Client) -> None:
    r = openai_post(client, "k", "gpt-nonexistent")
    assert r.status_code == 404
    error = r.json()["error"]
    assert error["code"] == "model_not_found" and "gpt-nonexistent" in error["message"]
    r = azure_post(client, "k", "no-such-deployment")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "DeploymentNotFound"


def test_azure_requires_api_version_and_bodies_must_be_json(client: httpx.Client) -> None:
    assert azure_post(client, "k", "sim-good", params={}).status_code == 400
    r = client.post("/v1/chat/completions", content=b"{not json", headers={"Authorization": "Bearer k"})
    assert r.status_code == 400
    assert "error" in r.json()


def test_control_routes(client: httpx.Client) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/nowhere").status_code == 404
    assert client.get("/v1/chat/completions").status_code == 405


# ---- rate limits and storms (a server each) ------------------------------------------------


def test_key_limit_admits_a_full_window_then_429_with_retry_after() -> None:
    with SimProcess(SimConfig(responder="echo", limits=Limits(key_rps=4))) as sim, httpx.Client(base_url=sim.url) as c:
        statuses = [openai_post(c, "limited", "sim-good") for _ in range(4)]
        # a fresh window admits its whole capacity, however slow the client
        assert [r.status_code for r in statuses] == [200] * 4
        more = [openai_post(c, "limited", "sim-good") for _ in range(6)]
        for r in more:
            assert r.status_code in (200, 429)
            if r.status_code == 429:
                assert r.headers["retry-after"] == "1"
                assert r.json()["error"]["code"] == "rate_limit_exceeded"
        # another key has its own window
        assert openai_post(c, "other", "sim-good").status_code == 200
        counters = sim.stats()["keys"][key_fingerprint("limited")]
        assert counters["requests"] == 10
        assert counters["accepted"] + counters["rate_limited"] == 10
        assert counters["rate_limited"] == sum(r.status_code == 429 for r in more)


def test_slow_limit_refuses_the_second_request_and_deployments_limit_separately() -> None:
    # 0.05 req/s: one request per 20 s, so the second one is refused on any machine.
    config = SimConfig(
        responder="echo",
        limits=Limits(deployment_rps=0.05, retry_after_s=7, retry_after_http_date=True),
    )
    with SimProcess(config) as sim, httpx.Client(base_url=sim.url) as c:
        assert azure_post(c, "k", "sim-good").status_code == 200
        refused = azure_post(c, "k", "sim-good")
        assert refused.status_code == 429
        assert email.utils.parsedate_to_datetime(refused.headers["retry-after"]) is not None
        assert azure_post(c, "k", "sim-good-2").status_code == 200  # its own deployment window
        assert openai_post(c, "k", "sim-good").status_code == 200  # no key limit configured
        stats = sim.stats()
        assert stats["deployments"]["sim-good"]["rate_limited"] == 1
        assert stats["deployments"]["sim-good-2"]["rate_limited"] == 0
        sim.reset()  # a reset also empties the windows
        assert azure_post(c, "k", "sim-good").status_code == 200


def test_per_route_overrides() -> None:
    limits = Limits(key_rps=1000, key_overrides={key_fingerprint("slow-key"): 0.05})
    with SimProcess(SimConfig(responder="echo", limits=limits)) as sim, httpx.Client(base_url=sim.url) as c:
        assert [openai_post(c, "slow-key", "sim-good").status_code for _ in range(2)] == [200, 429]
        assert [openai_post(c, "fast-key", "sim-good").status_code for _ in range(2)] == [200, 200]


def test_storm_refuses_everything_until_it_ends_and_restarts_on_reset() -> None:
    config = SimConfig(responder="echo", storm=Storm(duration_s=3600))
    with SimProcess(config) as sim, httpx.Client(base_url=sim.url) as c:
        for _ in range(3):
            r = openai_post(c, "k", "sim-good")
            assert r.status_code == 429 and r.headers["retry-after"] == "1"
        sim.reset()
        assert openai_post(c, "k", "sim-good").status_code == 429
        assert sim.stats()["total"]["rate_limited"] == 1


def test_partial_storm_refuses_a_fraction_then_ends() -> None:
    config = SimConfig(responder="echo", seed=3, storm=Storm(duration_s=0.5, fraction=0.5))
    with SimProcess(config) as sim, httpx.Client(base_url=sim.url) as c:
        sim.reset()  # the storm starts now
        codes = [openai_post(c, "k", "sim-good").status_code for _ in range(12)]
        assert set(codes) <= {200, 429}
        # wait the storm out (bounded), then every request passes
        for _ in range(200):
            if sim.stats()["since_reset_s"] > 0.5:
                break
            import time

            time.sleep(0.05)
        assert [openai_post(c, "k", "sim-good").status_code for _ in range(5)] == [200] * 5
        assert sim.stats()["total"]["rate_limited"] == codes.count(429)


# ---- faults at probability 1 ------------------------------------------------------------------


def faulty(**faults: float) -> SimProcess:
    return SimProcess(SimConfig(responder="echo", faults=Faults(**faults)))


def test_fault_server_error() -> None:
    with faulty(server_error=1.0) as sim, httpx.Client(base_url=sim.url) as c:
        codes = {openai_post(c, "k", "sim-good").status_code for _ in range(20)}
        assert codes <= {500, 502, 503} and len(codes) >= 2
        assert sim.stats()["total"]["faults"] == 20


def test_fault_malformed_body() -> None:
    with faulty(malformed=1.0) as sim, httpx.Client(base_url=sim.url) as c:
        r = openai_post(c, "k", "sim-good")
        assert r.status_code == 200
        with pytest.raises(msgspec.DecodeError):
            msgspec.json.decode(r.content)


def test_fault_empty_content_and_empty_choices() -> None:
    with faulty(empty_content=1.0) as sim, httpx.Client(base_url=sim.url) as c:
        body = openai_post(c, "k", "sim-good").json()
        assert body["choices"][0]["message"]["content"] == ""
        assert not body["choices"][0]["message"].get("tool_calls")
    with faulty(empty_choices=1.0) as sim, httpx.Client(base_url=sim.url) as c:
        r = openai_post(c, "k", "sim-good")
        assert r.status_code == 200 and r.json()["choices"] == []


def test_fault_context_length() -> None:
    with faulty(context_length=1.0) as sim, httpx.Client(base_url=sim.url) as c:
        r = openai_post(c, "k", "sim-good")
        assert r.status_code == 400
        assert r.json()["error"]["code"] == "context_length_exceeded"


def test_fault_hang_blocks_nothing_else_and_ends_with_the_client() -> None:
    with faulty(hang=1.0) as sim:
        with httpx.Client(base_url=sim.url, timeout=0.3) as c:
            with pytest.raises(httpx.ReadTimeout):
                openai_post(c, "k", "sim-good")
            assert c.get("/health").status_code == 200  # the server still answers
            assert sim.stats()["total"]["faults"] == 1
        # Our client closed its connection: the hung request must leave flight.
        import time

        for _ in range(200):
            if sim.stats()["total"]["in_flight"] == 0:
                break
            time.sleep(0.05)
        assert sim.stats()["total"]["in_flight"] == 0
    assert sim.returncode == 0  # a hung request does not stop a clean shutdown


def test_faults_mix_by_probability_is_seeded() -> None:
    def run() -> list[int]:
        with SimProcess(SimConfig(responder="echo", seed=11, faults=Faults(server_error=0.3, context_length=0.3))) as sim:
            with httpx.Client(base_url=sim.url) as c:
                return [openai_post(c, "k", "sim-good").status_code for _ in range(30)]

    first = run()
    assert first == run()
    assert {200, 400} <= set(first)


@pytest.mark.parametrize("style, names", [
    ("openai", {"x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests",
                "x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"}),
    ("litellm-key", {"x-ratelimit-api_key-limit-requests", "x-ratelimit-api_key-remaining-requests",
                     "x-ratelimit-api_key-limit-tokens", "x-ratelimit-api_key-remaining-tokens"}),
    ("litellm-model", {"x-ratelimit-limit-requests", "x-ratelimit-remaining-requests",
                       "x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens"}),
])
def test_each_header_style_names_the_limits_as_its_gateway_does(style, names):
    limits = Limits(key_rpm=20, key_tpm=100_000, header_style=style)
    with SimProcess(SimConfig(responder="echo", limits=limits)) as s, \
            httpx.Client(base_url=s.url, timeout=10) as c:
        first, second = (openai_post(c, "sk-style", "sim-strong") for _ in range(2))
    assert {k for k in first.headers if "ratelimit" in k} == names
    prefix = "x-ratelimit-api_key-" if style == "litellm-key" else "x-ratelimit-"
    assert first.headers[prefix + "limit-requests"] == "20"  # a minute's worth
    assert [r.headers[prefix + "remaining-requests"] for r in (first, second)] == ["19", "18"]
    assert first.headers[prefix + "limit-tokens"] == "100000"


def test_key_rpm_is_a_sliding_minute_and_the_header_style_is_checked():
    with SimProcess(SimConfig(responder="echo", limits=Limits(key_rpm=3))) as s, \
            httpx.Client(base_url=s.url, timeout=10) as c:
        statuses = [openai_post(c, "sk-rpm", "sim-strong").status_code for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
    from ultra.errors import UserError
    from ultra.sim.config import with_overrides

    assert with_overrides(SimConfig(), header_style="litellm-key").limits.header_style == "litellm-key"
    with pytest.raises(UserError, match="header-style"):
        with_overrides(SimConfig(), header_style="kong")
