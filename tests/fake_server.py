"""What the engine doubles share: an aiohttp app served in a thread of its own, on 127.0.0.1 and a free port
unless `at()` names a loopback address and ports (a hollow pod's, tests/e2e/pod_engines.py).

Each double (tests/fake_tgi.py, tests/fake_openai_engines.py) runs its own event loop in a thread, so
synchronous tests (and code that calls `asyncio.run`) can use it; it records every request it gets and
answers `Failure`s queued by the test before generating anything.
"""

import asyncio
import socket
import threading
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from aiohttp import web


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    body: Any  # the parsed JSON body, or None
    headers: dict[str, str]


@dataclass
class Failure:
    """An HTTP error to answer instead of a generation: a JSON body is sent as JSON, a str as text."""

    status: int
    body: dict[str, Any] | str

    def response(self) -> web.Response:
        if isinstance(self.body, str):
            return web.Response(status=self.status, text=self.body)
        return web.json_response(self.body, status=self.status)


class ThreadedServer:
    """Start/stop and the context manager around `_app()`; subclasses build the app and name the thread."""

    thread_name = "fake-server"
    host = "127.0.0.1"
    port = 0  # the first port served
    _ports: tuple[int, ...] = (0,)  # 0: a free one
    _loop: asyncio.AbstractEventLoop | None = None
    _runner: web.AppRunner | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def at(self, host: str, *ports: int) -> Self:
        """Serve on `host` (a loopback address), the same app on each of `ports`, once started."""
        self.host, self._ports = host, ports
        return self

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        sockets = []
        for port in self._ports:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a pod's port served again
            sock.bind((self.host, port))
            sockets.append(sock)
        self.port = sockets[0].getsockname()[1]
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._serve, args=(sockets, ready), name=self.thread_name, daemon=True
        )
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError(f"{self.thread_name} did not start")

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
        self._loop = self._thread = self._runner = None

    def _app(self) -> web.Application:
        raise NotImplementedError

    def _on_loop(self) -> None:
        """Runs in the server's thread before serving: for state bound to its event loop."""

    def _serve(self, sockets: list[socket.socket], ready: threading.Event) -> None:
        assert self._loop is not None
        asyncio.set_event_loop(self._loop)
        self._on_loop()
        # A client hanging up cancels its handler, as the real servers abort the request; handlers still
        # sleeping in a latency are not waited for long when the server stops.
        self._runner = web.AppRunner(
            self._app(), handle_signals=False, handler_cancellation=True, shutdown_timeout=0.5
        )
        self._loop.run_until_complete(self._runner.setup())
        for sock in sockets:
            self._loop.run_until_complete(web.SockSite(self._runner, sock).start())
        ready.set()
        self._loop.run_forever()
