"""The miner under an attacker's requests, on loopback: issue 10's numbers, measured again.

    .venv/bin/python -m benchmarks.bench_hostile [--fuzz 10000] [--concurrency 16] [--seed 1]

A real miner (neurons.miner.start_miner, default GuardLimits) on a FakeChain where one validator has a
permit and an outsider is registered nowhere, in front of a counting engine double. It prints:

- bypass attempts: the outsider's own signed query with a registered validator's identity headers added
  (each auth header repeated, before or after its own, in three letter cases: 36 requests), and how many
  reached the engine;
- a fuzz run: `--fuzz` requests built from real signed queries (validator's and outsider's) and mutated
  at random (request line, dropped/repeated/garbled headers, Content-Length, chunking, body bytes, fields,
  nesting, lone surrogates; some re-signed after the mutation), `--concurrency` at a time: the statuses,
  the 5xx count, and engine calls for prompts the validator did not sign;
- bytes the miner read past a refused request's head: a declared 10 GiB body from the validator's
  claimed identity (413, before reading) and a 32 MiB body with no auth headers (401), the client
  sending as fast as it can until the miner closes;
- how long a slowloris connection (one header line every 0.5 s) survives.
"""

import argparse
import asyncio
import contextlib
import gzip
import json
import logging
import random
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field

import bittensor

from evaluation.http_guard import GuardLimits
from neurons import protocol
from neurons.auth import AUTH_HEADERS, create_wallet, signed_headers
from neurons.chain import FakeChain
from neurons.miner import MinerConfig, RunningMiner, start_miner
from tests.test_miner_fuzz import CountingEngine, Pair, render


@dataclass
class Bench:
    miner: RunningMiner
    miner_hotkey: str
    validator: bittensor.Wallet
    outsider: bittensor.Wallet
    engine: CountingEngine
    allowed: set[str] = field(default_factory=set)
    counter: int = 0

    def body(self, prompt: str) -> bytes:
        request = protocol.QueryRequest(
            protocol.PROTOCOL_VERSION, "t", "needle", "32k", prompt, 8, time.time() + 30
        )
        return protocol.encode_request(request)

    def prompt(self) -> str:
        self.counter += 1
        return f"prompt {self.counter}"

    def headers(self, body: bytes, signed: dict[str, str]) -> list[Pair]:
        return [
            ("Host", "127.0.0.1"),
            *protocol.REQUEST_HEADERS.items(),
            *signed.items(),
            ("Content-Length", str(len(body))),
            ("Connection", "close"),
        ]


async def exchange(port: int, raw: bytes) -> int | None:
    """The status of the answer to `raw` on a fresh connection, None when closed without one."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return None
    try:
        writer.write(raw)
        first = await asyncio.wait_for(reader.readline(), 30)
    except (ConnectionError, TimeoutError):
        return None
    finally:
        writer.close()
    parts = first.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None


# ---------------------------------------------------------------------------------------------------------


async def bypass_attempts(bench: Bench) -> tuple[int, int]:
    before = len(bench.engine.prompts)
    attempts = 0
    for header in AUTH_HEADERS:
        for first in (True, False):
            for recase in (str, str.lower, str.upper):
                prompt = bench.prompt()
                body = bench.body(prompt)
                own = signed_headers(bench.outsider, body, bench.miner_hotkey)
                theirs = signed_headers(bench.validator, body, bench.miner_hotkey)
                borrowed = (recase(header), theirs.get(header, "sr25519"))
                pairs = bench.headers(body, own)
                pairs.insert(0 if first else len(pairs), borrowed)
                await exchange(bench.miner.port, render(b"POST /v1/query HTTP/1.1", pairs, body))
                attempts += 1
    return attempts, len(bench.engine.prompts) - before


def mutate(bench: Bench, rng: random.Random) -> bytes:
    signer = rng.choice([bench.validator, bench.outsider])
    body = bench.body(bench.prompt())
    if rng.random() < 0.5:
        body = _mutated_body(body, rng)
    signed_over = body if rng.random() < 0.5 else bench.body(bench.prompt())
    if signer is bench.validator:
        with contextlib.suppress(protocol.ProtocolError):
            bench.allowed.add(protocol.decode_request(signed_over).prompt)
    headers = bench.headers(body, signed_headers(signer, signed_over, bench.miner_hotkey))
    request_line = b"POST /v1/query HTTP/1.1"
    kind = rng.randrange(7)
    if kind == 0:
        request_line = rng.choice([b"GET /v1/query HTTP/1.1", b"POST /v1/query HTTP/9", rng.randbytes(20)])
    elif kind == 1:
        headers.pop(rng.randrange(len(headers)))
    elif kind == 2:
        name, value = rng.choice(headers)
        headers.insert(rng.randrange(len(headers) + 1), (name.swapcase(), rng.choice([value, "x"])))
    elif kind == 3:
        length = rng.choice([str(rng.randrange(1 << 40)), "-1", "", "abc", "0x10"])
        headers = [(k, length) if k == "Content-Length" else (k, v) for k, v in headers]
    elif kind == 4:
        headers.append(("Transfer-Encoding", rng.choice(["chunked", "gzip, chunked", "bogus"])))
    elif kind == 5:
        headers.append((rng.randbytes(8).hex(), rng.randbytes(8).decode("latin-1").replace("\r", "")))
    return render(request_line, headers, body)


def _mutated_body(base: bytes, rng: random.Random) -> bytes:
    fields = json.loads(gzip.decompress(base))
    kind = rng.randrange(6)
    if kind == 0:
        index = rng.randrange(len(base))
        return base[:index] + bytes([base[index] ^ rng.randrange(1, 256)]) + base[index + 1 :]
    if kind == 1:
        return base[: rng.randrange(len(base))]
    if kind == 2:
        return rng.randbytes(rng.randrange(300))
    if kind == 3:
        fields[rng.choice(sorted(fields))] = rng.choice(
            [None, True, -1, 10**4000, 1e308, "\ud800", [], {"a": 1}, "x" * 1000, 2**63]
        )
        return gzip.compress(json.dumps(fields).encode("utf-8", "surrogatepass"))
    if kind == 4:
        del fields[rng.choice(sorted(fields))]
        return gzip.compress(json.dumps(fields).encode())
    fields["prompt"] = "NEST"
    return gzip.compress(json.dumps(fields).replace('"NEST"', "[" * 100_000 + "]" * 100_000).encode())


async def fuzz(bench: Bench, n: int, concurrency: int, seed: int) -> tuple[Counter[int | None], int, float]:
    rng = random.Random(seed)
    requests = [mutate(bench, rng) for _ in range(n)]
    statuses: Counter[int | None] = Counter()
    queue = iter(requests)

    async def worker() -> None:
        for raw in queue:
            statuses[await exchange(bench.miner.port, raw)] += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    unpermitted = len(set(bench.engine.prompts) - bench.allowed)
    return statuses, unpermitted, time.perf_counter() - started


async def bytes_read_after_refusal(bench: Bench, declared: int, signed: bool) -> tuple[int, bytes]:
    headers = [("Host", "127.0.0.1"), *protocol.REQUEST_HEADERS.items()]
    if signed:  # the validator's claimed identity: passes the permit check, refused for its size
        headers += signed_headers(bench.validator, b"", bench.miner_hotkey).items()
    head = render(b"POST /v1/query HTTP/1.1", [*headers, ("Content-Length", str(declared))], b"")
    before = bench.miner.guard_stats.bytes_received
    reader, writer = await asyncio.open_connection("127.0.0.1", bench.miner.port)
    writer.write(head)
    answer = asyncio.create_task(reader.readline())  # read while sending: the close may reset the socket
    chunk, sent = b"x" * (1 << 20), 0
    try:
        while sent < declared:
            writer.write(chunk[: declared - sent])
            await writer.drain()
            sent += len(chunk)
    except ConnectionError:
        pass
    try:
        status = await asyncio.wait_for(answer, 5)
    except (ConnectionError, TimeoutError):
        status = b"(the reset came first)"
    writer.close()
    return bench.miner.guard_stats.bytes_received - before - len(head), status.strip()


async def slowloris(bench: Bench) -> float:
    reader, writer = await asyncio.open_connection("127.0.0.1", bench.miner.port)
    started = time.perf_counter()
    writer.write(b"POST /v1/query HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    try:
        while not reader.at_eof() and time.perf_counter() - started < 600:
            writer.write(b"X-Slow: 1\r\n")
            await writer.drain()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(reader.read(1), 0.5)
    except ConnectionError:
        pass
    writer.close()
    return time.perf_counter() - started


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as wallets:
        miner_w, validator, outsider = (create_wallet(n, "hotkey", wallets) for n in ("m", "v", "o"))
        chain = FakeChain(netuid=7)
        chain.register(miner_w.hotkey.ss58_address)
        chain.register(validator.hotkey.ss58_address, stake=10_000.0, validator_permit=True)
        engine = CountingEngine()
        # Default limits except the per-peer one: the fuzz's clients all come from 127.0.0.1.
        config = MinerConfig(netuid=7, guard=GuardLimits(max_connections_per_peer=4 * args.concurrency))
        miner = await start_miner(config, chain.view(miner_w.hotkey.ss58_address), engine)
        bench = Bench(miner, miner_w.hotkey.ss58_address, validator, outsider, engine)
        try:
            attempts, reached = await bypass_attempts(bench)
            statuses, unpermitted, fuzz_s = await fuzz(bench, args.fuzz, args.concurrency, args.seed)
            big, big_status = await bytes_read_after_refusal(bench, 10 * 1024**3, signed=True)
            unsigned, unsigned_status = await bytes_read_after_refusal(bench, 32 * 1024**2, signed=False)
            survived = await slowloris(bench)
        finally:
            await miner.stop()
    server_errors = sum(count for status, count in statuses.items() if status is not None and status >= 500)
    shown = ", ".join(
        f"{s if s is not None else 'closed'}: {c}" for s, c in sorted(statuses.items(), key=str)
    )
    rows = [
        ("bypass attempts that reached the engine", f"{reached} of {attempts}"),
        (f"fuzz: requests ({fuzz_s:.1f} s, {args.concurrency} at a time)", str(args.fuzz)),
        ("fuzz: answers by status", shown),
        ("fuzz: 5xx answers", str(server_errors)),
        ("fuzz: engine calls for prompts the validator did not sign", str(unpermitted)),
        ("fuzz: engine calls in all", str(len(engine.prompts))),
        (f"bytes read past the head, 10 GiB declared ({big_status.decode()})", f"{big:,}"),
        (f"bytes read past the head, 32 MiB, no auth headers ({unsigned_status.decode()})", f"{unsigned:,}"),
        ("slowloris connection survived (header timeout 10 s)", f"{survived:.1f} s"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fuzz", type=int, default=10_000, help="fuzz requests (default: 10000)")
    parser.add_argument("--concurrency", type=int, default=16, help="fuzz connections at once (default: 16)")
    parser.add_argument("--seed", type=int, default=1)
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(main(parser.parse_args()))
