"""The miner's request path under hostile bytes, over raw loopback sockets (hypothesis).

The miner runs in a thread of its own in front of a counting engine double, so each example is a blocking
exchange on a fresh connection. Every request starts as a real signed query, by the permitted validator or
by an unregistered outsider, each with a prompt of its own; the oracle is which prompts may reach the
engine: only those of bodies the validator signed, exactly as sent.
"""

import asyncio
import contextlib
import gzip
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import bittensor
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evaluation.engines import EngineInfo, Generation
from evaluation.http_guard import GuardLimits
from neurons import protocol
from neurons.auth import create_wallet, signed_headers
from neurons.chain import FakeChain
from neurons.miner import MinerConfig, RunningMiner, start_miner

Pair = tuple[str, str]


@dataclass
class CountingEngine:
    """An engine double that records every prompt it is asked to generate for."""

    name: str = "counting"
    prompts: list[str] = field(default_factory=list)

    async def generate(self, prompt: str, max_new_tokens: int) -> Generation:
        self.prompts.append(prompt)
        return Generation("ok", None, 1, 0.0)

    async def info(self) -> EngineInfo:
        return EngineInfo("fake/model", None, None)

    async def aclose(self) -> None:
        pass


@dataclass
class Target:
    port: int
    miner_hotkey: str
    validator: bittensor.Wallet
    outsider: bittensor.Wallet
    engine: CountingEngine
    allowed: set[str] = field(default_factory=set)  # prompts of bodies the validator signed as sent
    statuses: list[int] = field(default_factory=list)
    counter: int = 0

    def body(self, prompt: str) -> bytes:
        request = protocol.QueryRequest(
            protocol.PROTOCOL_VERSION, "t", "needle", "32k", prompt, 8, time.time() + 30
        )
        return protocol.encode_request(request)

    def fresh_prompt(self, signer: bittensor.Wallet) -> str:
        self.counter += 1
        return f"{'validator' if signer is self.validator else 'outsider'} prompt {self.counter}"

    def note_signed(self, signer: bittensor.Wallet, body: bytes) -> None:
        if signer is self.validator:
            with contextlib.suppress(protocol.ProtocolError):
                self.allowed.add(protocol.decode_request(body).prompt)


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    path = str(tmp_path_factory.mktemp("wallets"))
    miner_w, validator, outsider = (create_wallet(n, "hotkey", path) for n in ("m", "v", "o"))
    chain = FakeChain(netuid=7)
    chain.register(miner_w.hotkey.ss58_address)
    chain.register(validator.hotkey.ss58_address, stake=10_000.0, validator_permit=True)
    engine = CountingEngine()
    # Short timeouts: a mutated head or a short body is cut quickly instead of holding the test.
    config = MinerConfig(netuid=7, guard=GuardLimits(header_timeout_s=0.3, body_timeout_s=0.3))
    loop = asyncio.new_event_loop()
    started: list[RunningMiner] = []
    ready = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        started.append(
            loop.run_until_complete(start_miner(config, chain.view(miner_w.hotkey.ss58_address), engine))
        )
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, name="miner", daemon=True)
    thread.start()
    assert ready.wait(30), "the miner did not start"
    yield Target(started[0].port, miner_w.hotkey.ss58_address, validator, outsider, engine)
    asyncio.run_coroutine_threadsafe(started[0].stop(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def render(request_line: bytes, headers: list[Pair], body: bytes) -> bytes:
    head = b"\r\n".join([request_line, *(f"{k}: {v}".encode("utf-8", "surrogatepass") for k, v in headers)])
    return head + b"\r\n\r\n" + body


def exchange(target: Target, raw: bytes) -> int | None:
    """Sends `raw` on a fresh connection; the answer's status, or None when the miner closed without one."""
    with socket.create_connection(("127.0.0.1", target.port), timeout=5) as sock:
        try:
            sock.sendall(raw)
            first = sock.recv(64)
        except (ConnectionError, TimeoutError):
            return None
    if not first:
        return None
    status = int(first.split(b" ", 2)[1])
    target.statuses.append(status)
    return status


def standard_headers(target: Target, body: bytes, signed: dict[str, str]) -> list[Pair]:
    return [
        ("Host", f"127.0.0.1:{target.port}"),
        *protocol.REQUEST_HEADERS.items(),
        *signed.items(),
        ("Content-Length", str(len(body))),
        ("Connection", "close"),
    ]


def assert_the_oracle(target: Target) -> None:
    assert all(status < 500 for status in target.statuses), sorted(set(target.statuses))
    assert set(target.engine.prompts) <= target.allowed
    assert len(target.engine.prompts) == len(set(target.engine.prompts))  # no replay reached it twice


# -----------------------------------------------------------------------------------------------------
# Header multisets: the outsider's signed query, with the validator's signed headers mixed in


def _recase(name: str) -> st.SearchStrategy[str]:
    return st.sampled_from([name, name.lower(), name.upper(), name.swapcase()])


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_no_header_multiset_gets_an_outsider_a_generation(target: Target, data: st.DataObject) -> None:
    prompt = target.fresh_prompt(target.outsider)
    body = target.body(prompt)
    own = signed_headers(target.outsider, body, target.miner_hotkey)
    # The validator's headers, signed over a body of its own (captured from another round, say).
    theirs = signed_headers(target.validator, target.body("a validator's query"), target.miner_hotkey)
    pairs = [
        (data.draw(_recase(name)), value)
        for source in (own, theirs)
        for name, value in source.items()
        for _ in range(data.draw(st.integers(min_value=0, max_value=2)))
    ]
    pairs = data.draw(st.permutations(pairs))
    host = [("Host", "127.0.0.1"), *protocol.REQUEST_HEADERS.items(), ("Connection", "close")]
    exchange(
        target, render(b"POST /v1/query HTTP/1.1", [*host, *pairs, ("Content-Length", str(len(body)))], body)
    )
    assert prompt not in target.engine.prompts
    assert_the_oracle(target)


# -----------------------------------------------------------------------------------------------------
# Mutated requests


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(st.characters(exclude_categories=())),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def mutated_body(draw: st.DrawFn, base: bytes) -> bytes:
    fields = json.loads(gzip.decompress(base))
    kind = draw(st.sampled_from(["flip", "cut", "append", "bytes", "field", "drop", "nest"]))
    if kind == "flip":
        # Positions modulo the length: bodies differ between runs (fresh deadlines), the draws must not.
        index = draw(st.integers(0, 1 << 16)) % len(base)
        return base[:index] + bytes([base[index] ^ draw(st.integers(1, 255))]) + base[index + 1 :]
    if kind == "cut":
        return base[: draw(st.integers(0, 1 << 16)) % len(base)]
    if kind == "append":
        return base + draw(st.binary(min_size=1, max_size=64))
    if kind == "bytes":
        return draw(st.binary(max_size=256))
    if kind == "field":
        fields[draw(st.sampled_from(sorted(fields)))] = draw(json_values)
    elif kind == "drop":
        del fields[draw(st.sampled_from(sorted(fields)))]
    else:  # nesting deeper than any recursive parser goes
        fields["prompt"] = "NEST"
        raw = json.dumps(fields).replace('"NEST"', "[" * 100_000 + "]" * 100_000)
        return gzip.compress(raw.encode())
    return gzip.compress(json.dumps(fields).encode("utf-8", "surrogatepass"))


@st.composite
def mutated_head(draw: st.DrawFn, headers: list[Pair]) -> tuple[bytes, list[Pair]]:
    request_line = b"POST /v1/query HTTP/1.1"
    kind = draw(st.sampled_from(["none", "line", "drop", "repeat", "length", "chunked", "junk"]))
    headers = list(headers)
    if kind == "line":
        request_line = draw(
            st.sampled_from(
                [b"GET /v1/query HTTP/1.1", b"POST /v1/query?x=1 HTTP/1.0", b"POST /v1/query HTTP/2"]
            )
            | st.binary(max_size=40).filter(lambda b: b"\r" not in b and b"\n" not in b)
        )
    elif kind == "drop":
        headers.pop(draw(st.integers(0, len(headers) - 1)))
    elif kind == "repeat":
        index = draw(st.integers(0, len(headers) - 1))
        name, value = headers[index]
        headers.insert(
            draw(st.integers(0, len(headers))), (name.upper(), draw(st.sampled_from([value, "x"])))
        )
    elif kind == "length":
        lengths = st.integers(-1, 1 << 40).map(str) | st.sampled_from(["", "abc", "1e3", " 5", "0x10"])
        headers = [(k, draw(lengths)) if k == "Content-Length" else (k, v) for k, v in headers]
    elif kind == "chunked":
        headers.append(("Transfer-Encoding", draw(st.sampled_from(["chunked", "gzip, chunked", "bogus"]))))
    elif kind == "junk":
        name = draw(
            st.text(st.characters(min_codepoint=33, max_codepoint=126, exclude_characters=":"), min_size=1)
        )
        headers.append((name, draw(st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30))))
    return request_line, headers


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_requests_never_get_a_5xx_nor_an_unpermitted_generation(
    target: Target, data: st.DataObject
) -> None:
    signer = data.draw(st.sampled_from([target.validator, target.outsider]))
    body = target.body(target.fresh_prompt(signer))
    if data.draw(st.booleans()):
        body = data.draw(mutated_body(body))
    # Signed after the body's mutation (a permitted caller's own mistakes) or before it (tampering).
    signed_after = data.draw(st.booleans())
    signed_over = body if signed_after else target.body(target.fresh_prompt(signer))
    if signed_after:
        target.note_signed(signer, body)
    else:
        target.note_signed(signer, signed_over)
    headers = standard_headers(target, body, signed_headers(signer, signed_over, target.miner_hotkey))
    request_line, headers = data.draw(mutated_head(headers))
    exchange(target, render(request_line, headers, body))
    assert_the_oracle(target)


def test_the_fuzzing_reached_the_engine_and_every_refusal(target: Target) -> None:
    """A fuzzer that never got past the signature check would prove nothing: the runs above must have
    produced generations and refusals at each layer (401, 403, 400)."""
    assert target.engine.prompts
    assert {200, 400, 401, 403} <= set(target.statuses)
