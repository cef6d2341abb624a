"""A route's connections: keep-alive HTTP/1.1 on trio sockets, parsed by h11.

A shard posts one kind of request to one URL, over and over. httpx (through httpcore)
costs ~0.9 ms of CPU a request at 128 connections, most of it machinery a chat request
never uses; h11 over trio's streams does the same wire work for a fraction (figures in
docs/benchmarks.md, "The client"). What this keeps of httpx's behaviour: TLS verified
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
import httpx
import trio

__all__ = ["BodyTooLarge", "Pool", "TransportError", "environment_proxy", "tls_context"]

READ_BYTES = 65536


def _takes_parsed() -> bool:
    """Whether this h11 takes events marked as already checked (`_parsed`: every release
    since 0.8); if not, each request's headers are checked again."""
    try:
        h11.Request(method=b"POST", target=b"/", headers=[(b"host", b"x")], _parsed=True)
    except TypeError:
        return False
    return True


_PARSED_OK = _takes_parsed()


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
    __slots__ = ("stream", "socket", "h11")

    def __init__(self, stream: trio.abc.Stream, socket: trio.socket.SocketType) -> None:
        self.stream = stream
        self.socket = socket
        self.h11 = h11.Connection(h11.CLIENT)

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

    __slots__ = ("_host", "_port", "_tls", "_hostname", "_target", "_headers", "_raw_headers", "_idle",
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
        # request; each post then builds the same list with its own length.
        self._headers = [("host", authority), *headers, *extra]
        try:
            checked = h11.Request(method="POST", target=self._target, headers=self._headers)
        except h11.LocalProtocolError as exc:
            raise ValueError(f"not a valid request header: {exc}") from None
        # as h11 checked them (bytes), for `_request`
        self._raw_headers = checked.headers.raw_items()
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
                answer = await self._exchange(conn, body, sent)
            except BaseException:
                await trio.aclose_forcefully(conn.stream)
                raise
            if conn.h11.our_state is h11.DONE and conn.h11.their_state is h11.DONE:
                conn.h11.start_next_cycle()
                self._idle.append(conn)
            else:
                await trio.aclose_forcefully(conn.stream)
            return answer
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

    def _request(self, length: int) -> h11.Request:
        """The POST of a body of `length` bytes. Its headers were validated when the pool
        was made: where h11 takes them as already checked (`_parsed`, what its own parser
        passes), they are not checked again on every request (~a third of h11's work per
        request at 128 connections)."""
        if _PARSED_OK:
            return h11.Request(method=b"POST", target=self._target, _parsed=True,
                               headers=[*self._raw_headers, (b"content-length", b"%d" % length)])
        return h11.Request(method="POST", target=self._target,
                           headers=[*self._headers, ("content-length", str(length))])

    async def _exchange(self, conn: _Connection, body: bytes, sent: Callable[[], None] | None
                        ) -> tuple[int, dict[str, str], bytes]:
        c = conn.h11
        try:
            data = c.send(self._request(len(body)))
            data += c.send(h11.Data(data=body))  # type: ignore[operator]
            data += c.send(h11.EndOfMessage())  # type: ignore[operator]
            await conn.stream.send_all(data)  # type: ignore[arg-type]
            if sent is not None:
                sent()
            status = 0
            headers: dict[str, str] = {}
            chunks: list[bytes] = []
            size = 0
            while True:
                event = c.next_event()
                if event is h11.NEED_DATA:
                    c.receive_data(await conn.stream.receive_some(READ_BYTES))
                    continue
                kind = type(event)
                if kind is h11.Data:
                    chunks.append(event.data)  # type: ignore[union-attr]
                    size += len(event.data)  # type: ignore[union-attr]
                    if size > self.max_body:  # never hold a runaway body whole
                        raise BodyTooLarge(f"response body over {self.max_body // 2**20} MB")
                elif kind is h11.Response:
                    status = event.status_code  # type: ignore[union-attr]
                    headers = {k.decode("latin-1"): v.decode("latin-1")
                               for k, v in event.headers}  # type: ignore[union-attr]
                elif kind is h11.EndOfMessage:
                    break
                elif kind is h11.ConnectionClosed:
                    raise TransportError("the server closed the connection without an answer")
                # InformationalResponse (100 Continue and the like): read on
        except h11.RemoteProtocolError as exc:
            if "closed" in str(exc).lower():  # EOF where h11 wanted more
                raise TransportError("the server closed the connection "
                                     + ("mid-response" if status else "without an answer")) from None
            raise TransportError(f"not an HTTP response: {exc}") from None
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError) as exc:
            raise TransportError(_why(exc)) from None
        content = b"".join(chunks)
        coding = headers.get("content-encoding", "identity").strip().lower()
        if coding not in ("identity", ""):
            content = _decoded(content, coding, self.max_body)
        return status, headers, content

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
