"""The validator loop over real loopback HTTP: signed queries to real miner servers, grading, moving averages,
state kept across restarts, weights on the FakeChain with retries, scoring while the chain is down, flags."""

import asyncio
import functools
import logging
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ParamSpec

import aiohttp
import bittensor
import pytest
from prometheus_client.parser import text_string_to_metric_families

from evaluation.engines import make_engine
from evaluation.tokenizer import Tokenizer, load_tokenizer
from neurons import state as state_io
from neurons.auth import create_wallet
from neurons.chain import ChainError, FakeChain, MetagraphSnapshot, WeightLimits
from neurons.metrics_server import page_url, serve_metrics
from neurons.miner import MinerConfig, start_miner
from neurons.mock import read_answer
from neurons.rounds import parse_bucket_weights, parse_task_weights
from neurons.state import StateError, ValidatorState
from neurons.validator import (
    MOCK_DEADLINE_BASE_S,
    QUERY_OUTCOMES,
    Answer,
    RoundResult,
    Validator,
    ValidatorConfig,
    WandbLogger,
    build_parser,
    config_from_args,
    round_metrics,
)
from neurons.validator_cli import main
from tests.fake_tgi import FakeTGI

NETUID = 3
P = ParamSpec("P")


def run_async(test: Callable[P, Coroutine[Any, Any, None]]) -> Callable[P, None]:
    """Runs an async test in its own event loop (the suite has no async plugin)."""

    @functools.wraps(test)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


@pytest.fixture(scope="module")
def wallet_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("wallets")


@pytest.fixture(scope="module")
def validator_wallet(wallet_path: Path) -> bittensor.Wallet:
    return create_wallet("quasar-test", "validator", str(wallet_path))


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return load_tokenizer(None)


@dataclass
class Subnet:
    chain: FakeChain
    uids: dict[str, int]  # miner name -> uid
    engines: dict[str, FakeTGI]


@asynccontextmanager
async def subnet(
    wallet_path: Path, validator_wallet: bittensor.Wallet, answers: dict[str, Callable[[str], str]]
) -> AsyncIterator[Subnet]:
    """A FakeChain with the validator registered and one real miner server per answer function, each
    backed by a FakeTGI engine answering with that function."""
    chain = FakeChain(NETUID)
    chain.register(validator_wallet.hotkey.ss58_address, stake=10_000, validator_permit=True)
    uids, engines, running = {}, {}, []
    try:
        for name, answer in answers.items():
            hotkey = create_wallet("quasar-test", name, str(wallet_path)).hotkey.ss58_address
            uids[name] = chain.register(hotkey)
            engines[name] = FakeTGI(answer=answer, max_input_tokens=10**7, max_total_tokens=10**7 + 1000)
            engines[name].start()
            engine = make_engine("tgi", engines[name].url, None, 30)
            running.append(
                (await start_miner(MinerConfig(netuid=NETUID), chain.view(hotkey), engine), engine)
            )
        yield Subnet(chain, uids, engines)
    finally:
        for server, engine in running:
            await server.stop()
            await engine.aclose()
        for fake in engines.values():
            fake.stop()


def config_for(tmp_path: Path, **changes: object) -> ValidatorConfig:
    config = ValidatorConfig(
        netuid=NETUID,
        state_path=tmp_path / "state.json",
        tasks=parse_task_weights("niah_single,niah_multikey"),
        bucket_weights=parse_bucket_weights("32k=1", max_share=1.0),
        alpha=0.5,
        weight_backoff_s=0.01,
        epoch_length=1000,
    )
    return replace(config, **changes)  # type: ignore[arg-type]


def make_validator(
    config: ValidatorConfig, chain_view: object, wallet: bittensor.Wallet, tokenizer: Tokenizer
) -> Validator:
    state = state_io.load(config.state_path, config.netuid, wallet.hotkey.ss58_address)
    return Validator(config, chain_view, wallet, tokenizer, None, state)  # type: ignore[arg-type]


def dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def one_round(validator: Validator) -> RoundResult:
    async with aiohttp.ClientSession() as session:
        result = await validator.run_round(session)
    assert result is not None
    return result


def serve_a_dead_miner(net: Subnet, wallet_path: Path) -> int:
    """A registered miner whose announced endpoint answers nothing; its uid."""
    gone = create_wallet("quasar-test", "gone", str(wallet_path)).hotkey.ss58_address
    uid: int = net.chain.register(gone)
    net.chain.serve(gone, "127.0.0.1", dead_port())
    return uid


@run_async
async def test_a_whole_round_over_signed_http(
    tmp_path: Path, wallet_path: Path, validator_wallet: bittensor.Wallet, tokenizer: Tokenizer
) -> None:
    answers = {"reader": read_answer, "wrong": lambda prompt: "I do not know"}
    async with subnet(wallet_path, validator_wallet, answers) as net:
        gone_uid = serve_a_dead_miner(net, wallet_path)
        config = config_for(tmp_path)
        validator = make_validator(
            config, net.chain.view(validator_wallet.hotkey.ss58_address), validator_wallet, tokenizer
        )
        result = await one_round(validator)

    reader, wrong = net.uids["reader"], net.uids["wrong"]
    assert result.accuracies == {reader: 1.0, wrong: 0.0, gone_uid: 0.0}
    errors = {a.uid: a.error for a in result.answers}
    assert errors[reader] is None
    assert errors[wrong] is None
    assert "Connect" in str(errors[gone_uid])
    assert result.prompt_tokens > 30_000
    # The one prompt reached every engine; the validator itself (no endpoint) was not asked.
    prompts = [fake.requests[-1].body["inputs"] for fake in net.engines.values()]
    assert prompts[0] == prompts[1]
    assert "special magic number" in prompts[0]
    saved = state_io.load(config.state_path, NETUID, validator_wallet.hotkey.ss58_address)
    assert saved.round == 1
    assert saved.bucket_scores == {"32k": {reader: 0.5, wrong: 0.0, gone_uid: 0.0}}
    assert saved.combined[reader] == 0.5


@run_async
async def test_restart_keeps_state_and_replaced_hotkeys_start_from_zero(
    tmp_path: Path, wallet_path: Path, validator_wallet: bittensor.Wallet, tokenizer: Tokenizer
) -> None:
    async with subnet(wallet_path, validator_wallet, {"reader": read_answer, "other": read_answer}) as net:
        view = net.chain.view(validator_wallet.hotkey.ss58_address)
        config = config_for(tmp_path, rounds=1)
        await make_validator(config, view, validator_wallet, tokenizer).run()
        restarted = make_validator(config, view, validator_wallet, tokenizer)
        assert restarted.state.round == 1
        await restarted.run()
        assert restarted.state.round == 2
        reader, other = net.uids["reader"], net.uids["other"]
        assert restarted.state.combined == {reader: 0.75, other: 0.75}  # 0.5 * 1 + 0.5 * 0.5
        newcomer = create_wallet("quasar-test", "newcomer", str(wallet_path)).hotkey.ss58_address
        net.chain.replace(other, newcomer)
        await restarted.sync()
        assert restarted.state.combined == {reader: 0.75}
        assert restarted.state.hotkeys[other] == newcomer


@run_async
async def test_weights_are_set_after_chain_errors(
    tmp_path: Path,
    wallet_path: Path,
    validator_wallet: bittensor.Wallet,
    tokenizer: Tokenizer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "quasar.validator")
    async with subnet(wallet_path, validator_wallet, {"reader": read_answer, "wrong": lambda p: "?"}) as net:
        net.chain.fail_next_set_weights = 2
        config = config_for(tmp_path, rounds=1, epoch_length=1)
        hotkey = validator_wallet.hotkey.ss58_address
        validator = make_validator(config, net.chain.view(hotkey), validator_wallet, tokenizer)
        await validator.run()
    assert net.chain.fail_next_set_weights == 0
    assert net.chain.weights[hotkey] == [([net.uids["reader"]], [1.0])]
    assert f"weights set at block {validator.state.last_weights_block} for 1 uid" in caplog.messages
    assert validator.state.last_weights_block is not None
    assert (
        state_io.load(config.state_path, NETUID, hotkey).last_weights_block
        == validator.state.last_weights_block
    )


@run_async
async def test_a_restart_on_a_new_chain_sets_weights_again(
    tmp_path: Path, wallet_path: Path, validator_wallet: bittensor.Wallet, tokenizer: Tokenizer
) -> None:
    """Mock mode's restart: the saved last-weights block comes from a chain whose counter ran ahead of the
    fresh FakeChain's; weights must still be set on the new chain."""
    hotkey = validator_wallet.hotkey.ss58_address
    config = config_for(tmp_path, rounds=3, epoch_length=2)
    async with subnet(wallet_path, validator_wallet, {"reader": read_answer}) as first:
        before = make_validator(config, first.chain.view(hotkey), validator_wallet, tokenizer)
        await before.run()
    saved_block = state_io.load(config.state_path, NETUID, hotkey).last_weights_block
    assert saved_block is not None
    async with subnet(wallet_path, validator_wallet, {"reader": read_answer}) as second:
        after = make_validator(
            replace(config, rounds=1), second.chain.view(hotkey), validator_wallet, tokenizer
        )
        await after.run()
        assert second.chain.block < saved_block  # the new chain is behind what the state remembers
    assert second.chain.weights[hotkey] == [([second.uids["reader"]], [1.0])]
    assert (
        after.state.last_weights_block == state_io.load(config.state_path, NETUID, hotkey).last_weights_block
    )


@run_async
async def test_weights_respect_the_subnet_limits(
    tmp_path: Path, wallet_path: Path, validator_wallet: bittensor.Wallet, tokenizer: Tokenizer
) -> None:
    answers = {"a": read_answer, "b": lambda p: "?", "c": lambda p: "?"}
    async with subnet(wallet_path, validator_wallet, answers) as net:
        net.chain.limits = WeightLimits(max_weight=0.6, min_allowed_weights=3, rate_limit_blocks=0)
        config = config_for(tmp_path, rounds=1, epoch_length=1)
        hotkey = validator_wallet.hotkey.ss58_address
        await make_validator(config, net.chain.view(hotkey), validator_wallet, tokenizer).run()
    ((uids, weights),) = net.chain.weights[hotkey]
    assert len(uids) >= 3
    assert max(weights) / sum(weights) <= 0.6 + 1e-6


class DownChain:
    """A chain that answered once and is unreachable since."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.hotkey: str = inner.hotkey  # type: ignore[attr-defined]
        self.calls = 0

    async def snapshot(self) -> MetagraphSnapshot:
        self.calls += 1
        if self.calls > 1:
            raise ChainError("connection refused")
        snapshot: MetagraphSnapshot = await self.inner.snapshot()  # type: ignore[attr-defined]
        return snapshot

    async def serve(self, ip: str, port: int) -> None:
        raise ChainError("connection refused")

    async def set_weights(self, uids: Sequence[int], weights: Sequence[float]) -> None:
        raise ChainError("connection refused")

    async def weight_limits(self) -> WeightLimits:
        raise ChainError("connection refused")


@run_async
async def test_scoring_goes_on_while_the_chain_is_down(
    tmp_path: Path, wallet_path: Path, validator_wallet: bittensor.Wallet, tokenizer: Tokenizer
) -> None:
    async with subnet(wallet_path, validator_wallet, {"reader": read_answer}) as net:
        chain = DownChain(net.chain.view(validator_wallet.hotkey.ss58_address))
        config = config_for(tmp_path, rounds=3, epoch_length=1, weight_attempts=2)
        validator = make_validator(config, chain, validator_wallet, tokenizer)
        await asyncio.wait_for(validator.run(), 60)
    assert validator.state.round == 3
    assert validator.state.combined[net.uids["reader"]] == 0.875
    assert validator.state.last_weights_block is None
    assert net.chain.weights == {}


# ------------------------------------------------------------------------------------------ metrics

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(url: str) -> Samples:
    """Every sample of a /metrics page, by name and labels."""
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        page = await response.text()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(page)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def per_uid(samples: Samples, name: str) -> dict[int, float]:
    return {int(dict(labels)["uid"]): v for (n, labels), v in samples.items() if n == name}


def queries(samples: Samples) -> dict[str, float]:
    return {o: value(samples, "quasar_validator_queries_total", outcome=o) for o in QUERY_OUTCOMES}


@run_async
async def test_metrics_over_http_follow_rounds_scores_and_weights(
    tmp_path: Path, wallet_path: Path, validator_wallet: bittensor.Wallet, tokenizer: Tokenizer
) -> None:
    answers = {"reader": read_answer, "wrong": lambda prompt: "I do not know"}
    async with subnet(wallet_path, validator_wallet, answers) as net:
        gone_uid = serve_a_dead_miner(net, wallet_path)
        net.chain.fail_next_set_weights = 1
        hotkey = validator_wallet.hotkey.ss58_address
        validator = make_validator(
            config_for(tmp_path, epoch_length=1), net.chain.view(hotkey), validator_wallet, tokenizer
        )
        site = await serve_metrics(validator.metrics.registry, "127.0.0.1", 0)
        url = page_url(site)
        try:
            before = await scrape(url)
            started = time.time()
            for _ in range(2):
                await one_round(validator)
                await validator.finish_weights()
            after, combined_after = await scrape(url), dict(validator.state.combined)
            # A uid that changes hotkey loses its score, and its series with it.
            net.chain.replace(
                net.uids["reader"], create_wallet("quasar-test", "new", str(wallet_path)).hotkey.ss58_address
            )
            await validator.sync()
            replaced = await scrape(url)
        finally:
            await site.stop()

    # Before any round: every outcome is there at 0, and no per-uid series.
    assert value(before, "quasar_validator_rounds_total", outcome="completed") == 0
    assert set(queries(before).values()) == {0}
    assert value(before, "quasar_validator_weights_last_set_timestamp_seconds") == 0
    assert per_uid(before, "quasar_validator_miner_score") == {}
    # Two rounds, each asking all three miners: two answered, one unreachable.
    assert value(after, "quasar_validator_rounds_total", outcome="completed") == 2
    assert value(after, "quasar_validator_rounds_total", outcome="no_miners") == 0
    assert value(after, "quasar_validator_round_duration_seconds_count") == 2
    assert value(after, "quasar_validator_round_duration_seconds_sum") > 0
    assert queries(after) == {"answered": 4, "timeout": 0, "refused": 0, "unreachable": 2, "invalid": 0}
    # Scores are the state's combined scores, one series per scored uid of the metagraph.
    assert per_uid(after, "quasar_validator_miner_score") == combined_after
    assert set(combined_after) == {net.uids["reader"], net.uids["wrong"], gone_uid}
    # One failed attempt, retried; the weights last set are the chain's, as shares.
    assert value(after, "quasar_validator_set_weights_total", outcome="chain_error") == 1
    assert value(after, "quasar_validator_set_weights_total", outcome="set") >= 1
    uids, weights = net.chain.weights[hotkey][-1]
    assert per_uid(after, "quasar_validator_miner_weight") == pytest.approx(
        {uid: w / sum(weights) for uid, w in zip(uids, weights, strict=True)}
    )
    assert started <= value(after, "quasar_validator_weights_last_set_timestamp_seconds") <= time.time()
    assert value(after, "process_start_time_seconds") <= started
    assert net.uids["reader"] not in per_uid(replaced, "quasar_validator_miner_score")
    assert per_uid(replaced, "quasar_validator_miner_score") == validator.state.combined


class NoChain:
    """A chain that was never reachable."""

    hotkey = "5NoValidator"

    async def snapshot(self) -> MetagraphSnapshot:
        raise ChainError("connection refused")


@run_async
async def test_rounds_with_nothing_to_do_are_counted_by_why(
    tmp_path: Path, validator_wallet: bittensor.Wallet, tokenizer: Tokenizer
) -> None:
    lonely = FakeChain(NETUID)
    lonely.register(validator_wallet.hotkey.ss58_address, validator_permit=True)
    config = config_for(tmp_path)
    for chain, outcome in (
        (lonely.view(validator_wallet.hotkey.ss58_address), "no_miners"),
        (NoChain(), "no_metagraph"),
    ):
        validator = make_validator(config, chain, validator_wallet, tokenizer)
        site = await serve_metrics(validator.metrics.registry, "127.0.0.1", 0)
        try:
            async with aiohttp.ClientSession() as session:
                assert await validator.run_round(session) is None
            samples = await scrape(page_url(site))
        finally:
            await site.stop()
        assert value(samples, "quasar_validator_rounds_total", outcome=outcome) == 1
        assert value(samples, "quasar_validator_rounds_total", outcome="completed") == 0
        assert value(samples, "quasar_validator_round_duration_seconds_count") == 0


def test_quasar_validator_serves_metrics_while_it_runs(tmp_path: Path) -> None:
    """The command line's --metrics flags, in a process of its own (mock mode, no model)."""
    log_path = tmp_path / "validator.log"
    flags = ["--mock", "--mock.honest", "0", "--wandb.off", "--logging.debug", "--neuron.round_pause", "0.5"]
    flags += [
        "--neuron.state_path",
        str(tmp_path / "s.json"),
        "--metrics.host",
        "127.0.0.1",
        "--metrics.port",
        "0",
    ]
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "neurons.validator_cli", *flags], stdout=log_file, stderr=subprocess.STDOUT
        )
    try:
        url = asyncio.run(_metrics_url(log_path, process))
        samples = asyncio.run(_eventually_weighted(url))
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert value(samples, "quasar_validator_rounds_total", outcome="completed") >= 1
    # Mock mode's roster: the reader, an empty and a memorising adversary; only the reader scores.
    scores = per_uid(samples, "quasar_validator_miner_score")
    assert len(scores) == 3
    weights = per_uid(samples, "quasar_validator_miner_weight")
    assert sum(weights.values()) == pytest.approx(1.0)
    assert max(weights, key=weights.__getitem__) == max(scores, key=scores.__getitem__)


async def _metrics_url(log_path: Path, process: subprocess.Popen[bytes]) -> str:
    """The address the validator logged (it asked for any free port)."""
    for _ in range(1200):
        logged = log_path.read_text(errors="replace")
        found = re.search(r"quasar.validator: Prometheus metrics at (\S+)", logged)
        if found:
            return found.group(1)
        assert process.poll() is None, log_path.read_text(errors="replace")[-3000:]
        await asyncio.sleep(0.1)
    raise AssertionError("the validator never said where its metrics are")


async def _eventually_weighted(url: str) -> Samples:
    for _ in range(600):
        samples = await scrape(url)
        if value(samples, "quasar_validator_weights_last_set_timestamp_seconds") > 0:
            return samples
        await asyncio.sleep(0.1)
    raise AssertionError("no weights set")


def test_a_metrics_port_in_use_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        flags = ["--mock", "--mock.honest", "0", "--rounds", "1", "--wandb.off"]
        flags += ["--neuron.state_path", str(tmp_path / "s.json"), "--metrics.host", "127.0.0.1"]
        assert main([*flags, "--metrics.port", str(port)], "test") == 2
    assert f"--metrics.port: cannot listen on 127.0.0.1 port {port}" in capsys.readouterr().err


def parse(*flags: str) -> ValidatorConfig:
    return config_from_args(build_parser("test").parse_args(list(flags)))


def test_every_flag_reaches_the_config(tmp_path: Path) -> None:
    config = parse(
        "--netuid", "9", "--wallet.name", "cold", "--wallet.hotkey", "hot", "--wallet.path", "/w",
        "--subtensor.network", "test", "--subtensor.chain_endpoint", "ws://x:9944",
        "--neuron.sample_size", "5", "--neuron.timeout", "99", "--neuron.deadline_base", "3",
        "--neuron.deadline_per_ktoken", "0.5", "--neuron.moving_average_alpha", "0.2",
        "--neuron.epoch_length", "7", "--neuron.tasks", "niah_single=2,trec",
        "--neuron.bucket_weights", "32k=1,2m=1", "--neuron.reward_multipliers", "2m=3",
        "--neuron.tokenizer", "tok", "--neuron.data", "/data.zip",
        "--neuron.state_path", str(tmp_path / "s.json"), "--neuron.reset_state",
        "--neuron.round_pause", "1.5", "--rounds", "4",
        "--summary-json", str(tmp_path / "sum.json"),
        "--metrics.host", "127.0.0.1", "--metrics.port", "9464",
    )  # fmt: skip
    assert (config.netuid, config.wallet_name, config.wallet_hotkey, config.wallet_path) == (
        9,
        "cold",
        "hot",
        "/w",
    )
    assert (config.network, config.chain_endpoint) == ("test", "ws://x:9944")
    assert (config.sample_size, config.timeout_s, config.deadline_base_s, config.deadline_per_ktoken_s) == (
        5,
        99,
        3,
        0.5,
    )
    assert (config.alpha, config.epoch_length, config.rounds, config.round_pause_s) == (0.2, 7, 4, 1.5)
    assert config.tasks == {"niah_single": 2.0, "trec": 1.0}
    assert config.bucket_weights == {"32k": 1.0, "2m": 1.0}
    assert config.rewards.multipliers["2m"] == 3.0
    assert (config.tokenizer, config.data, config.reset_state) == ("tok", Path("/data.zip"), True)
    assert config.state_path == tmp_path / "s.json"
    assert config.summary_json == tmp_path / "sum.json"
    assert (config.metrics_host, config.metrics_port) == ("127.0.0.1", 9464)


def test_defaults_and_mock_defaults() -> None:
    real = parse("--netuid", "2")
    assert real.state_path.name == "default-default-netuid2.json"
    assert max(real.bucket_weights.values()) / sum(real.bucket_weights.values()) <= 0.9
    mock = parse("--mock")
    assert mock.bucket_weights == {"32k": 1.0}
    assert mock.epoch_length == 2
    assert mock.deadline_base_s == MOCK_DEADLINE_BASE_S
    assert real.metrics_port is None  # no server unless asked


@pytest.mark.parametrize(
    ("flags", "problem"),
    [
        ((), "--netuid: required"),
        (("--netuid", "1", "--neuron.sample_size", "0"), "--neuron.sample_size"),
        (("--netuid", "1", "--neuron.moving_average_alpha", "1.5"), "--neuron.moving_average_alpha"),
        (("--netuid", "1", "--neuron.epoch_length", "0"), "--neuron.epoch_length"),
        (("--netuid", "1", "--neuron.bucket_weights", "32k=1"), "no bucket may get more than 90%"),
        (("--netuid", "1", "--neuron.tasks", "nope"), "unknown task"),
        (("--netuid", "1", "--rounds", "0"), "--rounds"),
        (("--netuid", "1", "--metrics.port", "65536"), "--metrics.port"),
    ],
)
def test_bad_flags_exit_2_naming_the_flag(
    flags: tuple[str, ...], problem: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*flags, "--wandb.off"], "test") == 2
    assert problem in capsys.readouterr().err


def test_a_corrupt_state_file_stops_the_validator(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state.json"
    state.write_text("{half a file")
    flags = [
        "--mock",
        "--mock.honest",
        "0",
        "--rounds",
        "1",
        "--wandb.off",
        "--neuron.state_path",
        str(state),
    ]
    assert main(flags, "test") == 2
    err = capsys.readouterr().err
    assert str(state) in err
    assert "corrupt" in err
    assert state.read_text() == "{half a file"


def test_wandb_offline_logs_rounds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    result = RoundResult(
        round=4, block=10, task="niah_single", bucket="32k", prompt_tokens=32000, deadline_s=13.2,
        answers=(Answer(1, "42", None, 0.5, "answered"), Answer(2, None, "HTTP 503", 0.1, "refused")),
        accuracies={1: 1.0, 2: 0.0}, rewards={1: 1.0, 2: 0.0},
    )  # fmt: skip
    metrics = round_metrics(result)
    assert metrics["accuracy/task/niah_single"] == 0.5
    assert metrics["accuracy/bucket/32k"] == 0.5
    assert metrics["reward/uid/1"] == 1.0
    assert metrics["round/failures"] == 1
    logger = WandbLogger("quasar-test", None, NETUID, "5HotkeyOfTheValidator", {"alpha": 0.1})
    logger(result, ValidatorState(NETUID, "5HotkeyOfTheValidator"))
    logger.finish()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert any(runs[0].glob("*.wandb"))


def test_state_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    state_io.save(path, ValidatorState(NETUID, "5Mine"))
    with pytest.raises(StateError, match="belongs to validator hotkey"):
        state_io.load(path, NETUID, "5Other")


def test_wandb_without_an_account_is_a_clear_error(tmp_path: Path) -> None:
    # A process of its own: wandb keeps process-wide state, and this also runs the file as a script.
    env = {
        **os.environ,
        "WANDB_MODE": "online",
        # Online, but the server is a closed loopback port: WandB's own analytics would call its server.
        "WANDB_BASE_URL": "http://127.0.0.1:9",
        "WANDB_DIR": str(tmp_path),
        "WANDB_CONFIG_DIR": str(tmp_path),
    }
    env["NETRC"] = str(tmp_path / "netrc")
    env.pop("WANDB_API_KEY", None)
    flags = ["--mock", "--mock.honest", "0", "--rounds", "1", "--neuron.state_path", str(tmp_path / "s.json")]
    done = subprocess.run(
        [sys.executable, "neurons/validator.py", *flags], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert "run `wandb login`, set WANDB_MODE=offline or pass --wandb.off" in done.stderr


def test_help_lists_every_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"], "quasar validator")
    assert exited.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for flag in (
        "--neuron.bucket_weights",
        "--neuron.epoch_length",
        "--wandb.off",
        "--mock.model",
        "--rounds",
        "--metrics.port",
    ):
        assert flag in out
    assert "no bucket above 90%" in out
