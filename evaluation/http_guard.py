"""HTTP transport hardening for aiohttp servers that face untrusted peers (the miner; the dev engine server).

aiohttp's defaults trust the peer: a refused request's body is still read for up to 10 s ("lingering",
`RequestHandler(lingering_time=10)`: it drains whatever the client keeps sending so the client sees the
answer), a connection may dribble its header for an hour (`keepalive_timeout=3630` is the only clock),
one peer may open any number of connections, and every malformed message is logged with a traceback.
`serve_guarded` starts an application with those closed:

- **Refused means closed.** No lingering read: a response sent while the request's body is unread closes
  the connection at once. Reads from the socket are at most `read_chunk_bytes` at a time and the unread
  body buffer pauses the socket at twice that, so a refused request costs at most ~3 x `read_chunk_bytes`
  (48 KiB by default) of reading past its head, whatever it declared.
- **Timeouts** (defaults in `GuardLimits`): `idle_timeout_s` for a connection waiting for a request
  (at its start and between keep-alive requests), `header_timeout_s` from a request's first byte to the
  end of its head (slowloris), `body_timeout_s` from the end of its head to the end of its body. A timed-out
  connection is closed without an answer: its peer is not sending, so it is not reading either.
- **Per-peer connection limit:** a peer address with `max_connections_per_peer` connections open has
  further ones closed on arrival. Behind a NAT or a load balancer that rewrites source addresses every
  client is one peer: preserve client addresses (Kubernetes: `externalTrafficPolicy: Local`) or raise it.
- **Malformed messages** (bad request lines, over-long headers, bad chunking) are answered 400 by aiohttp
  and logged as one line each, at most `log_lines_per_minute` lines a minute (then one line counting
  those left out). Exceptions in handlers are still logged with their traceback: those are bugs.

Use it instead of `web.AppRunner` + `web.SockSite`:

    sock = socket.socket(); sock.bind(("127.0.0.1", 0))
    site = await serve_guarded(app, sock, GuardLimits(body_timeout_s=30), handler_cancellation=True)
    site.port, site.stats.bytes_received
    await site.stop()

Extra keyword arguments go to `web.AppRunner` (and through it to aiohttp's RequestHandler), except the
ones the guard sets itself (`lingering_time`, `keepalive_timeout`, `read_bufsize`), which are refused.
"""

import asyncio
import logging
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler

log = logging.getLogger("quasar.http")

_SILENCED = logging.getLogger("quasar.http.silenced")
_SILENCED.disabled = True
_GUARDED_HANDLER_ARGS = frozenset({"lingering_time", "keepalive_timeout", "read_bufsize"})


@dataclass(frozen=True)
class GuardLimits:
    """The guard's limits; the defaults suit a validator sending megabyte prompts over the internet."""

    idle_timeout_s: float = 15.0  # no request begun: at a connection's start, between keep-alive requests
    header_timeout_s: float = 10.0  # a request's first byte to the end of its head
    body_timeout_s: float = 60.0  # end of head to end of body: 32 MiB at ~0.5 MB/s
    max_connections_per_peer: int = 32
    read_chunk_bytes: int = 16 * 1024
    log_lines_per_minute: int = 10

    def __post_init__(self) -> None:
        for name in ("idle_timeout_s", "header_timeout_s", "body_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        for name in ("max_connections_per_peer", "read_chunk_bytes", "log_lines_per_minute"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)!r}")


@dataclass
class GuardStats:
    """What the guard saw since the site started (for tests, benchmarks and metrics)."""

    bytes_received: int = 0  # everything read from client sockets, heads and bodies
    connections_refused: int = 0  # over the per-peer limit
    timeouts: Counter[str] = field(default_factory=Counter)  # "idle", "header", "body"
    malformed: int = 0  # messages aiohttp could not parse (each answered 400)


class _LineBudget:
    """At most `per_minute` log lines a minute; the first line after a full minute counts those left out."""

    def __init__(self, per_minute: int) -> None:
        self._per_minute = per_minute
        self._window_start = -60.0
        self._used = 0
        self._left_out = 0

    def log(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._window_start >= 60.0:
            if self._left_out:
                log.warning("%d more such lines left out in the last minute", self._left_out)
            self._window_start, self._used, self._left_out = now, 0, 0
        if self._used < self._per_minute:
            self._used += 1
            log.warning(message, *args)
        else:
            self._left_out += 1


class _Guard:
    """State shared by one site's connections."""

    def __init__(self, limits: GuardLimits) -> None:
        self.limits = limits
        self.stats = GuardStats()
        self.lines = _LineBudget(limits.log_lines_per_minute)
        self.open_per_peer: Counter[str] = Counter()


def _peer_of(transport: asyncio.BaseTransport) -> str:
    peername = transport.get_extra_info("peername")
    return str(peername[0]) if isinstance(peername, tuple) else str(peername)


class _GuardedConnection(RequestHandler):
    """aiohttp's per-connection protocol with the guard's limits and timers.

    `_handle_request` (aiohttp's hook around each request's handler, after its head was parsed) is
    private API: tests/test_http_guard.py pins every behaviour that relies on it.
    """

    def __init__(self, manager: web.Server, guard: _Guard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._peer: str | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._handling = False  # between a request's end of head and its response

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Smaller reads, so the unread body in flight when a request is refused stays small.
        transport.max_size = self._guard.limits.read_chunk_bytes  # type: ignore[attr-defined]
        super().connection_made(transport)
        peer = _peer_of(transport)
        guard = self._guard
        if guard.open_per_peer[peer] >= guard.limits.max_connections_per_peer:
            guard.stats.connections_refused += 1
            guard.lines.log("closed a connection from %s: %d open already", peer, guard.open_per_peer[peer])
            self.force_close()
            return
        self._peer = peer
        guard.open_per_peer[peer] += 1

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_timer()
        if self._peer is not None:
            self._guard.open_per_peer[self._peer] -= 1
            if self._guard.open_per_peer[self._peer] <= 0:
                del self._guard.open_per_peer[self._peer]
            self._peer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._guard.stats.bytes_received += len(data)
        if data and not self._handling and self._timer is None:
            # The first byte of a request: its head must be complete within header_timeout_s.
            self._start_timer(self._guard.limits.header_timeout_s, "header", None)
        super().data_received(data)

    async def _handle_request(
        self,
        request: web.BaseRequest,
        start_time: float | None,
        request_handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]],
    ) -> tuple[web.StreamResponse, bool]:
        self._handling = True
        self._start_timer(self._guard.limits.body_timeout_s, "body", request)
        try:
            return await super()._handle_request(request, start_time, request_handler)
        finally:
            self._handling = False
            self._cancel_timer()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if not isinstance(exc, HttpProcessingError):  # a handler's exception: a bug, worth its traceback
            return super().handle_error(request, status, exc, message)
        # The client's malformed message: one line here, and aiohttp's own traceback silenced.
        self._guard.stats.malformed += 1
        reason = " ".join(str(exc.message).split())[:200]  # one line, whatever the parser put in it
        self._guard.lines.log("malformed HTTP message from %s: %s", self._peer, reason)
        logger, self.logger = self.logger, _SILENCED
        try:
            return super().handle_error(request, status, exc, message)
        finally:
            self.logger = logger

    def _start_timer(self, delay_s: float, kind: str, request: web.BaseRequest | None) -> None:
        self._cancel_timer()
        self._timer = asyncio.get_running_loop().call_later(delay_s, self._expire, kind, request)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self, kind: str, request: web.BaseRequest | None) -> None:
        self._timer = None
        if request is not None and request.content.is_eof():
            return  # the body is in: the handler may take as long as it needs
        self._guard.stats.timeouts[kind] += 1
        self._guard.lines.log("closed a connection from %s: %s timeout", self._peer, kind)
        self.force_close()


class _GuardedServer(web.Server):
    """aiohttp's protocol factory, making guarded connections."""

    def __init__(self, guard: _Guard, plain: web.Server) -> None:
        super().__init__(
            plain.request_handler,
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            **plain._kwargs,
        )
        self._guard = guard

    def __call__(self) -> RequestHandler:
        return _GuardedConnection(self, self._guard, loop=self._loop, **self._kwargs)


class _GuardedRunner(web.AppRunner):
    def __init__(self, app: web.Application, guard: _Guard, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._guard = guard

    async def _make_server(self) -> web.Server:
        return _GuardedServer(self._guard, await super()._make_server())


@dataclass
class GuardedSite:
    """An application served on one socket; `stop()` closes the listener and every connection."""

    host: str
    port: int
    stats: GuardStats
    _runner: web.AppRunner

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def stop(self) -> None:
        await self._runner.cleanup()


async def serve_guarded(
    app: web.Application, sock: socket.socket, limits: GuardLimits | None = None, **runner_args: Any
) -> GuardedSite:
    """Serve `app` on the bound socket `sock` with the guard's limits (see the module's docstring)."""
    clash = _GUARDED_HANDLER_ARGS & runner_args.keys()
    if clash:
        raise ValueError(f"set by the guard, not by callers: {', '.join(sorted(clash))}")
    limits = limits or GuardLimits()
    guard = _Guard(limits)
    runner = _GuardedRunner(
        app,
        guard,
        lingering_time=0,
        keepalive_timeout=limits.idle_timeout_s,
        read_bufsize=limits.read_chunk_bytes,
        **runner_args,
    )
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
    except BaseException:
        await runner.cleanup()
        raise
    host, port = sock.getsockname()[:2]
    return GuardedSite(str(host), int(port), guard.stats, runner)
