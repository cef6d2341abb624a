"""The loopback LLM simulator: a lean keep-alive HTTP/1.1 server on trio + h11.

Routes (both shapes ultra's client speaks):

- `POST /v1/chat/completions`, `POST /chat/completions`: OpenAI-compatible, `Authorization:
  Bearer <key>`, the model in the body.
- `POST /openai/deployments/{deployment}/chat/completions?api-version=...`: Azure, `api-key`
  header; the deployment (`sim-strong-2`) names its model through `canonical_model`.
- `GET /stats`, `POST /stats/reset`, `GET /health`.

One trio task per connection; per request the work is: parse (h11), decode the body
(msgspec), a few dict lookups for accounting and limits, the responder, encode, one
`send_all`. Nothing is logged per request, and never a key: keys are known to /stats
only by `key_fingerprint`.

`GET /stats` answers::

    {"uptime_s", "since_reset_s",
     "total": {counters},
     "keys": {key_fingerprint(key): {counters}},
     "deployments": {deployment: {counters}},        # Azure route only
     "models": {canonical model: {counters}},
     "status": {"200": n, "429": n, ...}}            # chat replies by HTTP status

with counters `requests, accepted, rate_limited, faults, rejected, in_flight,
max_in_flight, max_per_second` (see `accounting.COUNTER_FIELDS`).

Run it with `ultra sim serve`, `python -m ultra.sim.server`, `SimProcess` (a child
process, for tests and the demo) or `serve()` inside a trio nursery.
"""

from __future__ import annotations

import argparse
import http
import os
import signal
import sys
import traceback

import h11
import msgspec
import trio

from ultra.errors import UserError
from ultra.sim.accounting import RouteStats
from ultra.sim.config import SimConfig, from_json, validate
from ultra.sim.process import SimProcess
from ultra.sim.replies import Responder, error_body, load_responder
from ultra.sim.api import AZURE_PREFIX, AZURE_SUFFIX, HANG, LISTENING_PREFIX, Simulator, key_fingerprint

__all__ = ["SimConfig", "SimProcess", "SimServer", "key_fingerprint", "serve", "run", "LISTENING_PREFIX"]

_encode = msgspec.json.encode
_CHAT_PATHS = frozenset({b"/v1/chat/completions", b"/chat/completions"})
_JSON = (b"content-type", b"application/json")
_REASONS = {int(code): code.phrase.encode() for code in http.HTTPStatus}


class SimServer(Simulator):
    """The simulator on keep-alive HTTP/1.1 (h11 over trio): one task per connection."""


    async def connection(self, stream: trio.SocketStream) -> None:
        """Serve one keep-alive connection until the client closes it (or we must)."""
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                req: h11.Request | None = None
                chunks: list[bytes] = []
                while True:
                    event = conn.next_event()
                    kind = type(event)
                    if event is h11.NEED_DATA:
                        conn.receive_data(await stream.receive_some(65536))
                    elif kind is h11.Data:
                        chunks.append(event.data)  # type: ignore[union-attr]
                    elif kind is h11.Request:
                        req = event  # type: ignore[assignment]
                    elif kind is h11.EndOfMessage:
                        break
                    else:  # ConnectionClosed or PAUSED: the client is done with us
                        return
                assert req is not None
                body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                path, _, query = req.target.partition(b"?")
                if req.method == b"POST" and (
                    path in _CHAT_PATHS or (path[:20] == AZURE_PREFIX and path.endswith(AZURE_SUFFIX))
                ):
                    counters: list[RouteStats] = []
                    try:
                        status, payload, extra = await self.chat(req, path, query, body, counters)
                        if status == HANG:
                            await self._hang(stream, conn)
                            return
                        codes = self.stats.status  # chat replies only, not /stats itself
                        codes[status] = codes.get(status, 0) + 1
                        await self._send(stream, conn, status, payload, extra)
                    finally:
                        for c in counters:
                            c.in_flight -= 1
                else:
                    status, payload = self._control(req.method, path)
                    await self._send(stream, conn, status, payload, [])
                if conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except h11.RemoteProtocolError:
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                try:
                    await self._send(stream, conn, 400, error_body("Malformed HTTP request.", "invalid_request_error"), [])
                except Exception:
                    pass
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError):
            pass  # the client went away mid-exchange: nothing to answer
        except Exception as exc:  # a bug here must cost one connection, not the server
            traceback.print_exception(exc, file=sys.stderr)
        finally:
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def _send(
        self, stream: trio.SocketStream, conn: h11.Connection, status: int, body: bytes, extra: list[tuple[bytes, bytes]]
    ) -> None:
        headers = [_JSON, (b"content-length", str(len(body)).encode()), *extra]
        data = conn.send(h11.Response(status_code=status, headers=headers, reason=_REASONS.get(status, b"")))
        data += conn.send(h11.Data(data=body))  # type: ignore[operator]
        data += conn.send(h11.EndOfMessage())  # type: ignore[operator]
        await stream.send_all(data)

    async def _hang(self, stream: trio.SocketStream, conn: h11.Connection) -> None:
        """Say nothing for `hang_s`, but stop as soon as the client gives up (EOF), so a
        hung request never outlives the client that waits for it."""
        with trio.move_on_after(self.config.faults.hang_s):
            while await stream.receive_some(65536):
                pass  # a client may send more on this connection; we ignore it

    def _control(self, method: bytes, path: bytes) -> tuple[int, bytes]:
        if path == b"/health" and method == b"GET":
            return 200, b'{"status":"ok"}'
        if path == b"/stats" and method == b"GET":
            return 200, _encode(self.stats.as_dict(trio.current_time()))
        if path == b"/requests" and method == b"GET":
            return 200, _encode(list(self.recorded))
        if path == b"/stats/reset" and method == b"POST":
            self.reset()
            return 200, b'{"reset":true}'
        if path in (b"/health", b"/stats", b"/stats/reset") or path in _CHAT_PATHS:
            return 405, error_body("Method not allowed.", "invalid_request_error")
        return 404, error_body(f"No route {path.decode('latin-1')}.", "invalid_request_error", "not_found")


async def serve(
    config: SimConfig,
    *,
    responder: Responder | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; reports the bound port through `task_status`.

    `port = await nursery.start(serve, config)`; `responder` overrides `config.responder`.
    """
    listeners = await trio.open_tcp_listeners(config.port, host=config.host)
    task_status.started(listeners[0].socket.getsockname()[1])
    await _serve_on(listeners, config, responder)


async def _serve_on(listeners: list[trio.SocketListener], config: SimConfig, responder: Responder | None) -> None:
    sim = SimServer(config, responder if responder is not None else load_responder(config.responder))
    await trio.serve_listeners(sim.connection, listeners)


async def _watch_stdin(cancel_scope: trio.CancelScope) -> None:
    """Stop when our parent's end of stdin closes: a SimProcess whose parent died
    (even by SIGKILL) must not leave an orphan server behind."""
    stream = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    async with stream:
        while await stream.receive_some(4096):
            pass
    cancel_scope.cancel()


async def _main(config: SimConfig, watch_stdin: bool) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        # Bind before the nursery opens, so a taken port is a plain OSError, not a group.
        listeners = await trio.open_tcp_listeners(config.port, host=config.host)
        port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_serve_on, listeners, config, None)
            print(f"{LISTENING_PREFIX}http://{config.host}:{port}", flush=True)
            if watch_stdin:
                nursery.start_soon(_watch_stdin, nursery.cancel_scope)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


def run(config: SimConfig, *, watch_stdin: bool = False) -> int:
    """Serve in the foreground until SIGINT/SIGTERM; the exit code (0: clean stop)."""
    validate(config)
    load_responder(config.responder)  # fail with one clear line before binding, not later
    try:
        trio.run(_main, config, watch_stdin)
    except OSError as exc:  # typically: the port is taken
        raise UserError(f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}") from None
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m ultra.sim.server --config-json '{...}'`: what SimProcess runs (no typer,
    so the child starts fast)."""
    parser = argparse.ArgumentParser(prog="python -m ultra.sim.server")
    parser.add_argument("--config-json", default="{}", help="a SimConfig as JSON")
    parser.add_argument("--watch-stdin", action="store_true", help="exit when stdin closes")
    args = parser.parse_args(argv)
    try:
        return run(from_json(args.config_json), watch_stdin=args.watch_stdin)
    except UserError as exc:
        print(f"ultra-sim: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
