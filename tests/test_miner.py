"""The miner over real loopback HTTP: real btauth signatures from wallets made offline, the fake chain,
and the fake TGI server behind evaluation.engines' real client."""

import asyncio
import gzip
import json
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp
import bittensor
import pytest

from evaluation.dev_engine.server import start_engine_server
from evaluation.engines import EngineError, EngineInfo, EngineKind, Generation, make_engine
from evaluation.errors import InputError
from evaluation.local_model import ensure_local_model
from evaluation.tasks import TASKS
from neurons import protocol
from neurons.auth import create_wallet, signed_headers
from neurons.chain import Chain, ChainError, FakeChain, MetagraphSnapshot, WeightLimits
from neurons.miner import (
    DEFAULT_MAX_NEW_TOKENS,
    MinerConfig,
    RunningMiner,
    build_parser,
    classify_engine_error,
    config_from_args,
    deadline_budget,
    engine_label,
    main,
    start_miner,
)
from tests.fake_tgi import FakeTGI

ROOT = Path(__file__).resolve().parents[1]
T = TypeVar("T")
VALIDATOR_STAKE = 10_000.0


@dataclass(frozen=True)
class Wallets:
    miner: bittensor.Wallet
    validator: bittensor.Wallet
    outsider: bittensor.Wallet  # not registered
    no_permit: bittensor.Wallet
    low_stake: bittensor.Wallet


@pytest.fixture(scope="module")
def wallets(tmp_path_factory: pytest.TempPathFactory) -> Wallets:
    path = tmp_path_factory.mktemp("wallets")
    return Wallets(*(create_wallet(name, "hotkey", str(path)) for name in ("m", "v", "o", "n", "l")))


def hotkey(wallet: bittensor.Wallet) -> str:
    address: str = wallet.hotkey.ss58_address
    return address


@pytest.fixture
def chain(wallets: Wallets) -> FakeChain:
    fake = FakeChain(netuid=7)
    fake.register(hotkey(wallets.miner))
    fake.register(hotkey(wallets.validator), stake=VALIDATOR_STAKE, validator_permit=True)
    fake.register(hotkey(wallets.no_permit), stake=VALIDATOR_STAKE, validator_permit=False)
    fake.register(hotkey(wallets.low_stake), stake=10.0, validator_permit=True)
    return fake


@pytest.fixture
def tgi() -> Iterator[FakeTGI]:
    with FakeTGI(answer="the answer") as server:
        yield server


@dataclass
class Client:
    """Posts queries to one running miner, signed by a wallet of the test's choosing."""

    miner: RunningMiner
    session: aiohttp.ClientSession
    miner_hotkey: str

    async def post(
        self,
        body: bytes,
        signer: bittensor.Wallet | None,
        *,
        receiver: str | None = None,
        signed_body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        sent = dict(protocol.REQUEST_HEADERS)
        if signer is not None:
            sent |= signed_headers(signer, signed_body or body, receiver or self.miner_hotkey)
        sent |= headers or {}
        async with self.session.post(self.miner.url + protocol.QUERY_PATH, data=body, headers=sent) as reply:
            return reply.status, json.loads(await reply.read())

    async def get(self, path: str) -> tuple[int, str]:
        """GET `path` on the axon, the port validators reach."""
        async with self.session.get(self.miner.url + path) as reply:
            return reply.status, await reply.text()

    async def metrics(self) -> str:
        """The Prometheus page, from the metrics listener."""
        async with self.session.get(self.miner.metrics_url) as reply:
            assert reply.status == 200, self.miner.metrics_url
            return await reply.text()


def query(
    prompt: str = "What is the answer?", deadline_in_s: float = 30.0, max_new_tokens: int = 16
) -> bytes:
    return protocol.encode_request(
        protocol.QueryRequest(
            version=protocol.PROTOCOL_VERSION,
            task_id="task-1",
            task="needle",
            bucket="32k",
            prompt=prompt,
            max_new_tokens=max_new_tokens,
            deadline_unix=time.time() + deadline_in_s,
        )
    )


def raw_query(**changes: Any) -> bytes:
    """A request body with fields encode_request would refuse to write."""
    fields = json.loads(gzip.decompress(query()))
    return gzip.compress(json.dumps(fields | changes).encode())


@asynccontextmanager
async def serving(
    wallets: Wallets,
    chain: FakeChain,
    engine_url: str,
    engine_kind: EngineKind = "tgi",
    **config_changes: Any,
) -> AsyncIterator[Client]:
    config = replace(MinerConfig(netuid=7, sync_interval_s=0.05, engine_probe_ttl_s=0.0), **config_changes)
    model = config.model_name if engine_kind != "tgi" else None
    engine = make_engine(engine_kind, engine_url, model, 30.0, config.engine_api)
    miner = await start_miner(config, chain.view(hotkey(wallets.miner)), engine)
    try:
        async with aiohttp.ClientSession() as session:
            yield Client(miner, session, hotkey(wallets.miner))
    finally:
        await miner.stop()
        await engine.aclose()


def run(
    wallets: Wallets, chain: FakeChain, engine_url: str, use: Callable[[Client], Awaitable[T]], **kw: Any
) -> T:
    async def go() -> T:
        async with serving(wallets, chain, engine_url, **kw) as client:
            return await use(client)

    return asyncio.run(go())


def generations(server: FakeTGI) -> list[str]:
    return [request.path for request in server.requests if request.method == "POST"]


def metric(page: str, name: str) -> float:
    """The value of one sample line (`name{labels} value`) on a Prometheus page; 0 when absent."""
    for line in page.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def until(check: Callable[[], Awaitable[bool]]) -> None:
    for _ in range(200):  # metagraph syncs run every 50 ms in these tests
        if await check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached in 2 s")


# ---------------------------------------------------------------------------------------------------------
# Queries


def test_answers_a_signed_query_with_the_engine_and_model(
    wallets: Wallets, chain: FakeChain, tgi: FakeTGI
) -> None:
    async def use(client: Client) -> tuple[int, dict[str, Any], str]:
        status, body = await client.post(query("Where is the needle?", max_new_tokens=8), wallets.validator)
        return status, body, await client.metrics()

    status, body, page = run(wallets, chain, tgi.url, use)
    assert status == 200, body
    answer = protocol.decode_response(json.dumps(body).encode())
    assert answer.task_id == "task-1"
    assert answer.text == "the answer"
    assert answer.completion_tokens == 2
    assert answer.prompt_tokens is None  # TGI does not count the prompt cheaply
    assert answer.engine == "tgi"  # the engine's kind, not its internal URL
    assert answer.model == "fake/model"  # from the engine's /info
    assert 0 < answer.engine_latency_s <= answer.total_latency_s
    [generation] = [r for r in tgi.requests if r.method == "POST"]
    assert generation.body["inputs"] == "Where is the needle?"
    assert generation.body["parameters"]["max_new_tokens"] == 8
    assert metric(page, 'quasar_miner_requests_total{outcome="ok"}') == 1
    assert metric(page, "quasar_miner_completion_tokens_total") == 2
    assert metric(page, "quasar_miner_in_flight") == 0
    assert metric(page, 'quasar_miner_request_duration_seconds_count{outcome="ok"}') == 1


def test_openai_engine_gets_the_model_name_and_counts_prompt_tokens(
    wallets: Wallets, chain: FakeChain, tgi: FakeTGI
) -> None:
    async def use(client: Client) -> tuple[int, dict[str, Any], str]:
        status, body = await client.post(query("one two three four"), wallets.validator)
        return status, body, await client.metrics()

    status, body, page = run(wallets, chain, tgi.url, use, engine_kind="openai", model_name="fake/model")
    assert status == 200, body
    assert (body["engine"], body["model"], body["prompt_tokens"]) == ("openai", "fake/model", 4)
    [chat] = [r for r in tgi.requests if r.path == "/v1/chat/completions"]
    assert chat.body["model"] == "fake/model"
    assert metric(page, "quasar_miner_prompt_tokens_total") == 4


@pytest.mark.parametrize(
    ("caller", "rule"),
    [("outsider", "registered"), ("no_permit", "validator_permit"), ("low_stake", "min_stake")],
)
def test_refuses_callers_that_are_not_staked_validators(
    wallets: Wallets, chain: FakeChain, tgi: FakeTGI, caller: str, rule: str
) -> None:
    # The body is not even gzip: a 403 rather than a 400 shows the permit check ran before any parsing.
    status, body = run(
        wallets, chain, tgi.url, lambda client: client.post(b"not gzip", getattr(wallets, caller))
    )
    assert status == 403
    assert body["rule"] == rule
    assert body["error"] == "forbidden"
    assert generations(tgi) == []


def test_min_stake_flag_takes_effect(wallets: Wallets, chain: FakeChain, tgi: FakeTGI) -> None:
    status, body = run(
        wallets,
        chain,
        tgi.url,
        lambda client: client.post(query(), wallets.low_stake),
        min_stake=5.0,
    )
    assert status == 200, body


def test_refuses_bad_signatures_replays_and_tampering(
    wallets: Wallets, chain: FakeChain, tgi: FakeTGI
) -> None:
    async def use(client: Client) -> list[tuple[int, dict[str, Any]]]:
        body = query()
        headers = signed_headers(wallets.validator, body, client.miner_hotkey)
        forged = headers | {"X-Bittensor-Signature": "0x" + "00" * 64}
        return [
            await client.post(body, None),  # no signature headers at all
            await client.post(body, None, headers=forged),
            await client.post(query(prompt="tampered"), wallets.validator, signed_body=body),
            await client.post(body, wallets.validator, receiver=hotkey(wallets.outsider)),
            await client.post(body, None, headers=headers),  # first use of these headers
            await client.post(body, None, headers=headers),  # the same nonce again
        ]

    results = run(wallets, chain, tgi.url, use)
    statuses = [status for status, _ in results]
    assert statuses == [401, 401, 401, 401, 200, 401]
    assert [body["code"] for _, body in results if "code" in body] == [
        "malformed",
        "bad_signature",
        "bad_signature",
        "wrong_receiver",
        "replayed",
    ]
    reasons = [body.get("reason", "") for _, body in results]
    assert "missing" in reasons[0]
    assert "signature" in reasons[1]
    assert "signature" in reasons[2]
    assert "receiv" in reasons[3]
    assert "already" in reasons[5]
    assert len(generations(tgi)) == 1


async def send_head(
    port: int, headers: Mapping[str, str], content_length: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A query's request line and headers on a raw connection, without its body."""
    head = [f"POST {protocol.QUERY_PATH} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    head += [f"{name}: {value}" for name, value in headers.items()]
    head.append(f"Content-Length: {content_length}")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
    await writer.drain()
    return reader, writer


async def exchange(port: int, headers: Sequence[tuple[str, str]], body: bytes) -> tuple[int, dict[str, Any]]:
    """One query over a raw connection, headers sent exactly as listed (repeats included); the status and
    JSON body of the answer."""
    head = [f"POST {protocol.QUERY_PATH} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close"]
    head += [f"{name}: {value}" for name, value in headers]
    head.append(f"Content-Length: {len(body)}")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), json.loads(rest.partition(b"\r\n\r\n")[2])


@pytest.mark.parametrize("validator_first", [True, False])
def test_a_repeated_hotkey_header_is_refused_before_the_engine(
    wallets: Wallets, chain: FakeChain, tgi: FakeTGI, validator_first: bool
) -> None:
    """Issue 10's bypass: a validator's hotkey next to the outsider's own, whose headers the outsider signed.
    The permit check and the signature check must not read different occurrences."""

    async def use(client: Client) -> tuple[int, dict[str, Any]]:
        body = query()
        own = signed_headers(wallets.outsider, body, client.miner_hotkey)
        borrowed = ("X-Bittensor-Hotkey", hotkey(wallets.validator))
        signed = [(name, value) for name, value in own.items()]
        pairs = [borrowed, *signed] if validator_first else [*signed, borrowed]
        return await exchange(client.miner.port, [*protocol.REQUEST_HEADERS.items(), *pairs], body)

    status, body = run(wallets, chain, tgi.url, use)
    assert status in (400, 401, 403), body
    assert "X-Bittensor-Hotkey" in body["reason"]
    assert generations(tgi) == []


def test_oversize_body_is_refused_from_its_declared_length(
    wallets: Wallets, chain: FakeChain, tgi: FakeTGI
) -> None:
    """Only the headers are sent: the 413 must come without the miner waiting for the body."""

    async def use(client: Client) -> bytes:
        headers = signed_headers(wallets.validator, b"", client.miner_hotkey)
        reader, writer = await send_head(client.miner.port, headers, protocol.MAX_BODY_BYTES + 1)
        status_line = await asyncio.wait_for(reader.readline(), 5)
        writer.close()
        return status_line

    assert run(wallets, chain, tgi.url, use).startswith(b"HTTP/1.1 413")


def test_expect_continue_is_answered_only_after_the_header_checks(
    wallets: Wallets, chain: FakeChain, tgi: FakeTGI
) -> None:
    """curl sends `Expect: 100-continue` with large bodies: a refused caller must not be invited to send."""

    async def use(client: Client) -> list[bytes]:
        body = query()
        expect = {"Expect": "100-continue"} | protocol.REQUEST_HEADERS
        outsider = expect | signed_headers(wallets.outsider, body, client.miner_hotkey)
        reader, writer = await send_head(client.miner.port, outsider, len(body))
        lines = [await asyncio.wait_for(reader.readline(), 5)]
        writer.close()
        validator = expect | signed_headers(wallets.validator, body, client.miner_hotkey)
        reader, writer = await send_head(client.miner.port, validator, len(body))
        lines.append(await asyncio.wait_for(reader.readline(), 5))
        await reader.readline()  # the blank line ending the interim response
        writer.write(body)
        lines.append(await asyncio.wait_for(reader.readline(), 5))
        writer.close()
        return lines

    forbidden, go_on, answered = run(wallets, chain, tgi.url, use)
    assert forbidden.startswith(b"HTTP/1.1 403")
    assert go_on.startswith(b"HTTP/1.1 100")
    assert answered.startswith(b"HTTP/1.1 200")


def test_oversize_chunked_body_is_cut_off_while_read(
    wallets: Wallets, chain: FakeChain, tgi: FakeTGI
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(protocol.MAX_BODY_BYTES // (1 << 20) + 1):
            yield b"x" * (1 << 20)

    async def use(client: Client) -> tuple[int, dict[str, Any]]:
        # No Content-Length: the declared-size check cannot see it; the read must stop at the limit.
        headers = protocol.REQUEST_HEADERS | signed_headers(wallets.validator, b"", client.miner_hotkey)
        url = client.miner.url + protocol.QUERY_PATH
        async with client.session.post(url, data=chunks(), headers=headers) as reply:
            return reply.status, json.loads(await reply.read())

    status, body = run(wallets, chain, tgi.url, use)
    assert status == 413
    assert body["max_body_bytes"] == protocol.MAX_BODY_BYTES


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"not gzip", "body"),
        (gzip.compress(b"[1, 2]"), "body"),
        (raw_query(max_new_tokens=0), "max_new_tokens"),
        (raw_query(prompt=7), "prompt"),
        (raw_query(version=99), "version"),
        # Legal JSON escapes of half a surrogate pair: a 500 once the engine call or the answer encoded them.
        (raw_query(prompt="before \ud800 after"), "prompt"),
        (raw_query(task_id="\udfff"), "task_id"),
        (raw_query(**{"\ud800": 1}), "\\ud800"),
        (raw_query(prompt=[[[["deep"]]]]), "prompt"),
        (gzip.compress(b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"), "body"),
        (raw_query(max_new_tokens=10**4000), "max_new_tokens"),
        (raw_query(max_new_tokens=DEFAULT_MAX_NEW_TOKENS + 1), "max_new_tokens"),
        (raw_query(deadline_unix=10**400), "deadline_unix"),
        (raw_query(deadline_unix=[time.time() + 30]), "deadline_unix"),
        (raw_query(max_new_tokens={"n": 1}), "max_new_tokens"),
        (raw_query(bucket=None), "bucket"),
    ],
)
def test_bad_bodies_get_400_naming_the_field(
    wallets: Wallets, chain: FakeChain, tgi: FakeTGI, body: bytes, field: str
) -> None:
    status, reply = run(wallets, chain, tgi.url, lambda client: client.post(body, wallets.validator))
    assert status == 400
    assert reply["field"] == field
    assert field in reply["reason"]
    assert generations(tgi) == []


def test_max_new_tokens_cap_defaults_to_the_largest_task_output_and_is_a_flag(
    wallets: Wallets, chain: FakeChain, tgi: FakeTGI
) -> None:
    assert max(task.max_new_tokens for task in TASKS.values()) == DEFAULT_MAX_NEW_TOKENS

    async def use(client: Client) -> list[tuple[int, dict[str, Any]]]:
        return [
            await client.post(query(max_new_tokens=8), wallets.validator),
            await client.post(query(max_new_tokens=9), wallets.validator),
        ]

    (at_cap, _), (over, refusal) = run(wallets, chain, tgi.url, use, max_new_tokens=8)
    assert (at_cap, over) == (200, 400)
    assert (refusal["field"], refusal["max_new_tokens"]) == ("max_new_tokens", 8)
    assert [r.body["parameters"]["max_new_tokens"] for r in tgi.requests if r.method == "POST"] == [8]


class StallingEngine:
    """An engine whose /info stops answering once `stalled` is set (a wedged router)."""

    name = "stalling"

    def __init__(self) -> None:
        self.stalled = False
        self.generations = 0

    async def info(self) -> EngineInfo:
        if self.stalled:
            await asyncio.sleep(3600)
        return EngineInfo("fake/model", None, None)

    async def generate(self, prompt: str, max_new_tokens: int) -> Generation:
        self.generations += 1
        return Generation("x", None, 1, 0.0)

    async def aclose(self) -> None:
        pass


def test_the_engine_probe_is_bounded_by_the_deadline_too(wallets: Wallets, chain: FakeChain) -> None:
    """The /info probe has its own 10 s limit (a 503); a query's deadline must end it first (a 504)."""
    engine = StallingEngine()

    async def go() -> tuple[int, dict[str, Any]]:
        config = MinerConfig(netuid=7, sync_interval_s=0.05, engine_probe_ttl_s=0.0)
        miner = await start_miner(config, chain.view(hotkey(wallets.miner)), engine)
        engine.stalled = True
        try:
            async with aiohttp.ClientSession() as session:
                client = Client(miner, session, hotkey(wallets.miner))
                return await client.post(query(deadline_in_s=0.5), wallets.validator)
        finally:
            await miner.stop()

    status, body = asyncio.run(go())
    assert status == 504, body
    assert "the request's deadline" in body["reason"]
    assert engine.generations == 0


def test_expired_deadline_gets_408_without_asking_the_engine(
    wallets: Wallets, chain: FakeChain, tgi: FakeTGI
) -> None:
    status, body = run(
        wallets, chain, tgi.url, lambda client: client.post(query(deadline_in_s=-1), wallets.validator)
    )
    assert status == 408
    assert "deadline" in body["reason"]
    assert generations(tgi) == []


def test_engine_down_gets_503_fast(wallets: Wallets, chain: FakeChain) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        closed_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    started = time.monotonic()
    status, body = run(wallets, chain, closed_url, lambda client: client.post(query(), wallets.validator))
    assert status == 503
    assert body["error"] == "engine_down"
    assert time.monotonic() - started < 2


def test_engine_going_down_mid_run_gets_503(wallets: Wallets, chain: FakeChain, tgi: FakeTGI) -> None:
    async def use(client: Client) -> list[int]:
        statuses = [(await client.post(query(), wallets.validator))[0]]
        await asyncio.to_thread(tgi.stop)
        statuses.append((await client.post(query(), wallets.validator))[0])
        statuses.append((await client.get("/readyz"))[0])
        return statuses

    assert run(wallets, chain, tgi.url, use) == [200, 503, 503]


def test_prompt_over_the_engine_limit_gets_413_with_the_numbers(
    wallets: Wallets, chain: FakeChain, tgi: FakeTGI
) -> None:
    tgi.max_input_tokens = 5
    status, body = run(
        wallets, chain, tgi.url, lambda client: client.post(query("a b c d e f g h i j"), wallets.validator)
    )
    assert status == 413
    assert body["error"] == "too_large"
    assert "less than 5 tokens" in body["reason"]
    assert "Given: 10" in body["reason"]
    assert body["max_input_tokens"] == 5
    assert body["max_total_tokens"] == 4096


def test_engine_slower_than_the_deadline_gets_504(wallets: Wallets, chain: FakeChain, tgi: FakeTGI) -> None:
    tgi.latency_s = 5.0
    started = time.monotonic()
    status, body = run(
        wallets, chain, tgi.url, lambda client: client.post(query(deadline_in_s=0.5), wallets.validator)
    )
    assert status == 504
    assert body["error"] == "timeout"
    assert "the request's deadline" in body["reason"]
    assert time.monotonic() - started < 3


def test_a_validator_hanging_up_cancels_its_query(wallets: Wallets, chain: FakeChain, tgi: FakeTGI) -> None:
    tgi.latency_s = 5.0

    async def use(client: Client) -> str:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await client.post(query(), wallets.validator)

        async def counted() -> bool:
            page = await client.metrics()
            return metric(page, 'quasar_miner_requests_total{outcome="cancelled"}') == 1

        await until(counted)
        return await client.metrics()

    started = time.monotonic()
    page = run(wallets, chain, tgi.url, use)
    assert metric(page, "quasar_miner_in_flight") == 0
    assert time.monotonic() - started < 3  # not held up by the engine's 5 s


def test_keeps_serving_after_every_kind_of_error_and_counts_outcomes(
    wallets: Wallets, chain: FakeChain, tgi: FakeTGI
) -> None:
    async def use(client: Client) -> tuple[list[int], str]:
        statuses = [
            (await client.post(b"junk", wallets.outsider))[0],
            (await client.post(b"junk", None))[0],
            (await client.post(b"junk", wallets.validator))[0],
            (await client.post(query(deadline_in_s=-1), wallets.validator))[0],
            (await client.post(query(), wallets.validator))[0],
        ]
        return statuses, await client.metrics()

    statuses, page = run(wallets, chain, tgi.url, use)
    assert statuses == [403, 401, 400, 408, 200]
    for outcome in ("forbidden", "unauthorized", "bad_request", "expired", "ok"):
        assert metric(page, f'quasar_miner_requests_total{{outcome="{outcome}"}}') == 1, outcome


class FlakyChain:
    """A FakeChain view whose reads fail while `down` is set, as an unreachable chain's would."""

    def __init__(self, view: Chain) -> None:
        self._view = view
        self.hotkey = view.hotkey
        self.down = False

    async def snapshot(self) -> MetagraphSnapshot:
        if self.down:
            raise ChainError("injected: the chain endpoint does not answer")
        return await self._view.snapshot()

    async def serve(self, ip: str, port: int) -> None:
        await self._view.serve(ip, port)

    async def set_weights(self, uids: Sequence[int], weights: Sequence[float]) -> None:
        raise AssertionError("a miner sets no weights")

    async def weight_limits(self) -> WeightLimits:
        raise AssertionError("a miner sets no weights")


def test_metagraph_changes_take_effect_and_an_unreachable_chain_keeps_the_last_snapshot(
    wallets: Wallets, chain: FakeChain, tgi: FakeTGI
) -> None:
    flaky = FlakyChain(chain.view(hotkey(wallets.miner)))

    async def go() -> list[int]:
        config = MinerConfig(netuid=7, sync_interval_s=0.05, engine_probe_ttl_s=0.0)
        flaky.down = True  # no metagraph at start: callers cannot be checked
        engine = make_engine("tgi", tgi.url, None, 30.0)
        miner = await start_miner(config, flaky, engine)
        try:
            async with aiohttp.ClientSession() as session:
                client = Client(miner, session, hotkey(wallets.miner))

                async def status() -> int:
                    return (await client.post(query(), wallets.validator))[0]

                statuses = [await status()]
                flaky.down = False
                await until(lambda: _is_ready(client))
                statuses.append(await status())
                flaky.down = True  # the last snapshot still serves
                statuses.append(await status())
                flaky.down = False
                uid = chain.uid_of(hotkey(wallets.validator))
                assert uid is not None
                chain.set_validator_permit(uid, False)

                async def refused() -> bool:
                    return await status() == 403

                await until(refused)
                return statuses
        finally:
            await miner.stop()
            await engine.aclose()

    assert asyncio.run(go()) == [503, 200, 200]


async def _is_ready(client: Client) -> bool:
    return (await client.get("/readyz"))[0] == 200


# ---------------------------------------------------------------------------------------------------------
# Probes


def test_healthz_and_readyz_once_served_on_chain_with_the_engine_up(wallets: Wallets, tgi: FakeTGI) -> None:
    chain = FakeChain(netuid=7)  # the miner's hotkey registers only after the miner starts

    async def use(client: Client) -> tuple[list[tuple[int, str]], Any]:
        probes = [await client.get("/healthz"), await client.get("/readyz")]
        chain.register(hotkey(wallets.miner))
        for _ in range(100):  # the next metagraph sync announces the endpoint
            probes.append(await client.get("/readyz"))
            if probes[-1][0] == 200:
                break
            await asyncio.sleep(0.02)
        snapshot = await chain.view(client.miner_hotkey).snapshot()
        neuron = snapshot.by_hotkey(client.miner_hotkey)
        return probes, neuron.endpoint if neuron else None

    probes, endpoint = run(wallets, chain, tgi.url, use)
    assert probes[0][0] == 200
    assert probes[1][0] == 503
    assert "not registered" in probes[1][1]
    assert probes[-1][0] == 200
    assert endpoint[1] > 0
    assert endpoint[0] == "127.0.0.1"


def test_readyz_and_queries_refuse_an_engine_serving_another_model(
    wallets: Wallets, chain: FakeChain, tgi: FakeTGI
) -> None:
    async def use(client: Client) -> tuple[tuple[int, str], tuple[int, dict[str, Any]]]:
        return await client.get("/readyz"), await client.post(query(), wallets.validator)

    (ready, problems), (status, body) = run(wallets, chain, tgi.url, use, model_name="other/model")
    assert ready == 503
    assert "other/model" in problems
    assert status == 503
    assert "'fake/model'" in body["reason"]
    assert generations(tgi) == []


# ---------------------------------------------------------------------------------------------------------
# Metrics, on a listener of their own


def test_metrics_are_served_apart_from_the_axon_which_keeps_the_probes(
    wallets: Wallets, chain: FakeChain, tgi: FakeTGI
) -> None:
    async def use(client: Client) -> tuple[list[int], dict[str, int], str]:
        assert (await client.post(query(), wallets.validator))[0] == 200
        await until(lambda: _is_ready(client))
        on_axon = [(await client.get(path))[0] for path in ("/metrics", "/healthz", "/readyz")]
        listener = client.miner.metrics_url.removesuffix("/metrics")
        on_listener = {}
        for path in ("/healthz", "/readyz", protocol.QUERY_PATH):
            async with client.session.post(listener + path, data=query()) as reply:
                on_listener[path] = reply.status
        return on_axon, on_listener, await client.metrics()

    on_axon, on_listener, page = run(wallets, chain, tgi.url, use)
    assert on_axon == [404, 200, 200]  # validators' port: the kubelet's probes, no metrics
    assert on_listener == dict.fromkeys(("/healthz", "/readyz", protocol.QUERY_PATH), 404)
    assert metric(page, 'quasar_miner_requests_total{outcome="ok"}') == 1
    assert metric(page, "quasar_miner_completion_tokens_total") > 0


def test_metrics_listen_on_their_own_host_and_port(wallets: Wallets, chain: FakeChain, tgi: FakeTGI) -> None:
    """Port 0 picks a free port apart from the axon's; the host defaults to the axon's and may be IPv6."""
    hosts: list[str | None] = [None]
    with socket.socket(socket.AF_INET6) as probe:
        try:
            probe.bind(("::1", 0))
            hosts.append("::1")
        except OSError:
            pass  # no IPv6 loopback here: the IPv4 case still runs

    async def go(metrics_host: str | None) -> tuple[RunningMiner, str]:
        engine = make_engine("tgi", tgi.url, None, 30.0)
        miner = await start_miner(
            MinerConfig(netuid=7), chain.view(hotkey(wallets.miner)), engine, metrics_host=metrics_host
        )
        try:
            async with aiohttp.ClientSession() as session, session.get(miner.metrics_url) as reply:
                assert reply.status == 200
                return miner, await reply.text()
        finally:
            await miner.stop()
            await engine.aclose()

    for host in hosts:
        miner, page = asyncio.run(go(host))
        url = urlsplit(miner.metrics_url)
        assert url.hostname == (host or "127.0.0.1")
        assert url.port not in (None, 0, miner.port)
        assert url.path == "/metrics"
        assert "quasar_miner_in_flight" in page


def test_a_taken_metrics_port_is_named_and_leaves_nothing_listening(
    wallets: Wallets, chain: FakeChain, tgi: FakeTGI
) -> None:
    async def go(axon_port: int, metrics_port: int) -> None:
        engine = make_engine("tgi", tgi.url, None, 30.0)
        try:
            await start_miner(
                MinerConfig(netuid=7),
                chain.view(hotkey(wallets.miner)),
                engine,
                port=axon_port,
                metrics_port=metrics_port,
            )
        finally:
            await engine.aclose()

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            axon_port = probe.getsockname()[1]
        taken_port = taken.getsockname()[1]
        with pytest.raises(
            InputError, match=rf"--metrics\.port: cannot listen on 127\.0\.0\.1 port {taken_port}:"
        ):
            asyncio.run(go(axon_port, taken_port))
    with socket.socket() as again:
        again.bind(("127.0.0.1", axon_port))  # fails if the miner kept the axon's socket


def test_answers_through_the_local_engine_server_on_the_tiny_model(
    wallets: Wallets, chain: FakeChain, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The production path end to end: `quasar engine serve`'s server, real generation, its own limits."""
    # The same folder tests/test_engine_server.py builds the model in, so one session builds it once.
    model = ensure_local_model(tmp_path_factory.getbasetemp() / "quasar-cache" / "local-model-v1")

    async def go() -> list[tuple[int, dict[str, Any]]]:
        engine_server = await start_engine_server(
            str(model), max_input_tokens=64, max_total_tokens=128, shutdown_timeout_s=1.0
        )
        try:
            async with serving(wallets, chain, engine_server.url) as client:
                return [
                    await client.post(
                        query("The key is 7. What is the key?", max_new_tokens=4), wallets.validator
                    ),
                    await client.post(query("the" + " the" * 100), wallets.validator),
                ]
        finally:
            await engine_server.stop()

    (status, answer), (too_long, refusal) = asyncio.run(go())
    assert status == 200, answer
    assert answer["model"] == str(model)
    assert 1 <= answer["completion_tokens"] <= 4
    assert too_long == 413
    assert "less than 64 tokens. Given: 101" in refusal["reason"]
    assert (refusal["max_input_tokens"], refusal["max_total_tokens"]) == (64, 128)


# ---------------------------------------------------------------------------------------------------------
# Pure parts


def test_engine_errors_map_to_statuses() -> None:
    info = EngineInfo("m", 100, 200)
    cases = [
        (EngineError("tgi x: no answer within 5 s (timeout)", "timeout"), 504, "timeout"),
        (EngineError("tgi x: cannot reach the engine: ConnectError", "unreachable"), 503, "engine_down"),
        (
            EngineError(
                "tgi x: HTTP 422: Input validation error: `inputs` must have less than 100 tokens. "
                "Given: 300",
                "http",
                422,
            ),
            413,
            "too_large",
        ),
        (
            EngineError("openai x: HTTP 400: This model's maximum context length is 200 tokens", "http", 400),
            413,
            "too_large",
        ),
        (EngineError("local x: prompt too long: 300 prompt tokens", "too_long"), 413, "too_large"),
        (EngineError("tgi x: HTTP 413: Failed to buffer the request body", "http", 413), 413, "too_large"),
        (
            EngineError("tgi x: HTTP 422: Input validation error: `top_p` must be > 0", "http", 422),
            502,
            "engine_error",
        ),
        (EngineError("tgi x: HTTP 429: Model is overloaded", "http", 429), 503, "engine_busy"),
        (EngineError("tgi x: HTTP 500: CUDA out of memory", "http", 500), 502, "engine_error"),
    ]
    for error, status, outcome in cases:
        refusal = classify_engine_error(error, info)
        assert (refusal.status, refusal.outcome) == (status, outcome), str(error)
    assert classify_engine_error(cases[2][0], info).details["max_input_tokens"] == 100


def test_deadline_budget() -> None:
    assert deadline_budget(100.0, 90.0, 3600.0) == 10.0
    assert deadline_budget(10_000.0, 0.0, 3600.0) == 3600.0
    assert deadline_budget(100.0, 100.0, 3600.0) is None


def test_engine_label_hides_the_url() -> None:
    assert engine_label("tgi http://10.0.0.5:80") == "tgi"
    assert engine_label("openai https://vllm.internal/v1") == "openai"
    assert engine_label("local:/models/tiny") == "local"


def test_every_flag_reaches_the_config() -> None:
    argv = [
        "--wallet.name", "cold", "--wallet.hotkey", "hot", "--wallet.path", "/w",
        "--subtensor.network", "test", "--subtensor.chain_endpoint", "ws://127.0.0.1:9944",
        "--netuid", "42", "--axon.port", "9000", "--axon.external_ip", "203.0.113.5",
        "--axon.external_port", "30000", "--metrics.port", "9100", "--metrics.host", "0.0.0.0",
        "--miner.model_name", "org/model", "--engine.url", "http://tgi:80",
        "--engine.kind", "vllm", "--engine.api", "completions", "--engine.tokenizer", "org/model",
        "--engine.timeout", "120", "--blacklist.min_stake", "5",
        "--miner.max_new_tokens", "64", "--logging.debug",
    ]  # fmt: skip
    config = config_from_args(build_parser("miner").parse_args(argv))
    assert config == MinerConfig(
        netuid=42,
        wallet_name="cold",
        wallet_hotkey="hot",
        wallet_path="/w",
        network="test",
        chain_endpoint="ws://127.0.0.1:9944",
        axon_port=9000,
        external_ip="203.0.113.5",
        external_port=30000,
        metrics_host="0.0.0.0",
        metrics_port=9100,
        model_name="org/model",
        engine_url="http://tgi:80",
        engine_kind="vllm",
        engine_api="completions",
        engine_tokenizer="org/model",
        engine_timeout_s=120.0,
        min_stake=5.0,
        max_new_tokens=64,
        debug=True,
    )


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--axon.port", "70000"], "--axon.port"),
        (["--metrics.port", "-1"], "--metrics.port"),
        (["--axon.port", "9000", "--metrics.port", "9000"], "--metrics.port"),  # the axon would serve both
        (["--engine.timeout", "0"], "--engine.timeout"),
        (["--blacklist.min_stake", "-1"], "--blacklist.min_stake"),
        (["--miner.max_new_tokens", "0"], "--miner.max_new_tokens"),
        (["--engine.url", "tgi:80"], "--engine.url"),
        (["--axon.external_ip", "miner.example.com"], "--axon.external_ip"),
        (["--engine.api", "chat"], "--engine.api"),  # TGI is asked through /generate
    ],
)
def test_bad_flags_are_named(flags: list[str], named: str) -> None:
    with pytest.raises(InputError, match=named):
        config_from_args(build_parser("miner").parse_args(["--netuid", "1", *flags]))


def test_external_ip_is_canonical_so_it_compares_equal_to_the_chains() -> None:
    args = build_parser("miner").parse_args(["--netuid", "1", "--axon.external_ip", "2001:DB8:0::1"])
    assert config_from_args(args).external_ip == "2001:db8::1"


def test_main_requires_the_external_ip(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--netuid", "1"], "miner") == 2
    assert "--axon.external_ip" in capsys.readouterr().err


def test_runs_as_a_script() -> None:
    result = subprocess.run(
        [sys.executable, "neurons/miner.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    for flag in ("--wallet.name", "--axon.external_port", "--miner.model_name", "--engine.url", "--netuid"):
        assert flag in result.stdout
