"""One validator round to 64 miners with a 2m-token context: how long the fan-out takes, and the validator
process's peak memory.

    .venv/bin/python -m benchmarks.bench_validator_fanout [--miners 64] [--rounds 2] [--repeats 2]
        [--miner-processes 2]

Miners and validator in separate processes, so that the validator's memory is its own:

- the miners' processes (`--miner-processes`, 2 by default: one GIL for 64 miners would make the miners,
  not the validator, the bottleneck): 64 real miners in all (neurons.miner.start_miner), each with its own
  TGI engine client, backed by one tests.fake_tgi.FakeTGI per process (instant answers), registered on a
  FakeChain per process on which the validator's hotkey has a permit and stake. Each process notes when
  each of its miners has read a whole request body (aiohttp's Request.read returning, on its event loop)
  and its own CPU time;
- this process, the validator: the real neurons.validator.Validator with its wallet, the built-in
  tokenizer, and a FakeChain that mirrors the miners' (their hotkeys and served endpoints), which is all
  a validator needs to sign and send. Each process's note of when a miner had read a whole body is
  compared with the validator's start time (one machine, one clock).

Measured, in this order:

1. `--rounds` whole rounds, `Validator.run_round` (the real code path: metagraph, sampling all 64 miners,
   building the 2m prompt in a thread, encoding it once, querying every miner concurrently with
   per-miner signatures, grading, saving the state); the first is cold (first connections);
2. building and encoding one prompt alone (`Validator.build`);
3. `--repeats` times the fan-out alone, exactly as run_round does it (asyncio.gather of
   neurons.validator.query_miner over the sample, one encoded body): "sent" is when the last miner had
   the whole body, "total" when the last answer was decoded;
4. once more under tracemalloc, for the Python-allocated peak of the fan-out alone.

Peak RSS is the kernel's high-water mark (VmHWM), reset before each measurement by writing 5 to
/proc/self/clear_refs (Linux), so each peak is that step's own (the reset also resets ru_maxrss).
The miners' CPU time is on the same machine: on 2 cores it, not the validator, bounds "total".
Traffic stays on 127.0.0.1. Targets: the round under 10 s, the validator under 2 GB.
"""

import argparse
import asyncio
import gc
import json
import logging
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import aiohttp
from aiohttp import web

from evaluation.engines import make_engine
from evaluation.tokenizer import load_tokenizer
from neurons import protocol, rounds
from neurons.auth import create_wallet
from neurons.chain import FakeChain
from neurons.miner import MinerConfig, start_miner
from neurons.state import ValidatorState
from neurons.validator import Answer, Validator, ValidatorConfig, query_miner
from tests.fake_server import RecordedRequest
from tests.fake_tgi import FakeTGI

NETUID = 1
TASK = "niah_single"


# ---------------------------------------------------------------------------------------------------------
# The miners' process


class _Discard(list[RecordedRequest]):
    """FakeTGI keeps every request it gets; 64 copies of an 8 MB prompt a round are not worth keeping."""

    def append(self, item: RecordedRequest) -> None:
        pass


async def serve_miners(count: int, group: int, folder: Path, validator_hotkey: str) -> None:
    """Start `count` miners; print their hotkeys and ports as one JSON line; then, for each line read on
    stdin, print what happened since the last one (body arrival times, CPU seconds); stop at EOF."""
    received: list[float] = []
    original_read = web.BaseRequest.read

    async def read(self: web.BaseRequest) -> bytes:
        body = await original_read(self)
        if self.path == protocol.QUERY_PATH:
            received.append(time.time())
        return body

    web.BaseRequest.read = read  # type: ignore[method-assign]

    chain = FakeChain(netuid=NETUID)
    chain.register(validator_hotkey, stake=1e6, validator_permit=True)
    hotkeys = [
        create_wallet(f"miners{group}", f"hot{i}", str(folder)).hotkey.ss58_address for i in range(count)
    ]
    for hotkey in hotkeys:
        chain.register(hotkey)
    fake = FakeTGI(
        answer="the needle is 42",
        payload_limit=1 << 30,
        max_input_tokens=10**9,
        max_total_tokens=10**9 + 1000,
        count_tokens=lambda text: len(text) // 4,  # cheap: the default splits megabytes into words
        requests=_Discard(),
    )
    with fake:
        engines = [make_engine("tgi", fake.url, None, 600.0) for _ in hotkeys]
        miners = [
            await start_miner(MinerConfig(netuid=NETUID), chain.view(hotkey), engine)
            for hotkey, engine in zip(hotkeys, engines, strict=True)
        ]
        print(json.dumps([[h, m.port] for h, m in zip(hotkeys, miners, strict=True)]), flush=True)
        loop = asyncio.get_running_loop()
        stdin = ThreadPoolExecutor(1)  # not the default executor: the miners verify and decode there
        cpu = _cpu_s()
        while await loop.run_in_executor(stdin, sys.stdin.readline):
            now = _cpu_s()
            print(json.dumps({"received": received, "cpu_s": now - cpu}), flush=True)
            received.clear()
            cpu = now
        for miner in miners:
            await miner.stop()
        for engine in engines:
            await engine.aclose()
        stdin.shutdown()


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ---------------------------------------------------------------------------------------------------------
# The validator's process


def _status_mb(field: str) -> float:
    """VmRSS or VmHWM of this process, in MB."""
    status = Path("/proc/self/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE)
    assert match is not None, field
    return int(match.group(1)) / 1024


def _reset_peak() -> None:
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS


@dataclass(frozen=True)
class Measure:
    what: str
    seconds: float
    sent_s: float | None
    rss_before_mb: float
    peak_rss_mb: float
    traced_peak_mb: float | None
    answered: int | None  # None: no queries in this step
    validator_cpu_s: float
    miner_cpu_s: float


class MinerProcess:
    """One process serving `count` miners (wallets `miners{group}`); started here, read by `ready()`."""

    def __init__(self, count: int, group: int, folder: Path, validator_hotkey: str) -> None:
        command = [sys.executable, "-m", "benchmarks.bench_validator_fanout", "--serve-miners", str(count)]
        command += ["--group", str(group), "--folder", str(folder), "--validator-hotkey", validator_hotkey]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def ready(self) -> list[tuple[str, int]]:
        """The miners' hotkeys and ports, once they serve."""
        return [(h, p) for h, p in json.loads(self._line())]

    def _line(self) -> str:
        stdout: IO[str] | None = self.process.stdout
        assert stdout is not None
        line = stdout.readline()
        if not line:
            raise RuntimeError(f"a miners' process ended (exit status {self.process.wait()})")
        return line

    def ask(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("report\n")
        self.process.stdin.flush()

    def answer(self) -> dict[str, Any]:
        report: dict[str, Any] = json.loads(self._line())
        return report

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(60)


class MinerFleet:
    """`count` miners spread over `processes` processes (the miners' CPU is then not one GIL's)."""

    def __init__(self, count: int, processes: int, folder: Path, validator_hotkey: str) -> None:
        sizes = [count // processes + (i < count % processes) for i in range(processes)]
        self.processes = [
            MinerProcess(size, group, folder, validator_hotkey) for group, size in enumerate(sizes) if size
        ]
        try:
            self.endpoints = [endpoint for process in self.processes for endpoint in process.ready()]
        except BaseException:
            self.close()
            raise

    def report(self) -> dict[str, Any]:
        """Body arrival times and the miners' CPU seconds since the last report."""
        for process in self.processes:
            process.ask()
        answers = [process.answer() for process in self.processes]
        return {
            "received": [t for a in answers for t in a["received"]],
            "cpu_s": sum(a["cpu_s"] for a in answers),
        }

    def close(self) -> None:
        for process in self.processes:
            process.close()


async def measure_validator(
    miners: MinerFleet,
    folder: Path,
    bucket: str,
    rounds_count: int,
    repeats: int,
    tokenizer_name: str | None,
) -> list[Measure]:
    wallet = create_wallet("validator", "hot", str(folder))
    hotkey = wallet.hotkey.ss58_address
    chain = FakeChain(netuid=NETUID)
    chain.register(hotkey, stake=1e6, validator_permit=True)
    for miner_hotkey, port in miners.endpoints:
        chain.register(miner_hotkey)
        chain.serve(miner_hotkey, "127.0.0.1", port)
    count = len(miners.endpoints)
    config = ValidatorConfig(
        netuid=NETUID,
        state_path=folder / "validator-state.json",
        sample_size=count,
        tasks={TASK: 1.0},
        bucket_weights={bucket: 1.0},
        tokenizer=tokenizer_name,
    )
    validator = Validator(
        config,
        chain.view(hotkey),
        wallet,
        load_tokenizer(tokenizer_name),
        None,
        ValidatorState(NETUID, hotkey),
        rng=random.Random(0),
    )
    results: list[Measure] = []
    async with aiohttp.ClientSession() as session:
        for i in range(rounds_count):
            _reset_peak()
            before, cpu = _status_mb("VmRSS"), _cpu_s()
            miners.report()
            started = time.perf_counter()
            result = await validator.run_round(session)
            seconds = time.perf_counter() - started
            assert result is not None
            answered = sum(a.error is None for a in result.answers)
            report = miners.report()
            what = f"round {i + 1}" + (" (cold)" if i == 0 else "")
            results.append(
                Measure(
                    what,
                    seconds,
                    None,
                    before,
                    _status_mb("VmHWM"),
                    None,
                    answered,
                    _cpu_s() - cpu,
                    report["cpu_s"],
                )
            )

        _reset_peak()
        before, cpu = _status_mb("VmRSS"), _cpu_s()
        started = time.perf_counter()
        _, body, task_id, deadline = validator.build()
        seconds = time.perf_counter() - started
        results.append(
            Measure(
                "build+encode alone",
                seconds,
                None,
                before,
                _status_mb("VmHWM"),
                None,
                None,
                _cpu_s() - cpu,
                0.0,
            )
        )
        snapshot = chain.current_snapshot()
        sample = rounds.eligible_miners([(n.uid, n.hotkey, n.endpoint) for n in snapshot.neurons], hotkey)

        async def fan_out() -> tuple[float, float, list[Answer]]:
            wall = time.time()
            started = time.perf_counter()
            answers = await asyncio.gather(
                *(query_miner(session, wallet, m, body, task_id, deadline) for m in sample)
            )
            return wall, time.perf_counter() - started, answers

        for i in range(repeats + 1):
            traced = i == repeats
            _reset_peak()
            before, cpu = _status_mb("VmRSS"), _cpu_s()
            miners.report()
            if traced:
                tracemalloc.start()
            wall, seconds, answers = await fan_out()
            traced_peak = tracemalloc.get_traced_memory()[1] / 2**20 if traced else None
            tracemalloc.stop()
            peak = _status_mb("VmHWM")
            validator_cpu = _cpu_s() - cpu
            report = miners.report()
            sent = max(report["received"]) - wall if len(report["received"]) == len(sample) else None
            what = "fan-out, tracemalloc" if traced else f"fan-out {i + 1}"
            answered = sum(a.error is None for a in answers)
            results.append(
                Measure(
                    what, seconds, sent, before, peak, traced_peak, answered, validator_cpu, report["cpu_s"]
                )
            )
            errors = {a.error for a in answers if a.error is not None}
            if errors:
                print(f"{what}: errors: {sorted(errors)[:3]}", file=sys.stderr)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--miners", type=int, default=64, help="miners in the round (default: 64)")
    parser.add_argument("--bucket", default="2m", help="context bucket (default: 2m)")
    parser.add_argument("--rounds", type=int, default=2, help="whole rounds, the first cold (default: 2)")
    parser.add_argument("--repeats", type=int, default=2, help="timed fan-outs after them (default: 2)")
    parser.add_argument("--tokenizer", help="tokenizer folder or Hub id (default: the built-in local one)")
    parser.add_argument("--serve-miners", type=int, help=argparse.SUPPRESS)
    parser.add_argument(
        "--miner-processes", type=int, default=2, help="processes the miners run in (default: 2)"
    )
    parser.add_argument("--group", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--validator-hotkey", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.serve_miners is not None:
        asyncio.run(serve_miners(args.serve_miners, args.group, args.folder, args.validator_hotkey))
        return
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        validator_hotkey = create_wallet("validator", "hot", name).hotkey.ss58_address
        started = time.perf_counter()
        miners = MinerFleet(args.miners, args.miner_processes, folder, validator_hotkey)
        startup_s = time.perf_counter() - started
        try:
            results = asyncio.run(
                measure_validator(miners, folder, args.bucket, args.rounds, args.repeats, args.tokenizer)
            )
        finally:
            miners.close()
    print(
        f"{args.miners} miners in {args.miner_processes} processes ({startup_s:.1f} s to start), "
        f"bucket {args.bucket}, task {TASK}"
    )
    print(
        f"{'measure':<22}{'answered':>9}{'sent s':>8}{'total s':>9}{'RSS before MB':>15}"
        f"{'peak RSS MB':>13}{'traced MB':>11}{'validator CPU s':>17}{'miners CPU s':>14}"
    )
    for m in results:
        sent = f"{m.sent_s:.2f}" if m.sent_s is not None else "-"
        traced = f"{m.traced_peak_mb:.0f}" if m.traced_peak_mb is not None else "-"
        answered = f"{m.answered}/{args.miners}" if m.answered is not None else "-"
        print(
            f"{m.what:<22}{answered:>9}{sent:>8}{m.seconds:>9.2f}{m.rss_before_mb:>15.0f}"
            f"{m.peak_rss_mb:>13.0f}{traced:>11}{m.validator_cpu_s:>17.2f}{m.miner_cpu_s:>14.1f}"
        )
    print(f"validator process peak RSS, all steps: {max(m.peak_rss_mb for m in results):.0f} MB")


if __name__ == "__main__":
    main()
