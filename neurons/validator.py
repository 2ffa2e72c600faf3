"""The QUASAR validator: ask sampled miners long-context questions, grade the answers, set weights.

`python neurons/validator.py ...` or `quasar validator ...` (the command line: neurons/validator_cli.py, which
also runs mock mode, neurons/mock.py, built on this module; this module knows nothing of mock mode).
Each round: read the metagraph, sample miners, choose a task and a bucket by their weights, build the prompt
once, encode it once, query every sampled miner concurrently with signed requests, grade, reward, and fold
the rewards into per-bucket then combined moving averages, saved after every round (neurons/state.py).
Weights go to the chain every `--neuron.epoch_length` blocks in the background, with retries and backoff:
an unreachable chain never stops scoring. With `--metrics.port`, rounds, queries, weight setting and each
uid's score and weight are served as Prometheus metrics on `/metrics`. See docs/validator.md.
"""

import argparse
import asyncio
import contextlib
import logging
import math
import os
import random
import secrets
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import aiohttp
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
)

from evaluation.buckets import MAX_BUCKET_SHARE
from evaluation.contexts import Records, build_item
from evaluation.errors import InputError
from evaluation.files import write_json_atomic
from evaluation.grading import grade
from evaluation.rewards import RewardRule
from evaluation.tasks import EvalItem, get_task
from evaluation.tokenizer import Tokenizer, load_tokenizer
from neurons import protocol, rounds
from neurons import state as state_io
from neurons.auth import signed_headers
from neurons.chain import Chain, ChainError, MetagraphSnapshot
from neurons.flags import add_wallet_and_chain_arguments
from neurons.metrics_server import page_url, serve_metrics
from neurons.rounds import Miner
from neurons.state import ValidatorState

if TYPE_CHECKING:
    import bittensor

log = logging.getLogger("quasar.validator")

DEFAULT_SAMPLE_SIZE = 16
DEFAULT_TIMEOUT_S = 600.0
DEFAULT_ALPHA = 0.1
DEFAULT_EPOCH_BLOCKS = 100  # ~20 minutes at 12 s blocks; keep it >= the subnet's weights rate limit
DEFAULT_TASKS = "niah_single,niah_multikey,niah_multivalue,variable_tracking,aggregation"
# set_weights: attempts per epoch and the first backoff delay (doubled after each failure).
WEIGHT_ATTEMPTS = 4
WEIGHT_BACKOFF_S = 2.0
# A local chain's deadline base: its honest miners share one engine that answers one request at a time, so
# the last of them waits for the others' generations (about 20 s each at 1k tokens on 2 busy CPU cores).
MOCK_DEADLINE_BASE_S = 300.0
# Pause after a round that had nothing to do (no miners, chain down with no metagraph yet).
IDLE_PAUSE_S = 12.0
# All interfaces: Prometheus scrapes the pod's address. Tests and local runs pass --metrics.host 127.0.0.1.
DEFAULT_METRICS_HOST = "0.0.0.0"
# A round lasts from about a second (32k, fast miners) to the longest deadline (600 s) plus the prompt build.
ROUND_BUCKETS_S = (1, 2.5, 5, 10, 20, 40, 80, 160, 320, 640, 1280)


@dataclass(frozen=True)
class ValidatorConfig:
    netuid: int
    state_path: Path
    wallet_name: str = "default"
    wallet_hotkey: str = "default"
    wallet_path: str = "~/.bittensor/wallets"
    network: str | None = "finney"
    chain_endpoint: str | None = None
    sample_size: int = DEFAULT_SAMPLE_SIZE
    timeout_s: float = DEFAULT_TIMEOUT_S
    deadline_base_s: float = rounds.DEADLINE_BASE_S
    deadline_per_ktoken_s: float = rounds.DEADLINE_PER_KTOKEN_S
    alpha: float = DEFAULT_ALPHA
    epoch_length: int = DEFAULT_EPOCH_BLOCKS
    tasks: Mapping[str, float] = field(default_factory=lambda: rounds.parse_task_weights(DEFAULT_TASKS))
    bucket_weights: Mapping[str, float] = field(
        default_factory=lambda: rounds.parse_bucket_weights(rounds.DEFAULT_BUCKET_WEIGHTS)
    )
    rewards: RewardRule = field(default_factory=RewardRule)
    tokenizer: str | None = None
    data: Path | None = None
    reset_state: bool = False
    rounds: int | None = None
    round_pause_s: float = 0.0
    summary_json: Path | None = None
    weight_attempts: int = WEIGHT_ATTEMPTS
    weight_backoff_s: float = WEIGHT_BACKOFF_S
    metrics_host: str = DEFAULT_METRICS_HOST
    metrics_port: int | None = None  # None: no metrics server; 0: any free port


# ---------------------------------------------------------------------------------------------------------
# One query


# How a query ended: answered (graded; it may still be wrong), timeout, refused (an HTTP status other than
# 200), unreachable (no connection), invalid (an undecodable response or another task's answer).
QueryOutcome = Literal["answered", "timeout", "refused", "unreachable", "invalid"]
QUERY_OUTCOMES: tuple[QueryOutcome, ...] = ("answered", "timeout", "refused", "unreachable", "invalid")


@dataclass(frozen=True)
class Answer:
    uid: int
    text: str | None  # None: no valid answer (the error says why)
    error: str | None
    latency_s: float
    outcome: QueryOutcome


async def _read_capped(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The response body, refusing more than `limit` bytes: a hostile miner cannot fill our memory."""
    chunks, size = [], 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise protocol.ProtocolError("body", f"response larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def query_miner(
    session: aiohttp.ClientSession,
    wallet: "bittensor.Wallet",
    miner: Miner,
    body: bytes,
    task_id: str,
    deadline_s: float,
) -> Answer:
    """POST the encoded request to one miner, signed for its hotkey; a failure is an Answer with an error."""
    url = rounds.query_url(miner.endpoint, protocol.QUERY_PATH)
    headers = {**protocol.REQUEST_HEADERS, **signed_headers(wallet, body, miner.hotkey)}
    start = time.perf_counter()

    def failed(outcome: QueryOutcome, error: str) -> Answer:
        return Answer(miner.uid, None, error, time.perf_counter() - start, outcome)

    try:
        async with session.post(
            url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=deadline_s)
        ) as response:
            raw = await _read_capped(response, protocol.MAX_RESPONSE_BYTES)
            if response.status != 200:
                return failed("refused", f"HTTP {response.status}: {raw[:200].decode('utf-8', 'replace')}")
            answer = protocol.decode_response(raw)
    except TimeoutError:
        return failed("timeout", f"no answer within the {deadline_s:.1f} s deadline")
    except aiohttp.ClientError as error:
        return failed("unreachable", f"{type(error).__name__}: {error}")
    except protocol.ProtocolError as error:
        return failed("invalid", f"invalid response: {error}")
    if answer.task_id != task_id:
        return failed("invalid", f"answered task {answer.task_id!r}, asked {task_id!r}")
    return Answer(miner.uid, answer.text, None, time.perf_counter() - start, "answered")


# ---------------------------------------------------------------------------------------------------------
# Prometheus metrics

RoundOutcome = Literal["completed", "no_miners", "no_metagraph"]
ROUND_OUTCOMES: tuple[RoundOutcome, ...] = ("completed", "no_miners", "no_metagraph")
# set; chain_error (one failed attempt, retried with backoff); no_scores (no positive score: nothing to set).
WeightsOutcome = Literal["set", "chain_error", "no_scores"]
WEIGHTS_OUTCOMES: tuple[WeightsOutcome, ...] = ("set", "chain_error", "no_scores")


class ValidatorMetrics:
    """The validator's Prometheus series, in a registry of its own so several validators share one process.

    Per-uid series hold only uids of the current metagraph (a subnet has at most 256): a uid that leaves or
    changes hotkey loses its scores at the next sync, and its series with them.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.rounds = Counter(
            "quasar_validator_rounds",
            "Rounds by outcome: completed (miners asked and graded), no_miners (none serves an endpoint), "
            "no_metagraph (chain unreachable before the first metagraph)",
            ["outcome"],
            registry=registry,
        )
        self.round_duration = Histogram(
            "quasar_validator_round_duration_seconds",
            "Time of a completed round, from reading the metagraph to the saved scores",
            buckets=ROUND_BUCKETS_S,
            registry=registry,
        )
        self.queries = Counter(
            "quasar_validator_queries",
            "Queries to miners by outcome: answered, timeout, refused, unreachable, invalid",
            ["outcome"],
            registry=registry,
        )
        self.set_weights = Counter(
            "quasar_validator_set_weights",
            "Attempts to set weights by outcome: set, chain_error (retried), no_scores (nothing to set)",
            ["outcome"],
            registry=registry,
        )
        self.weights_last_set = Gauge(
            "quasar_validator_weights_last_set_timestamp_seconds",
            "When this process last set weights on chain, unix seconds (0: not yet)",
            registry=registry,
        )
        self.score = Gauge(
            "quasar_validator_miner_score",
            "Each uid's combined moving-average score, 0 to 1 (what its weight follows)",
            ["uid"],
            registry=registry,
        )
        self.weight = Gauge(
            "quasar_validator_miner_weight",
            "Each uid's share of the weights last set on chain (they sum to 1)",
            ["uid"],
            registry=registry,
        )
        # process_start_time_seconds: the weights alert waits that long after a (re)start.
        ProcessCollector(registry=registry)
        # Every outcome is exported from the start, at 0: rate() and absent() need no first event.
        for counter, outcomes in (
            (self.rounds, ROUND_OUTCOMES),
            (self.queries, QUERY_OUTCOMES),
            (self.set_weights, WEIGHTS_OUTCOMES),
        ):
            for outcome in outcomes:
                counter.labels(outcome)

    def publish_scores(self, combined: Mapping[int, float]) -> None:
        _replace_per_uid(self.score, combined)

    def publish_weights(self, weights: Mapping[int, float]) -> None:
        _replace_per_uid(self.weight, weights)
        self.weights_last_set.set_to_current_time()


def _replace_per_uid(gauge: Gauge, values: Mapping[int, float]) -> None:
    # Scrapes are answered on the same event loop, so none sees the gauge between clear and refill.
    gauge.clear()
    for uid, value in values.items():
        gauge.labels(str(uid)).set(value)


# ---------------------------------------------------------------------------------------------------------
# Rounds


@dataclass(frozen=True)
class RoundResult:
    round: int
    block: int
    task: str
    bucket: str
    prompt_tokens: int
    deadline_s: float
    answers: tuple[Answer, ...]
    accuracies: Mapping[int, float]
    rewards: Mapping[int, float]


RoundListener = Callable[[RoundResult, ValidatorState], None]


class Validator:
    """The loop's state and dependencies. Chain, wallet, tokenizer and records are injected (mock, tests)."""

    def __init__(
        self,
        config: ValidatorConfig,
        chain: Chain,
        wallet: "bittensor.Wallet",
        tokenizer: Tokenizer,
        records: Records | None,
        state: ValidatorState,
        rng: random.Random | None = None,
        listeners: Sequence[RoundListener] = (),
        metrics: ValidatorMetrics | None = None,
    ) -> None:
        self.config = config
        self.chain = chain
        self.wallet = wallet
        self.tokenizer = tokenizer
        self.records = records
        self.state = state
        # Item seeds must be unpredictable: a miner that could guess one could build the answer in advance.
        self.rng = rng or random.Random(secrets.randbits(128))
        self.listeners = list(listeners)
        self.metrics = metrics or ValidatorMetrics()
        self.metrics.publish_scores(self.state.combined)
        self._snapshot: MetagraphSnapshot | None = None
        self._weights_task: asyncio.Task[None] | None = None

    def save(self) -> None:
        state_io.save(self.config.state_path, self.state)

    async def sync(self) -> MetagraphSnapshot | None:
        """The metagraph; the last one seen while the chain is unreachable (scoring goes on)."""
        try:
            self._snapshot = await self.chain.snapshot()
        except ChainError as error:
            log.warning("chain unreachable, scoring with the last metagraph: %s", error)
            return self._snapshot
        current = {n.uid: n.hotkey for n in self._snapshot.neurons}
        replaced = rounds.changed_uids(self.state.hotkeys, current)
        if replaced:
            log.info("uids %s changed hotkey or left: their scores start from zero", sorted(replaced))
            self.state.set_scores(rounds.forget_uids(self.state.scores, replaced))
            self.metrics.publish_scores(self.state.combined)
        self.state.hotkeys = current
        return self._snapshot

    def build(self) -> tuple[EvalItem, bytes, str, float]:
        """One item, its request encoded once for every miner, its task id and deadline (CPU-bound)."""
        task = rounds.choose(self.config.tasks, self.rng)
        bucket = rounds.choose(self.config.bucket_weights, self.rng)
        item = build_item(
            task, bucket, 0, tokenizer=self.tokenizer, seed=self.rng.getrandbits(63), records=self.records
        )
        deadline = rounds.deadline_s(
            item.prompt_tokens,
            self.config.timeout_s,
            self.config.deadline_base_s,
            self.config.deadline_per_ktoken_s,
        )
        task_id = f"r{self.state.round}-{item.item_id}"
        request = protocol.QueryRequest(
            version=protocol.PROTOCOL_VERSION,
            task_id=task_id,
            task=task,
            bucket=bucket,
            prompt=item.prompt,
            max_new_tokens=get_task(task).max_new_tokens,
            deadline_unix=time.time() + deadline,
        )
        return item, protocol.encode_request(request), task_id, deadline

    async def run_round(self, session: aiohttp.ClientSession) -> RoundResult | None:
        started = time.perf_counter()
        snapshot = await self.sync()
        if snapshot is None:
            self.metrics.rounds.labels("no_metagraph").inc()
            return None
        miners = rounds.eligible_miners(
            [(n.uid, n.hotkey, n.endpoint) for n in snapshot.neurons], self.chain.hotkey
        )
        if not miners:
            log.info("no miner serves an endpoint yet")
            self.metrics.rounds.labels("no_miners").inc()
            return None
        sample = rounds.sample_miners(miners, self.config.sample_size, self.rng)
        # Building a 2M-token prompt takes seconds: off the event loop, so background weight setting runs.
        item, body, task_id, deadline = await asyncio.to_thread(self.build)
        log.info(
            "round %d: %s at %s (%d tokens, %d bytes sent), %d miners, deadline %.1f s",
            self.state.round,
            item.task,
            item.bucket,
            item.prompt_tokens,
            len(body),
            len(sample),
            deadline,
        )
        answers = await asyncio.gather(
            *(query_miner(session, self.wallet, m, body, task_id, deadline) for m in sample)
        )
        accuracies = {a.uid: grade(item, a.text) if a.text is not None else 0.0 for a in answers}
        rewards = rounds.rewards_for(accuracies, item.bucket, self.config.rewards)
        self.state.set_scores(
            rounds.apply_rewards(
                self.state.scores, item.bucket, rewards, self.config.alpha, self.config.bucket_weights
            )
        )
        result = RoundResult(
            self.state.round,
            snapshot.block,
            item.task,
            item.bucket,
            item.prompt_tokens,
            deadline,
            tuple(answers),
            accuracies,
            rewards,
        )
        for answer in answers:
            log.debug(
                "uid %d: accuracy %.3f, %s", answer.uid, accuracies[answer.uid], answer.error or "answered"
            )
        self.state.round += 1
        self.save()
        self._count_round(result, time.perf_counter() - started)
        self.maybe_set_weights(snapshot)
        return result

    def _count_round(self, result: RoundResult, duration_s: float) -> None:
        metrics = self.metrics
        metrics.rounds.labels("completed").inc()
        metrics.round_duration.observe(duration_s)
        for answer in result.answers:
            metrics.queries.labels(answer.outcome).inc()
        metrics.publish_scores(self.state.combined)

    def maybe_set_weights(self, snapshot: MetagraphSnapshot) -> None:
        """Start setting weights in the background when an epoch has passed and no attempt is in flight."""
        if self._weights_task is not None and not self._weights_task.done():
            return
        last = self.state.last_weights_block
        # A block behind the saved one means another chain (a fresh FakeChain after a restart, a reset
        # devnet): the saved block says nothing about it, so weights are due rather than blocked forever.
        if last is not None and 0 <= snapshot.block - last < self.config.epoch_length:
            return
        self._weights_task = asyncio.create_task(self.set_weights(snapshot), name="set-weights")

    async def set_weights(self, snapshot: MetagraphSnapshot) -> None:
        """Set weights from the combined scores, retrying chain errors with exponential backoff."""
        uids = [n.uid for n in snapshot.neurons]
        for attempt in range(self.config.weight_attempts):
            try:
                limits = await self.chain.weight_limits()
                weights = rounds.chain_weights(
                    self.state.combined, uids, limits.max_weight, limits.min_allowed_weights
                )
                if not weights:
                    log.info("no miner has a positive score yet: no weights to set")
                    self.metrics.set_weights.labels("no_scores").inc()
                    return
                await self.chain.set_weights(list(weights), list(weights.values()))
            except ChainError as error:
                log.warning("setting weights failed (attempt %d): %s", attempt + 1, error)
                self.metrics.set_weights.labels("chain_error").inc()
                if attempt + 1 < self.config.weight_attempts:
                    await asyncio.sleep(self.config.weight_backoff_s * 2**attempt)
                continue
            log.info("weights set at block %d for %s", snapshot.block, _count(len(weights), "uid"))
            self.metrics.set_weights.labels("set").inc()
            self.metrics.publish_weights(weights)  # shares: chain_weights normalises
            self.state.last_weights_block = snapshot.block
            self.save()
            return
        log.error(
            "gave up setting weights after %d attempts; trying again next round", self.config.weight_attempts
        )

    async def finish_weights(self) -> None:
        if self._weights_task is not None:
            await self._weights_task

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Rounds until `config.rounds` have run in this process or `stop` is set."""
        stop = stop or asyncio.Event()
        done = 0
        # One connection per sampled miner: aiohttp's default pool of 100 would queue larger samples.
        connector = aiohttp.TCPConnector(limit=max(100, self.config.sample_size))
        async with aiohttp.ClientSession(connector=connector) as session:
            while not stop.is_set() and (self.config.rounds is None or done < self.config.rounds):
                result = await self.run_round(session)
                if result is None:
                    await _pause(stop, IDLE_PAUSE_S)
                    continue
                done += 1
                for listener in self.listeners:
                    listener(result, self.state)
                await _pause(stop, self.config.round_pause_s)
        await self.finish_weights()


def _count(number: int, noun: str) -> str:
    """ "1 uid", "3 uids"."""
    return f"{number} {noun}{'' if number == 1 else 's'}"


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    if seconds > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)


# ---------------------------------------------------------------------------------------------------------
# WandB


def round_metrics(result: RoundResult) -> dict[str, float]:
    """What one round logs: mean and per-uid rewards, accuracy by task and by bucket, failures."""
    count = max(1, len(result.accuracies))
    accuracy = sum(result.accuracies.values()) / count
    metrics: dict[str, float] = {
        "round/prompt_tokens": result.prompt_tokens,
        "round/deadline_s": result.deadline_s,
        "round/miners": len(result.answers),
        "round/failures": sum(a.error is not None for a in result.answers),
        "reward/mean": sum(result.rewards.values()) / count,
        f"accuracy/task/{result.task}": accuracy,
        f"accuracy/bucket/{result.bucket}": accuracy,
        f"reward/task/{result.task}": sum(result.rewards.values()) / count,
        f"reward/bucket/{result.bucket}": sum(result.rewards.values()) / count,
    }
    metrics.update({f"reward/uid/{uid}": reward for uid, reward in result.rewards.items()})
    return metrics


class WandbLogger:
    """One WandB run per validator (id from netuid and hotkey, resumed across restarts)."""

    def __init__(
        self,
        project: str,
        entity: str | None,
        netuid: int,
        hotkey: str,
        config: dict[str, Any],
        mode: Literal["online", "offline"] | None = None,
    ) -> None:
        import wandb

        if mode == "offline":
            # init's mode covers the run only; WandB's process-wide analytics would still call home.
            wandb.setup(wandb.Settings(mode="offline"))
        try:
            self._run = wandb.init(
                project=project,
                entity=entity,
                name=f"validator-{hotkey[:8]}",
                id=f"quasar-{netuid}-{hotkey[:16]}",
                resume="allow",
                config=config,
                mode=mode,
            )
        except wandb.errors.Error as error:
            raise InputError(
                "--wandb.project",
                f"WandB did not start ({error}); "
                "run `wandb login`, set WANDB_MODE=offline or pass --wandb.off",
            ) from None

    def __call__(self, result: RoundResult, state: ValidatorState) -> None:
        self._run.log(round_metrics(result), step=result.round)

    def finish(self) -> None:
        import wandb

        self._run.finish()
        # wandb keeps process-wide settings (mode, folder) from its first init; the validator is done with it.
        wandb.teardown()


# ---------------------------------------------------------------------------------------------------------
# Leaderboard


def leaderboard(state: ValidatorState, kinds: Mapping[int, str] | None = None) -> list[dict[str, Any]]:
    """Miners by combined score, best first (what --summary-json writes)."""
    rows = []
    for uid, score in sorted(state.combined.items(), key=lambda item: (-item[1], item[0])):
        row: dict[str, Any] = {"uid": uid, "hotkey": state.hotkeys.get(uid, ""), "score": score}
        if kinds is not None:
            row["kind"] = kinds.get(uid, "unknown")
        row["buckets"] = {b: s[uid] for b, s in sorted(state.bucket_scores.items()) if uid in s}
        rows.append(row)
    return rows


def format_leaderboard(rows: Sequence[Mapping[str, Any]], alpha: float) -> str:
    """The leaderboard with a legend: what a score is, and the score per context size behind it."""
    lines = [
        f"leaderboard: score = moving average (alpha {alpha:g}) of each miner's per-round rewards, 0 to 1; "
        "weights on chain follow it",
        f"{'uid':>4}  {'hotkey':<12}  {'kind':<10}  {'score':>7}  score by context size",
    ]
    lines += [
        f"{row['uid']:>4}  {row['hotkey'][:12]:<12}  {row.get('kind', '-'):<10}  {row['score']:>7.4f}  "
        + ", ".join(f"{bucket} {score:.4f}" for bucket, score in row["buckets"].items())
        for row in rows
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# Flags


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="QUASAR validator: score miners on long-context questions and set weights."
    )
    add_wallet_and_chain_arguments(parser, netuid_required=False)
    neuron = parser.add_argument_group("rounds")
    neuron.add_argument(
        "--neuron.sample_size",
        dest="sample_size",
        type=int,
        default=DEFAULT_SAMPLE_SIZE,
        help=f"miners asked per round (default: {DEFAULT_SAMPLE_SIZE})",
    )
    neuron.add_argument(
        "--neuron.timeout",
        dest="timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help=f"most seconds a miner gets, whatever the context size (default: {DEFAULT_TIMEOUT_S:g})",
    )
    neuron.add_argument(
        "--neuron.deadline_base",
        dest="deadline_base",
        type=float,
        help="seconds every miner gets before the per-token allowance "
        f"(default: {rounds.DEADLINE_BASE_S:g}; mock: {MOCK_DEADLINE_BASE_S:g})",
    )
    neuron.add_argument(
        "--neuron.deadline_per_ktoken",
        dest="deadline_per_ktoken",
        type=float,
        default=rounds.DEADLINE_PER_KTOKEN_S,
        help=f"extra seconds per 1,000 prompt tokens (default: {rounds.DEADLINE_PER_KTOKEN_S:g})",
    )
    neuron.add_argument(
        "--neuron.moving_average_alpha",
        dest="alpha",
        type=float,
        default=DEFAULT_ALPHA,
        help=f"weight of a new reward in the moving averages (default: {DEFAULT_ALPHA:g})",
    )
    neuron.add_argument(
        "--neuron.epoch_length",
        dest="epoch_length",
        type=int,
        help=f"blocks between weight settings (default: {DEFAULT_EPOCH_BLOCKS}; mock: 2)",
    )
    neuron.add_argument(
        "--neuron.tasks",
        dest="tasks",
        help=f"tasks and their weights, TASK[=WEIGHT],... (default: {DEFAULT_TASKS})",
    )
    neuron.add_argument(
        "--neuron.bucket_weights",
        dest="bucket_weights",
        # The "%" after the share escapes the one it prints: argparse formats help with %.
        help=f"buckets and weights, BUCKET=WEIGHT,...; no bucket above {MAX_BUCKET_SHARE:.0%}% "
        f"(default: {rounds.DEFAULT_BUCKET_WEIGHTS}; mock: 32k=1)",
    )
    neuron.add_argument(
        "--neuron.reward_multipliers",
        dest="reward_multipliers",
        default="",
        help="reward multiplier per bucket, BUCKET=MULT,... (default: evaluation.rewards')",
    )
    neuron.add_argument(
        "--neuron.tokenizer",
        dest="tokenizer",
        help="tokenizer (folder or Hub id) buckets are measured in (default: the built-in tiny one)",
    )
    neuron.add_argument(
        "--neuron.data",
        dest="data",
        type=Path,
        help="LongBench data (folder or data.zip) for LongBench tasks (default: download)",
    )
    neuron.add_argument(
        "--neuron.state_path",
        dest="state_path",
        type=Path,
        help="state file (default: ~/.quasar/validator/<wallet>-<hotkey>-netuid<N>.json)",
    )
    neuron.add_argument(
        "--neuron.reset_state",
        dest="reset_state",
        action="store_true",
        help="start from empty scores even if the state file is corrupt or another validator's",
    )
    neuron.add_argument(
        "--neuron.round_pause",
        dest="round_pause",
        type=float,
        default=0.0,
        help="seconds to wait between rounds (default: 0)",
    )
    parser.add_argument(
        "--mock", action="store_true", help="run a whole local subnet (see docs/validator.md)"
    )
    parser.add_argument("--rounds", type=int, help="stop after this many rounds (default: run until stopped)")
    parser.add_argument(
        "--summary-json", dest="summary_json", type=Path, help="write the final leaderboard here"
    )
    parser.add_argument("--logging.debug", dest="debug", action="store_true", help="debug logging")
    metrics = parser.add_argument_group("metrics (Prometheus)")
    metrics.add_argument(
        "--metrics.port",
        dest="metrics_port",
        type=int,
        help="serve Prometheus metrics on GET /metrics at this port, 0 for any free one (default: off)",
    )
    metrics.add_argument(
        "--metrics.host",
        dest="metrics_host",
        default=DEFAULT_METRICS_HOST,
        help=f"address the metrics server listens on (default: {DEFAULT_METRICS_HOST}, all interfaces)",
    )
    wandb_group = parser.add_argument_group("wandb")
    wandb_group.add_argument("--wandb.off", dest="wandb_off", action="store_true", help="no WandB logging")
    wandb_group.add_argument(
        "--wandb.project",
        dest="wandb_project",
        default="quasar-validators",
        help="WandB project (default: quasar-validators)",
    )
    wandb_group.add_argument("--wandb.entity", dest="wandb_entity", help="WandB entity (team or user)")
    return parser


def config_from_args(args: argparse.Namespace) -> ValidatorConfig:
    """The config the flags describe (mock defaults where a flag is absent); InputError names a bad flag."""
    if args.netuid is None and not args.mock:
        raise InputError("--netuid", "required (or run --mock)")
    netuid = 1 if args.netuid is None else args.netuid
    checks = [
        ("--netuid", netuid >= 0, "must not be negative"),
        ("--neuron.sample_size", args.sample_size >= 1, "must be >= 1"),
        ("--neuron.timeout", args.timeout > 0, "must be positive"),
        ("--neuron.deadline_per_ktoken", args.deadline_per_ktoken >= 0, "must not be negative"),
        ("--neuron.moving_average_alpha", 0 < args.alpha <= 1, "must be within (0, 1]"),
        ("--neuron.round_pause", args.round_pause >= 0, "must not be negative"),
        ("--rounds", args.rounds is None or args.rounds >= 1, "must be >= 1"),
        (
            "--metrics.port",
            args.metrics_port is None or 0 <= args.metrics_port <= 65535,
            "must be a port number, 0 to 65535",
        ),
    ]
    for flag, ok, problem in checks:
        if not ok:
            raise InputError(flag, problem)
    epoch = args.epoch_length if args.epoch_length is not None else (2 if args.mock else DEFAULT_EPOCH_BLOCKS)
    if epoch < 1:
        raise InputError("--neuron.epoch_length", "must be >= 1")
    base = (
        args.deadline_base
        if args.deadline_base is not None
        else (MOCK_DEADLINE_BASE_S if args.mock else rounds.DEADLINE_BASE_S)
    )
    if not (math.isfinite(base) and base > 0):
        raise InputError("--neuron.deadline_base", "must be positive")
    if args.bucket_weights is not None:
        buckets = rounds.parse_bucket_weights(args.bucket_weights, 1.0 if args.mock else MAX_BUCKET_SHARE)
    else:
        # Mock mode asks one size, the seed's smallest bucket unless --mock.lengths says otherwise.
        buckets = (
            rounds.parse_bucket_weights("32k=1", 1.0)
            if args.mock
            else rounds.parse_bucket_weights(rounds.DEFAULT_BUCKET_WEIGHTS)
        )
    state_path = (
        args.state_path
        or Path(
            f"~/.quasar/validator/{args.wallet_name}-{args.wallet_hotkey}-netuid{netuid}.json"
        ).expanduser()
    )
    return ValidatorConfig(
        netuid=netuid,
        state_path=state_path,
        wallet_name=args.wallet_name,
        wallet_hotkey=args.wallet_hotkey,
        wallet_path=args.wallet_path,
        network=args.network,
        chain_endpoint=args.chain_endpoint,
        sample_size=args.sample_size,
        timeout_s=args.timeout,
        deadline_base_s=base,
        deadline_per_ktoken_s=args.deadline_per_ktoken,
        alpha=args.alpha,
        epoch_length=epoch,
        tasks=rounds.parse_task_weights(args.tasks or DEFAULT_TASKS),
        bucket_weights=buckets,
        rewards=RewardRule.parse(args.reward_multipliers),
        tokenizer=args.tokenizer,
        data=args.data,
        reset_state=args.reset_state,
        rounds=args.rounds,
        round_pause_s=args.round_pause,
        summary_json=args.summary_json,
        metrics_host=args.metrics_host,
        metrics_port=args.metrics_port,
    )


def load_state(config: ValidatorConfig, hotkey: str) -> ValidatorState:
    if config.reset_state:
        log.warning(
            "--neuron.reset_state: starting from empty scores; %s will be overwritten", config.state_path
        )
        return ValidatorState(config.netuid, hotkey)
    return state_io.load(config.state_path, config.netuid, hotkey)


def load_records(config: ValidatorConfig) -> Records | None:
    from evaluation.longbench import load_records as read

    longbench = [t for t in config.tasks if get_task(t).source == "longbench"]
    return read(longbench, config.data) if longbench else None


WandbFactory = Callable[[int, str, dict[str, Any]], WandbLogger | None]


async def run_validator(
    config: ValidatorConfig,
    chain: Chain,
    wallet: "bittensor.Wallet",
    records: Records | None,
    make_wandb: WandbFactory,
    kinds: Mapping[int, str] | None = None,
    stop: asyncio.Event | None = None,
    on_round: RoundListener | None = None,
) -> ValidatorState:
    """Run rounds, then print the leaderboard and write --summary-json. Used by real and mock mode;
    `on_round` reports each round (default: one log line)."""
    state = load_state(config, chain.hotkey)
    tokenizer = await asyncio.to_thread(load_tokenizer, config.tokenizer)
    wandb_logger = make_wandb(config.netuid, chain.hotkey, _loggable(config))
    listeners: list[RoundListener] = [on_round or _log_round]
    if wandb_logger is not None:
        listeners.append(wandb_logger)
    validator = Validator(config, chain, wallet, tokenizer, records, state, listeners=listeners)
    try:
        async with _metrics_served(validator.metrics, config):
            await validator.run(stop)
    finally:
        if wandb_logger is not None:
            wandb_logger.finish()
    rows = leaderboard(validator.state, kinds)
    print(format_leaderboard(rows, config.alpha), flush=True)
    if config.summary_json is not None:
        write_json_atomic(config.summary_json, rows)
    return validator.state


@contextlib.asynccontextmanager
async def _metrics_served(metrics: ValidatorMetrics, config: ValidatorConfig) -> AsyncIterator[None]:
    """The metrics server for as long as the rounds run, where --metrics.port asks for one."""
    if config.metrics_port is None:
        yield
        return
    site = await serve_metrics(metrics.registry, config.metrics_host, config.metrics_port)
    log.info("Prometheus metrics at %s", page_url(site))
    try:
        yield
    finally:
        await site.stop()


def _loggable(config: ValidatorConfig) -> dict[str, Any]:
    return {
        "netuid": config.netuid,
        "sample_size": config.sample_size,
        "timeout_s": config.timeout_s,
        "alpha": config.alpha,
        "epoch_length": config.epoch_length,
        "tasks": dict(config.tasks),
        "bucket_weights": dict(config.bucket_weights),
        "reward_multipliers": dict(config.rewards.multipliers),
    }


def _log_round(result: RoundResult, state: ValidatorState) -> None:
    answered = sum(a.error is None for a in result.answers)
    mean = sum(result.accuracies.values()) / max(1, len(result.accuracies))
    log.info(
        "round %d done: %s/%s, %d/%d answered, mean accuracy %.3f",
        result.round,
        result.task,
        result.bucket,
        answered,
        len(result.answers),
        mean,
    )


async def run_real(config: ValidatorConfig, make_wandb: WandbFactory) -> int:
    from neurons.chain import BittensorChain, load_wallet

    wallet = load_wallet(config.wallet_name, config.wallet_hotkey, config.wallet_path)
    chain = BittensorChain(wallet, config.network, config.chain_endpoint, config.netuid)
    await run_validator(config, chain, wallet, load_records(config), make_wandb, stop=_stop_on_signals())
    return 0


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    return stop


def wandb_factory(args: argparse.Namespace, offline: bool = False) -> WandbFactory:
    """WandB loggers as the flags say; `offline` (mock mode) logs offline unless WANDB_MODE says otherwise."""

    def make(netuid: int, hotkey: str, config: dict[str, Any]) -> WandbLogger | None:
        if args.wandb_off:
            return None
        mode: Literal["offline"] | None = "offline" if offline and "WANDB_MODE" not in os.environ else None
        return WandbLogger(args.wandb_project, args.wandb_entity, netuid, hotkey, config, mode)

    return make


if __name__ == "__main__":
    # The command line lives above this module and mock mode (neurons/validator_cli.py); the package's
    # modules are imported by name, not as this file's second copy under __main__.
    from neurons.validator_cli import main

    sys.exit(main(sys.argv[1:], "neurons/validator.py"))
