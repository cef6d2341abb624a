"""A route's connections: keep-alive HTTP/1.1 on trio sockets, answers parsed by httptools.

A shard posts one kind of request to one URL, over and over. httpx (through httpcore)
costs ~0.9 ms of CPU a request at 128 connections, most of it machinery a chat request
never uses. Here a request is its pool's header block (validated once by h11, written as
h11 writes it) with its length and body, and the answer is parsed by httptools (llhttp,
the parser of Node.js and uvicorn): ~10 µs a request, where h11's state machine took
~150 µs to write the request and parse the same answer (figures in docs/benchmarks.md,
"The client"). What this keeps of httpx's behaviour: TLS verified
against the same CA bundle (`httpx.create_ssl_context`), the proxy the environment names
(HTTP(S)_PROXY, ALL_PROXY, NO_PROXY; CONNECT for https), gzip/deflate bodies undone, a
stale keep-alive connection never reused, one connection per request in flight.

`Pool.post` raises `TransportError` (a line naming what failed) for every failure below
HTTP: refused or reset connections, a TLS failure, a malformed or cut-off response.
Cancellation (the caller's timeout) closes the connection it interrupted.
"""

from __future__ import annotations

import base64
import functools
import select
import ssl
import urllib.request
import zlib
from collections.abc import Callable

import h11
import httptools
import httpx
import trio

__all__ = ["BodyTooLarge", "Pool", "TransportError", "environment_proxy", "tls_context"]

READ_BYTES = 65536


class TransportError(Exception):
    """The request got no HTTP answer: the connection failed, or what came back is not HTTP."""


class BodyTooLarge(Exception):
    """The server's body outgrew the pool's `max_body` (decoded)."""


@functools.cache
def tls_context() -> ssl.SSLContext:
    """One verifying TLS context per process: building one loads the CA bundle (~30 ms),
    and a shard of 128 workers has 32 pools."""
    return httpx.create_ssl_context()


def environment_proxy(url: httpx.URL) -> str | None:
    """The proxy HTTP(S)_PROXY / ALL_PROXY name for `url`, unless NO_PROXY exempts it (what
    httpx.AsyncClient would use)."""
    if urllib.request.proxy_bypass_environment(url.host):
        return None
    proxies = urllib.request.getproxies_environment()
    return proxies.get(url.scheme) or proxies.get("all")


class _Connection:
    __slots__ = ("stream", "socket")

    def __init__(self, stream: trio.abc.Stream, socket: trio.socket.SocketType) -> None:
        self.stream = stream
        self.socket = socket

    def stale(self) -> bool:
        """An idle keep-alive connection with something to read has been closed by the
        server (or sent what no request asked for): it must not carry a request."""
        poll = select.poll()  # not select.select: it fails past descriptor 1024
        try:
            poll.register(self.socket.fileno(), select.POLLIN)
            return bool(poll.poll(0))
        except (OSError, ValueError):
            return True


class Pool:
    """At most `connections` keep-alive connections to the host of `url`, each carrying
    one request at a time. `headers` go on every request (validated once, here)."""

    __slots__ = ("_host", "_port", "_tls", "_hostname", "_target", "_headers", "_head", "_idle",
                 "_slots", "_proxy", "_tunnel", "max_body")

    def __init__(self, url: str, headers: list[tuple[str, str]], connections: int, *,
                 max_body: int, proxy: str | None = None) -> None:
        u = httpx.URL(url)
        if u.scheme not in ("http", "https") or not u.host:
            raise ValueError(f"not an http(s) URL: {u.scheme}://{u.host}")
        self._hostname = u.host
        self._tls = tls_context() if u.scheme == "https" else None
        port = u.port or (443 if self._tls else 80)
        authority = u.netloc.decode("ascii").rpartition("@")[2]
        self._target = u.raw_path
        self._tunnel: bytes | None = None
        extra: list[tuple[str, str]] = []
        if proxy:
            p = httpx.URL(proxy)
            if p.scheme != "http":
                raise ValueError(f"proxy scheme {p.scheme!r} is not supported (http only)")
            self._host, self._port = p.host, p.port or 80
            if p.username:
                token = base64.b64encode(f"{p.username}:{p.password}".encode()).decode()
                extra = [("proxy-authorization", f"Basic {token}")]
            if self._tls:
                self._tunnel = f"{u.host}:{port}".encode("ascii")
                self._proxy = extra
                extra = []
            else:
                self._target = str(u.copy_with(fragment=None)).encode("ascii")  # absolute-form
                self._proxy = []
        else:
            self._host, self._port = u.host, port
            self._proxy = []
        # h11 validates the names and values (no CR/LF smuggled in with a key) on this one
        # request; each post then writes the same block with its own length (`_request`).
        self._headers = [("host", authority), *headers, *extra]
        try:
            checked = h11.Request(method="POST", target=self._target, headers=self._headers)
        except h11.LocalProtocolError as exc:
            raise ValueError(f"not a valid request header: {exc}") from None
        self._head = b"POST %s HTTP/1.1\r\n" % checked.target + b"".join(
            b"%s: %s\r\n" % (name, value) for name, value in checked.headers.raw_items())
        self._idle: list[_Connection] = []
        self._slots = trio.Semaphore(connections)
        self.max_body = max_body

    async def post(self, body: bytes, sent: Callable[[], None] | None = None
                   ) -> tuple[int, dict[str, str], bytes]:
        """POST `body`: the status, the headers (lower-case names) and the body. `sent` is
        called once the whole request is on the wire."""
        try:
            self._slots.acquire_nowait()  # the usual case: no checkpoint, no scheduler round
        except trio.WouldBlock:
            await self._slots.acquire()
        try:
            conn = self._take()
            if conn is None:
                conn = await self._connect()
            try:
                status, headers, content, reusable = await self._exchange(conn, body, sent)
            except BaseException:
                await trio.aclose_forcefully(conn.stream)
                raise
            if reusable:
                self._idle.append(conn)
            else:
                await trio.aclose_forcefully(conn.stream)
            return status, headers, content
        finally:
            self._slots.release()

    def _take(self) -> _Connection | None:
        while self._idle:
            conn = self._idle.pop()
            if not conn.stale():
                return conn
            conn.socket.close()
        return None

    async def _connect(self) -> _Connection:
        try:
            tcp = await trio.open_tcp_stream(self._host, self._port)
        except OSError as exc:
            raise TransportError(_why(exc)) from None
        stream: trio.abc.Stream = tcp
        try:
            if self._tunnel is not None:
                await _open_tunnel(tcp, self._tunnel, self._proxy)
            if self._tls is not None:
                stream = trio.SSLStream(tcp, self._tls, server_hostname=self._hostname,
                                        https_compatible=True)
                await stream.do_handshake()
        except BaseException as exc:
            await trio.aclose_forcefully(stream)
            if isinstance(exc, (OSError, trio.BrokenResourceError, h11.ProtocolError)):
                raise TransportError(_why(exc)) from None
            raise
        return _Connection(stream, tcp.socket)

    def _request(self, body: bytes) -> bytes:
        """The POST of `body` as h11 writes it: the request line and headers checked when
        the pool was made, its length, the body."""
        return b"%s" b"content-length: %d\r\n\r\n" b"%s" % (self._head, len(body), body)

    async def _exchange(self, conn: _Connection, body: bytes, sent: Callable[[], None] | None
                        ) -> tuple[int, dict[str, str], bytes, bool]:
        """The status, headers and body of the answer to `body`, and whether the connection
        may carry another request."""
        answer = _Answer()
        parser = answer.parser = httptools.HttpResponseParser(answer)
        try:
            await conn.stream.send_all(self._request(body))
            if sent is not None:
                sent()
            while not answer.complete:
                data = await conn.stream.receive_some(READ_BYTES)
                if not data:  # the server closed the connection
                    if answer.status and answer.ends_at_close():
                        answer.complete = True  # a body delimited by the close (HTTP/1.0
                        # style); `keep_alive` stays False
                        break
                    raise TransportError("the server closed the connection "
                                         + ("mid-response" if answer.status else "without an answer"))
                try:
                    parser.feed_data(data)
                except httptools.HttpParserError as exc:
                    if not answer.complete:
                        raise TransportError(f"not an HTTP response: {exc}") from None
                    answer.extra = True  # bytes past the answer that are not one: unusable after
                if answer.size > self.max_body:  # never hold a runaway body whole
                    raise BodyTooLarge(f"response body over {self.max_body // 2**20} MB")
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise TransportError(_why(exc)) from None
        finally:
            answer.parser = None  # the parser holds the answer: freed now, not by a collection
        content = b"".join(answer.chunks)
        headers = answer.headers
        coding = headers.get("content-encoding", "identity").strip().lower()
        if coding not in ("identity", ""):
            content = _decoded(content, coding, self.max_body)
        reusable = answer.keep_alive and not answer.extra and answer.begun == 1
        return answer.status, headers, content, reusable

    async def aclose(self) -> None:
        while self._idle:
            await trio.aclose_forcefully(self._idle.pop().stream)

    async def __aenter__(self) -> Pool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def _open_tunnel(tcp: trio.SocketStream, authority: bytes, headers: list[tuple[str, str]]) -> None:
    """CONNECT through an HTTP proxy: afterwards `tcp` carries bytes to `authority`."""
    c = h11.Connection(h11.CLIENT)
    await tcp.send_all(c.send(h11.Request(method="CONNECT", target=authority,  # type: ignore[arg-type]
                                          headers=[("host", authority.decode()), *headers])))
    while True:
        event = c.next_event()
        if event is h11.NEED_DATA:
            c.receive_data(await tcp.receive_some(READ_BYTES))
        elif type(event) is h11.Response:
            if not 200 <= event.status_code < 300:  # type: ignore[union-attr]
                raise TransportError(f"the proxy refused CONNECT {authority.decode()}: "
                                     f"HTTP {event.status_code}")  # type: ignore[union-attr]
            return  # h11 keeps any bytes past the response head; a proxy sends none first


class _Answer:
    """One answer as httptools' parser reports it (its callbacks). An informational answer
    (100 Continue and the like) is read past; a second answer begun in the same bytes, or
    bytes that are none, make the connection unusable afterwards (`begun`, `extra`)."""

    __slots__ = ("parser", "status", "headers", "chunks", "size", "complete", "begun", "extra",
                 "keep_alive")

    def __init__(self) -> None:
        self.parser: httptools.HttpResponseParser | None = None
        self.status = 0
        self.headers: dict[str, str] = {}  # lower-case names; a repeated header: its last value
        self.chunks: list[bytes] = []
        self.size = 0
        self.complete = False
        self.begun = 0
        self.extra = False
        self.keep_alive = False  # what the answer says (HTTP/1.1 without connection: close)

    def on_message_begin(self) -> None:
        self.begun += 1
        if self.complete:  # a second answer that no request asked for
            self.extra = True

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1").strip()

    def on_headers_complete(self) -> None:
        if not self.complete:
            self.status = self.parser.get_status_code()  # type: ignore[union-attr]

    def on_body(self, body: bytes) -> None:
        if not self.complete:
            self.chunks.append(body)
            self.size += len(body)

    def on_message_complete(self) -> None:
        if self.complete:
            return
        if 100 <= self.status < 200:  # informational: the answer is still to come
            self.status, self.headers, self.begun = 0, {}, self.begun - 1
            return
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()  # type: ignore[union-attr]  # (reset after)

    def ends_at_close(self) -> bool:
        """Whether the body is delimited by the server closing the connection."""
        h = self.headers
        return "content-length" not in h and "chunked" not in h.get("transfer-encoding", "").lower()


def _decoded(content: bytes, coding: str, limit: int) -> bytes:
    """A gzip or deflate body undone (as httpx does), within `limit` bytes."""
    if coding not in ("gzip", "x-gzip", "deflate"):
        raise TransportError(f"unsupported content-encoding {coding!r}")
    wbits = 16 + zlib.MAX_WBITS if coding != "deflate" else zlib.MAX_WBITS
    try:
        try:
            out = zlib.decompressobj(wbits).decompress(content, limit + 1)
        except zlib.error:
            if coding != "deflate":
                raise
            out = zlib.decompressobj(-zlib.MAX_WBITS).decompress(content, limit + 1)  # raw deflate
    except zlib.error as exc:
        raise TransportError(f"cannot decode the {coding} body: {exc}") from None
    if len(out) > limit:
        raise BodyTooLarge(f"response body over {limit // 2**20} MB")
    return out


def _why(exc: BaseException) -> str:
    if isinstance(exc, trio.BrokenResourceError) and exc.__cause__ is not None:
        exc = exc.__cause__  # the socket's or TLS's own error
    return str(exc) or type(exc).__name__
