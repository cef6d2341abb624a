"""ultra's HTTP/1.1 connections (ultra/collect/http11.py) against real loopback servers: keep-alive,
stale and closed connections, chunked and compressed bodies, proxies, failures."""

from __future__ import annotations

import contextlib
import gzip

import h11
import pytest
import trio

from ultra.collect.client import RouteClient
from ultra.collect.http11 import BodyTooLarge, Pool, TransportError
from ultra.collect.plan import Route

HEADERS = [("content-type", "application/json")]


@contextlib.asynccontextmanager
async def serving(handler):
    """A loopback server running `handler(stream)` per connection: (port, accepted list)."""
    accepted: list[int] = []

    async def each(stream) -> None:
        accepted.append(1)
        try:
            await handler(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, each, [listener])
        yield listener.socket.getsockname()[1], accepted
        nursery.cancel_scope.cancel()


async def read_requests(stream, conn: h11.Connection):
    """Yield (request, body) as they arrive on `stream`, until the client closes."""
    while True:
        req, body = None, b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                conn.receive_data(data)
                if not data and conn.their_state is h11.IDLE:
                    return
                continue
            if isinstance(event, h11.Request):
                req = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                return
        yield req, body


def answering(*, headers=(), body=b'{"ok":true}', chunked=False, close_after=False, seen=None):
    """A handler answering each request 200 with `body` (chunked or by length)."""

    async def handler(stream) -> None:
        conn = h11.Connection(h11.SERVER)
        async for req, sent in read_requests(stream, conn):
            if seen is not None:
                seen.append((req, sent))
            hs = [*headers, ("transfer-encoding", "chunked") if chunked else ("content-length", str(len(body)))]
            out = conn.send(h11.Response(status_code=200, headers=hs))
            if chunked:
                out += conn.send(h11.Data(data=body[:5])) + conn.send(h11.Data(data=body[5:]))
            else:
                out += conn.send(h11.Data(data=body))
            await stream.send_all(out + conn.send(h11.EndOfMessage()))
            if conn.our_state is h11.MUST_CLOSE:  # it said connection: close
                await stream.aclose()
                return
            if close_after:  # closes the keep-alive connection without saying so
                await trio.sleep(0.05)
                await stream.aclose()
                return
            conn.start_next_cycle()

    return handler


def test_keep_alive_carries_requests_one_connection_and_reads_chunked_bodies():
    seen: list = []

    async def main() -> None:
        async with serving(answering(chunked=True, seen=seen)) as (port, accepted):
            sent: list[int] = []
            async with Pool(f"http://127.0.0.1:{port}/v1/x?a=1", HEADERS, 2, max_body=2**20) as pool:
                for i in range(3):
                    status, headers, body = await pool.post(b'{"n":%d}' % i, lambda: sent.append(1))
                    assert (status, body) == (200, b'{"ok":true}')
                    assert headers["transfer-encoding"] == "chunked"
            assert len(accepted) == 1 and len(sent) == 3
        req, body = seen[2]
        assert req.target == b"/v1/x?a=1" and body == b'{"n":2}'
        assert dict(req.headers)[b"host"] == f"127.0.0.1:{port}".encode()
        assert dict(req.headers)[b"content-length"] == b"7"

    trio.run(main)


def test_a_gzip_body_is_undone_and_a_runaway_one_refused():
    raw = b'{"text": "%s"}' % (b"a" * 5000)

    async def main() -> None:
        gz = [("content-encoding", "gzip")]
        async with serving(answering(headers=gz, body=gzip.compress(raw))) as (port, _):
            async with Pool(f"http://127.0.0.1:{port}/", HEADERS, 1, max_body=2**20) as pool:
                assert (await pool.post(b"{}"))[2] == raw
            async with Pool(f"http://127.0.0.1:{port}/", HEADERS, 1, max_body=1000) as pool:
                with pytest.raises(BodyTooLarge):
                    await pool.post(b"{}")

    trio.run(main)


def test_a_connection_the_server_closed_while_idle_is_not_reused():
    async def main() -> None:
        async with serving(answering(close_after=True)) as (port, accepted):
            async with Pool(f"http://127.0.0.1:{port}/", HEADERS, 1, max_body=2**20) as pool:
                for _ in range(3):
                    assert (await pool.post(b"{}"))[0] == 200
                    await trio.sleep(0.3)  # the server's FIN arrives while the connection idles
            assert len(accepted) == 3

    trio.run(main)


def test_connection_close_is_honoured():
    async def main() -> None:
        async with serving(answering(headers=[("connection", "close")])) as (port, accepted):
            async with Pool(f"http://127.0.0.1:{port}/", HEADERS, 1, max_body=2**20) as pool:
                for _ in range(2):
                    assert (await pool.post(b"{}"))[0] == 200
            assert len(accepted) == 2

    trio.run(main)


@pytest.mark.parametrize("reply, why", [
    (b"", "closed the connection without an answer"),
    (b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nshort", "closed the connection mid-response"),
    (b"HTTP/1.1 200 OK\r\ncontent", "closed the connection without an answer"),
    (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "not an HTTP response"),
])
def test_no_answer_or_not_http_is_a_transport_error(reply, why):
    async def handler(stream) -> None:
        await stream.receive_some(65536)
        await stream.send_all(reply)
        await stream.aclose()

    async def main() -> None:
        async with serving(handler) as (port, _):
            async with Pool(f"http://127.0.0.1:{port}/", HEADERS, 1, max_body=2**20) as pool:
                with pytest.raises(TransportError, match=why):
                    await pool.post(b"{}")
                with pytest.raises(TransportError):  # and the pool is still usable for the next
                    await pool.post(b"{}")

    trio.run(main)


def test_a_refused_connection_is_a_transport_error():
    async def main() -> None:
        listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
        port = listener.socket.getsockname()[1]
        await listener.aclose()  # nothing listens there now
        async with Pool(f"http://127.0.0.1:{port}/", HEADERS, 1, max_body=2**20) as pool:
            with pytest.raises(TransportError):
                await pool.post(b"{}")

    trio.run(main)


def test_a_header_value_with_a_line_break_is_refused_before_any_request():
    with pytest.raises(ValueError, match="not a valid request header"):
        Pool("http://127.0.0.1:9/", [("authorization", "Bearer k\r\nx-evil: 1")], 1, max_body=1)


def test_http_routes_go_through_the_environments_proxy_in_absolute_form(monkeypatch):
    seen: list = []

    async def main() -> None:
        async with serving(answering(seen=seen)) as (proxy_port, _):
            for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "HTTPS_PROXY", "https_proxy"):
                monkeypatch.delenv(name, raising=False)
            monkeypatch.setenv("HTTP_PROXY", f"http://user:pw@127.0.0.1:{proxy_port}")
            route = Route(url="http://api.example:8000/v1/chat/completions?k=1", shape="openai",
                          api_model="m", key_literal="sk-" + "k" * 30)
            async with RouteClient(route, 1) as client:
                assert (await client.post(b"{}"))[0] == 200
        req, _ = seen[0]
        assert req.target == b"http://api.example:8000/v1/chat/completions?k=1"
        headers = dict(req.headers)
        assert headers[b"host"] == b"api.example:8000"
        assert headers[b"proxy-authorization"] == b"Basic dXNlcjpwdw=="  # user:pw
        assert headers[b"authorization"] == b"Bearer sk-" + b"k" * 30

    trio.run(main)


def test_https_routes_tunnel_through_the_proxy_and_a_refusal_says_so(monkeypatch):
    seen: list = []

    async def proxy(stream) -> None:
        conn = h11.Connection(h11.SERVER)
        async for req, _ in read_requests(stream, conn):
            seen.append(req)
            await stream.send_all(conn.send(h11.Response(status_code=403, headers=[("content-length", "0")]))
                                  + conn.send(h11.EndOfMessage()))
            return

    async def main() -> None:
        async with serving(proxy) as (proxy_port, _):
            async with Pool("https://api.example/v1/chat/completions", HEADERS, 1, max_body=1,
                            proxy=f"http://127.0.0.1:{proxy_port}") as pool:
                with pytest.raises(TransportError, match="proxy refused CONNECT api.example:443: HTTP 403"):
                    await pool.post(b"{}")
        assert seen[0].method == b"CONNECT" and seen[0].target == b"api.example:443"

    trio.run(main)


def test_each_request_is_the_one_checked_when_the_pool_was_made():
    """A request is the header block checked once when the pool was made, its length and
    body: the same bytes on the wire as the request h11 checks and writes in full; a header
    that could smuggle a line is refused."""
    pool = Pool("http://127.0.0.1:9/v1/chat/completions?api-version=1",
                [("Authorization", "Bearer k"), ("content-type", "application/json")], 4,
                max_body=1 << 20)
    body = b'{"messages": []}' * 80
    c = h11.Connection(h11.CLIENT)
    checked = c.send(h11.Request(method="POST", target=pool._target,
                                 headers=[*pool._headers, ("content-length", str(len(body)))]))
    checked += c.send(h11.Data(data=body)) + c.send(h11.EndOfMessage())
    assert pool._request(body) == checked
    with pytest.raises(ValueError, match="not a valid request header"):
        Pool("http://127.0.0.1:9/v1", [("authorization", "Bearer k\r\nx-evil: 1")], 4, max_body=1 << 20)


def _replying(reply: bytes, *, then_close: bool = False):
    """A handler answering each request with the bytes `reply` (closing after, if told)."""

    async def handler(stream) -> None:
        while True:
            if not await stream.receive_some(65536):
                return
            await stream.send_all(reply)
            if then_close:
                await stream.aclose()
                return

    return handler


@pytest.mark.parametrize("reply, reused, body", [
    # an informational answer first: read past it
    (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", True, b"ok"),
    # HTTP/1.0 without keep-alive: its answer, then a new connection
    (b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok", False, b"ok"),
    # a second answer no request asked for, in the same bytes: never read as the next one's
    (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
     b"HTTP/1.1 500 Oops\r\ncontent-length: 0\r\n\r\n", False, b"ok"),
    # bytes past the answer that are no answer at all
    (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokSSH-2.0\r\n\r\n", False, b"ok"),
    # chunked, with a chunk extension and a trailer
    (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
     b"2;x=y\r\nok\r\n1\r\n!\r\n0\r\nx-trailer: 1\r\n\r\n", True, b"ok!"),
])
def test_what_follows_an_answer_decides_whether_its_connection_is_reused(reply, reused, body):
    async def main() -> None:
        async with serving(_replying(reply)) as (port, accepted):
            async with Pool(f"http://127.0.0.1:{port}/", HEADERS, 1, max_body=2**20) as pool:
                for _ in range(2):
                    status, headers, content = await pool.post(b"{}")
                    assert (status, content) == (200, body)
            assert len(accepted) == (1 if reused else 2)

    trio.run(main)


def test_a_body_delimited_by_the_close_is_read_to_the_end():
    """No length and not chunked: the body is what comes until the server closes."""
    async def main() -> None:
        reply = b"HTTP/1.1 200 OK\r\nX-Thing:  padded \r\n\r\n" + b"x" * 200_000
        async with serving(_replying(reply, then_close=True)) as (port, accepted):
            async with Pool(f"http://127.0.0.1:{port}/", HEADERS, 1, max_body=2**20) as pool:
                for _ in range(2):
                    status, headers, content = await pool.post(b"{}")
                    assert (status, len(content), headers["x-thing"]) == (200, 200_000, "padded")
            assert len(accepted) == 2

    trio.run(main)
