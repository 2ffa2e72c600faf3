"""What the miner adds to a query over calling its engine directly, on loopback, at 32k and 2m tokens.

    .venv/bin/python -m benchmarks.bench_miner [--n32k 1000] [--n2m 200] [--tokenizer NAME_OR_PATH]

The engine is tests.fake_tgi.FakeTGI, which answers at once, so the difference between the two paths is
the miner's own cost. Per request, alternately:

- direct: `evaluation.engines.make_engine("tgi", url).generate(prompt)` against the fake engine;
- via miner: what the validator does (neurons.validator.query_miner, the real code): sign the request for
  the miner's hotkey, POST the gzip body to a real miner (neurons.miner.start_miner, on a FakeChain where
  the validator has a permit), read and decode the answer. The miner reads the body, verifies the
  signature, decompresses and parses it, and calls the same engine. The request is encoded once per
  prompt, as a validator does once per round, outside the timing.

"added" is via-miner minus direct, paired per iteration; p99 is the nearest-rank percentile, so with
few requests it is the maximum. Prompts are real (evaluation.contexts.build_item, niah_single, the
built-in tokenizer: about 3.7 characters a token). Everything runs in this process and on 127.0.0.1.
Targets: under 20 ms added at 32k, under 300 ms at 2m.
"""

import argparse
import asyncio
import logging
import math
import statistics
import tempfile
import time
from dataclasses import dataclass

import aiohttp

from evaluation.contexts import build_item
from evaluation.engines import make_engine
from evaluation.tasks import get_task
from evaluation.tokenizer import load_tokenizer
from neurons import protocol
from neurons.auth import RequestVerifier, create_wallet, signed_headers
from neurons.chain import FakeChain
from neurons.miner import MinerConfig, start_miner
from neurons.rounds import Miner
from neurons.validator import query_miner
from tests.fake_tgi import FakeTGI

TASK = "niah_single"
WARMUP = 2
DEADLINE_S = 600.0


@dataclass(frozen=True)
class Row:
    bucket: str
    tokens: int
    text_mb: float
    body_mb: float
    n: int
    direct: list[float]
    via: list[float]
    added: list[float]
    encode_s: float
    sign_s: float
    verify_s: float
    decode_s: float


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


async def bench(bucket: str, n: int, tokenizer_name: str | None, folder: str) -> Row:
    item = build_item(TASK, bucket, 0, tokenizer=load_tokenizer(tokenizer_name), seed=0)
    max_new_tokens = get_task(TASK).max_new_tokens
    miner_wallet = create_wallet("miner", "hot", folder)
    validator_wallet = create_wallet("validator", "hot", folder)
    miner_hotkey = miner_wallet.hotkey.ss58_address
    chain = FakeChain(netuid=1)
    chain.register(validator_wallet.hotkey.ss58_address, stake=1e6, validator_permit=True)
    uid = chain.register(miner_hotkey)
    fake = FakeTGI(
        answer="the needle is 42",
        payload_limit=1 << 30,
        max_input_tokens=10**9,
        max_total_tokens=10**9 + 1000,
        count_tokens=lambda text: len(text) // 4,  # cheap: the default splits megabytes into words
    )
    with fake:
        direct_engine = make_engine("tgi", fake.url, None, DEADLINE_S)
        miner_engine = make_engine("tgi", fake.url, None, DEADLINE_S)
        running = await start_miner(MinerConfig(netuid=1), chain.view(miner_hotkey), miner_engine)
        miner = Miner(uid, miner_hotkey, ("127.0.0.1", running.port))
        started = time.perf_counter()
        request = protocol.QueryRequest(
            protocol.PROTOCOL_VERSION, "bench", TASK, bucket, item.prompt, max_new_tokens, time.time() + 3600
        )
        body = protocol.encode_request(request)
        encode_s = time.perf_counter() - started
        direct: list[float] = []
        via: list[float] = []
        try:
            async with aiohttp.ClientSession() as session:
                for i in range(n + WARMUP):
                    fake.requests.clear()  # the fake keeps every prompt it was sent
                    started = time.perf_counter()
                    await direct_engine.generate(item.prompt, max_new_tokens)
                    direct_s = time.perf_counter() - started
                    started = time.perf_counter()
                    answer = await query_miner(session, validator_wallet, miner, body, "bench", DEADLINE_S)
                    via_s = time.perf_counter() - started
                    if answer.error is not None:
                        raise RuntimeError(f"the miner refused: {answer.error}")
                    if i >= WARMUP:
                        direct.append(direct_s)
                        via.append(via_s)
        finally:
            await running.stop()
            await direct_engine.aclose()
            await miner_engine.aclose()
    # The miner-side steps alone, once each, for the breakdown.
    started = time.perf_counter()
    headers = signed_headers(validator_wallet, body, miner_hotkey)
    sign_s = time.perf_counter() - started
    started = time.perf_counter()
    RequestVerifier(miner_hotkey).verify(headers, body)
    verify_s = time.perf_counter() - started
    started = time.perf_counter()
    protocol.decode_request(body)
    decode_s = time.perf_counter() - started
    return Row(
        bucket,
        item.prompt_tokens,
        len(item.prompt.encode()) / 1e6,
        len(body) / 1e6,
        n,
        direct,
        via,
        [v - d for v, d in zip(via, direct, strict=True)],
        encode_s,
        sign_s,
        verify_s,
        decode_s,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n32k", type=int, default=1000, help="timed requests at 32k (default: 1000)")
    parser.add_argument("--n2m", type=int, default=200, help="timed requests at 2m (default: 200)")
    parser.add_argument("--tokenizer", help="tokenizer folder or Hub id (default: the built-in local one)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for bucket, n in (("32k", args.n32k), ("2m", args.n2m)):
            if n > 0:
                rows.append(asyncio.run(bench(bucket, n, args.tokenizer, folder)))
    ms = 1e3
    print("ms per request; p99 is the nearest rank (the maximum below 100 requests)")
    print(
        f"{'bucket':<7}{'tokens':>9}{'text MB':>9}{'body MB':>9}{'n':>6}{'direct p50':>12}{'p99':>7}"
        f"{'via miner p50':>15}{'p99':>7}{'added p50':>11}{'p99':>7}{'target':>8}"
    )
    for row in rows:
        target = "20" if row.bucket == "32k" else "300"
        print(
            f"{row.bucket:<7}{row.tokens:>9}{row.text_mb:>9.2f}{row.body_mb:>9.2f}{row.n:>6}"
            f"{statistics.median(row.direct) * ms:>12.1f}{percentile(row.direct, 0.99) * ms:>7.1f}"
            f"{statistics.median(row.via) * ms:>15.1f}{percentile(row.via, 0.99) * ms:>7.1f}"
            f"{statistics.median(row.added) * ms:>11.1f}{percentile(row.added, 0.99) * ms:>7.1f}"
            f"{'< ' + target:>8}"
        )
    print("\nsteps alone, ms (one call each, outside the requests above):")
    print(f"{'bucket':<7}{'encode (once)':>14}{'sign':>8}{'verify':>8}{'decode':>8}")
    for row in rows:
        print(
            f"{row.bucket:<7}{row.encode_s * ms:>14.1f}{row.sign_s * ms:>8.1f}"
            f"{row.verify_s * ms:>8.1f}{row.decode_s * ms:>8.1f}"
        )


if __name__ == "__main__":
    main()
