"""evaluation.http_guard over real loopback sockets: what a hostile client can make a guarded server do."""

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

import pytest
from aiohttp import web

from evaluation.http_guard import GuardedSite, GuardLimits, serve_guarded

T = TypeVar("T")
REFUSED_READ_LIMIT = 64 * 1024  # issue 10: a refused request costs at most this much reading
SHORT = 0.2  # seconds: timeouts short enough for a test; nothing here asserts a duration


async def refuse_unread(request: web.Request) -> web.Response:
    """Refuses without reading the body, as the miner does for a caller without a permit."""
    response = web.Response(status=401, text="who are you?")
    response.force_close()
    return response


async def echo_size(request: web.Request) -> web.Response:
    return web.Response(text=str(len(await request.read())))


@asynccontextmanager
async def guarded(limits: GuardLimits) -> AsyncIterator[GuardedSite]:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/refuse", refuse_unread)
    app.router.add_post("/echo", echo_size)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    site = await serve_guarded(app, sock, limits)
    try:
        yield site
    finally:
        await site.stop()


def run(limits: GuardLimits, use: Callable[[GuardedSite], Awaitable[T]]) -> T:
    async def go() -> T:
        async with guarded(limits) as site:
            return await use(site)

    return asyncio.run(go())


async def connect(site: GuardedSite) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", site.port)


async def closed_by_server(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection (a reset counts as closed)."""
    try:
        return await asyncio.wait_for(reader.read(), 10)
    except ConnectionResetError:
        return b""


def head(path: str, content_length: int) -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {content_length}\r\n\r\n".encode()


@pytest.mark.parametrize("declared", [32 * 1024 * 1024, 10 * 1024**3])
def test_a_refused_body_is_not_read_past_64_kib(declared: int) -> None:
    async def use(site: GuardedSite) -> tuple[bytes, int, int]:
        reader, writer = await connect(site)
        request_head = head("/refuse", declared)
        writer.write(request_head)
        sent = 0
        chunk = b"x" * 65536
        try:  # send until the server's close stops us: far more than it may read
            while sent < declared and sent < 64 * 1024 * 1024:
                writer.write(chunk)
                await writer.drain()
                sent += len(chunk)
        except ConnectionError:
            pass
        answer = await closed_by_server(reader)
        writer.close()
        return answer, site.stats.bytes_received - len(request_head), sent

    answer, body_bytes_read, sent = run(GuardLimits(), use)
    assert answer.startswith(b"HTTP/1.1 401") or answer == b""  # the answer may be lost to the reset
    assert body_bytes_read <= REFUSED_READ_LIMIT
    assert sent > body_bytes_read  # the client did try to send more than was read


def test_keep_alive_and_whole_bodies_still_work() -> None:
    async def use(site: GuardedSite) -> list[bytes]:
        reader, writer = await connect(site)
        answers = []
        for size in (0, 1_000_000):
            writer.write(head("/echo", size) + b"y" * size)
            status = await reader.readline()
            headers = await reader.readuntil(b"\r\n\r\n")
            length = int(headers.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            answers.append(status.strip() + b" " + await reader.readexactly(length))
        writer.close()
        return answers

    assert run(GuardLimits(read_chunk_bytes=4096), use) == [b"HTTP/1.1 200 OK 0", b"HTTP/1.1 200 OK 1000000"]


def test_a_slowloris_header_is_cut_at_the_header_timeout() -> None:
    async def use(site: GuardedSite) -> tuple[bool, int]:
        reader, writer = await connect(site)
        writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\n")
        cut = False
        for _ in range(200):  # a header line every 50 ms, for up to 10 s
            try:
                writer.write(b"X-Slow: 1\r\n")
                await writer.drain()
            except ConnectionError:
                cut = True
                break
            if reader.at_eof():
                cut = True
                break
            await asyncio.sleep(0.05)
            await asyncio.sleep(0)
        writer.close()
        return cut, site.stats.timeouts["header"]

    assert run(GuardLimits(header_timeout_s=SHORT, idle_timeout_s=60), use) == (True, 1)


def test_a_dribbled_body_is_cut_at_the_body_timeout() -> None:
    async def use(site: GuardedSite) -> tuple[bytes, int]:
        reader, writer = await connect(site)
        writer.write(head("/echo", 1000))
        for _ in range(5):
            writer.write(b"z")
            await asyncio.sleep(SHORT)
        answer = await closed_by_server(reader)
        writer.close()
        return answer, site.stats.timeouts["body"]

    assert run(GuardLimits(body_timeout_s=SHORT), use) == (b"", 1)


def test_an_idle_connection_is_closed_at_the_idle_timeout() -> None:
    async def use(site: GuardedSite) -> bytes:
        reader, writer = await connect(site)
        answer = await closed_by_server(reader)
        writer.close()
        return answer

    assert run(GuardLimits(idle_timeout_s=SHORT), use) == b""


def test_a_peer_gets_at_most_its_connection_limit() -> None:
    async def use(site: GuardedSite) -> tuple[bytes, bytes, int]:
        kept = [await connect(site) for _ in range(2)]
        reader, writer = await connect(site)
        over = await closed_by_server(reader)
        writer.close()
        kept_reader, kept_writer = kept.pop()
        kept_writer.close()
        await closed_by_server(kept_reader)
        for _ in range(100):  # the server sees the close on its next loop turns
            if site.stats.connections_refused and len(kept) == 1:
                reader, writer = await connect(site)
                writer.write(head("/echo", 0))
                answer = await reader.readline()
                writer.close()
                if answer:
                    break
            await asyncio.sleep(0.01)
        return over, answer, site.stats.connections_refused

    over, answer, refused = run(GuardLimits(max_connections_per_peer=2), use)
    assert over == b""
    assert answer.startswith(b"HTTP/1.1 200")
    assert refused == 1


def test_malformed_messages_are_one_line_each_and_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    garbage = [
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
        b"POST / HTTP/9\r\n\r\n",
        b"\x16\x03\x01junk\r\n\r\n",
    ]

    async def use(site: GuardedSite) -> list[bytes]:
        answers = []
        for index in range(30):
            reader, writer = await connect(site)
            writer.write(garbage[index % len(garbage)])
            answers.append(await closed_by_server(reader))
            writer.close()
        return answers

    with (
        caplog.at_level(logging.DEBUG, logger="aiohttp"),
        caplog.at_level(logging.INFO, logger="quasar.http"),
    ):
        answers = run(GuardLimits(log_lines_per_minute=5), use)
    assert all(answer.split(b"\r\n")[0].endswith(b" 400 Bad Request") for answer in answers), answers
    assert [r.name for r in caplog.records if r.name.startswith("aiohttp.server")] == []  # no tracebacks
    lines = [r for r in caplog.records if r.name == "quasar.http"]
    assert len(lines) == 5
    assert all(r.exc_info is None and "\n" not in r.getMessage() for r in lines)


def test_the_guards_own_settings_cannot_be_overridden() -> None:
    async def go() -> None:
        with socket.socket() as sock:
            await serve_guarded(web.Application(), sock, lingering_time=10)

    with pytest.raises(ValueError, match="lingering_time"):
        asyncio.run(go())


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="header_timeout_s"):
        GuardLimits(header_timeout_s=0)
    with pytest.raises(ValueError, match="max_connections_per_peer"):
        GuardLimits(max_connections_per_peer=0)
