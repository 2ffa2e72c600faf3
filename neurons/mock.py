"""Mock mode: a whole subnet on one machine (`python neurons/validator.py --mock`).

A FakeChain; one local engine server (neurons/engine_server.py, the tiny model) shared by the honest miners;
and miners of four kinds, every one a real miner server (neurons/miner.py) reached over loopback HTTP with
signed requests, so mock mode runs exactly the production path:

- honest: real inference through the engine server, by default with the tiny model: a randomly
  initialised 2-layer network that answers noise ("::::..."), so it scores 0 like an empty answer.
- reader: reads the context with rules written for the synthetic tasks (find the needle for the asked key,
  follow the VAR chain, count the words) and answers from what it read. It shows what reading earns; it
  does no inference and knows nothing the prompt does not say.
- empty: answers "" to everything.
- memorizer: answers from the public answer set without reading the context: the original answer of the
  public record whose question best matches the prompt's question, or for an unknown question (every
  synthetic one) a guessed 7-digit number. Mock mode has no LongBench data, so LongBench tasks (only when
  named in --neuron.tasks) use generated LongBench-shaped records (evaluation.demo_data); their original
  answers are the memorizer's public answer set, and the validator perturbs them as it would LongBench.

At the end it prints the leaderboard; --summary-json adds each miner's kind.
"""

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import itertools
import random
import re
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import bittensor

from evaluation.contexts import Records
from evaluation.demo_data import make_records
from evaluation.dev_engine.server import start_engine_server
from evaluation.engines import Engine, EngineInfo, Generation, make_engine
from evaluation.errors import InputError
from evaluation.longbench import LongBenchRecord, parse_record
from evaluation.tasks import LONGBENCH_TASKS, get_task
from neurons.auth import create_wallet
from neurons.chain import FakeChain
from neurons.miner import MinerConfig, start_miner
from neurons.validator import ValidatorConfig, WandbFactory, load_records, run_validator

VALIDATOR_STAKE = 10_000.0
DEMO_RECORDS_PER_DATASET = 40  # enough distractor documents to fill the 32k bucket
# An upper bound only: each query's own deadline (60 s + 0.1 s per 1k tokens in mock mode) stops it first.
ENGINE_TIMEOUT_S = 600.0

_QUESTION = "Question:"
_MAGIC = re.compile(r"special magic numbers? for ([0-9a-f-]{36}) is (\d+)")
_ASSIGNMENT = re.compile(r"VAR ([A-Z]{5}) = (?:VAR ([A-Z]{5})|(\d+))\.")
_WORD = re.compile(r"[a-z]+")
_TOP_WORDS = 10
_RECOGNISED = 0.8


def add_mock_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("mock mode (--mock)")
    group.add_argument(
        "--mock.honest",
        dest="mock_honest",
        type=int,
        default=3,
        help="honest miners running the engine server's model (default: 3)",
    )
    group.add_argument(
        "--mock.model",
        dest="mock_model",
        help="the model the honest miners' engine server runs, a folder or Hub id in the HF cache "
        "(default: the tiny model); measure buckets in its tokenizer with --neuron.tokenizer",
    )
    group.add_argument(
        "--mock.readers",
        dest="mock_readers",
        type=int,
        default=1,
        help="rule-based reader miners (default: 1)",
    )


@dataclass(frozen=True)
class MockConfig:
    honest: int = 3
    readers: int = 1
    model: str | None = None  # None: the tiny model
    # A state file named on the command line: mock wallets live beside it, so a restarted mock run keeps
    # its hotkeys and scores. Otherwise wallets and state go to a temporary folder.
    keep_state: bool = False


def mock_config_from_args(args: argparse.Namespace) -> MockConfig:
    for flag, value in (("--mock.honest", args.mock_honest), ("--mock.readers", args.mock_readers)):
        if value < 0:
            raise InputError(flag, f"must not be negative, got {value}")
    return MockConfig(
        args.mock_honest, args.mock_readers, args.mock_model, keep_state=args.state_path is not None
    )


# ---------------------------------------------------------------------------------------------------------
# The answerers


def _question(prompt: str) -> str:
    return prompt[prompt.rfind(_QUESTION) + len(_QUESTION) :] if _QUESTION in prompt else ""


def read_answer(prompt: str) -> str:
    """The answer to a synthetic task's prompt, found by reading the prompt; "" for any other prompt."""
    question = _question(prompt)
    context = prompt[: prompt.rfind(_QUESTION)]
    if "special magic number" in question:
        key = re.search(r"for ([0-9a-f-]{36})", question)
        return ", ".join(v for k, v in _MAGIC.findall(context) if key and k == key.group(1))
    if question.lstrip().startswith("Which variables are assigned the value"):
        value = re.search(r"value (\d+)", question)
        names: list[str] = []
        assignments = _ASSIGNMENT.findall(context)
        grew = True
        while grew:  # follow copies until no new variable joins
            grew = False
            for name, source, literal in assignments:
                if name not in names and ((value and literal == value.group(1)) or source in names):
                    names.append(name)
                    grew = True
        return " ".join(names)
    if "words appear most often" in question:
        return " ".join(w for w, _ in Counter(_WORD.findall(context)).most_common(_TOP_WORDS))
    return ""


def _bigrams(text: str) -> set[tuple[str, str]]:
    words = re.findall(r"\w+", text.lower())
    return set(itertools.pairwise(words))


def memorised_answer(prompt: str, public: Sequence[LongBenchRecord]) -> str:
    """The public answer of the record whose question the prompt ends with; a guess for any other prompt.

    Only the prompt's last 2,000 characters are looked at (every template ends with the question), never
    the context: a memorizer recognises the question and answers what it has seen before. A record is
    recognised when `_RECOGNISED` of its question's word pairs occur there (questions of generated
    LongBench-shaped records score 0.97 to 1.0, synthetic questions at most 0.5)."""
    tail = _bigrams(prompt[-2000:])
    best, best_share = None, 0.0
    for record in public:
        pairs = _bigrams(record.input)
        share = len(pairs & tail) / len(pairs) if pairs else 0.0
        if share > best_share:
            best, best_share = record, share
    if best is not None and best_share >= _RECOGNISED and best.answers:
        return best.answers[0]
    guess = random.Random(hashlib.sha256(prompt[-2000:].encode()).digest())
    return str(guess.randrange(10**6, 10**7))


class _RuleEngine:
    """An Engine answering with a function of the prompt, without a model (reader and adversaries)."""

    def __init__(self, name: str, answer: Callable[[str], str]) -> None:
        self.name = name
        self._answer = answer

    async def generate(self, prompt: str, max_new_tokens: int) -> Generation:
        start = time.perf_counter()
        text = await asyncio.to_thread(self._answer, prompt)
        return Generation(text, None, None, time.perf_counter() - start)

    async def info(self) -> EngineInfo:
        return EngineInfo(self.name, None, None)

    async def aclose(self) -> None:
        return None


def demo_records(tasks: Sequence[str]) -> dict[str, tuple[LongBenchRecord, ...]]:
    """Generated LongBench-shaped records (not LongBench data) for every served dataset when `tasks` names
    a LongBench task: the other datasets' records are the distractor documents that fill a bucket."""
    if not any(get_task(t).source == "longbench" for t in tasks):
        return {}
    return {
        dataset: tuple(
            parse_record(raw, f"demo {dataset}:{i}")
            for i, raw in enumerate(make_records(dataset, DEMO_RECORDS_PER_DATASET))
        )
        for dataset in LONGBENCH_TASKS
    }


# ---------------------------------------------------------------------------------------------------------
# The subnet


@dataclass(frozen=True)
class MockMiner:
    uid: int
    hotkey: str
    kind: str


@contextlib.asynccontextmanager
async def mock_subnet(
    config: ValidatorConfig, mock: MockConfig, wallet_path: Path, records: Records | None
) -> AsyncIterator[tuple[FakeChain, bittensor.Wallet, list[MockMiner]]]:
    """A FakeChain with the validator and every mock miner registered and serving; torn down on exit."""
    chain = FakeChain(config.netuid)
    validator_wallet = create_wallet("quasar-mock", "validator", str(wallet_path))
    chain.register(validator_wallet.hotkey.ss58_address, stake=VALIDATOR_STAKE, validator_permit=True)
    public = [r for rs in (records or {}).values() for r in rs]
    engine_server = await start_engine_server(mock.model) if mock.honest else None
    engines: list[tuple[str, Engine]] = []
    if engine_server is not None:
        engines += [
            ("honest", make_engine("tgi", engine_server.url, None, ENGINE_TIMEOUT_S))
            for _ in range(mock.honest)
        ]
    engines += [("reader", _RuleEngine("reader", read_answer)) for _ in range(mock.readers)]
    engines += [
        ("empty", _RuleEngine("empty", lambda prompt: "")),
        ("memorizer", _RuleEngine("memorizer", lambda prompt: memorised_answer(prompt, public))),
    ]
    running, miners = [], []
    try:
        for index, (kind, engine) in enumerate(engines):
            hotkey = create_wallet("quasar-mock", f"{kind}-{index}", str(wallet_path)).hotkey.ss58_address
            uid = chain.register(hotkey)
            miner_config = MinerConfig(netuid=config.netuid, engine_timeout_s=ENGINE_TIMEOUT_S)
            running.append(await start_miner(miner_config, chain.view(hotkey), engine))
            miners.append(MockMiner(uid, hotkey, kind))
        yield chain, validator_wallet, miners
    finally:
        for server in running:
            await server.stop()
        for _, engine in engines:
            await engine.aclose()
        if engine_server is not None:
            await engine_server.stop()


async def run_mock(config: ValidatorConfig, mock: MockConfig, make_wandb: WandbFactory) -> int:
    # LongBench tasks named in mock mode run on generated records unless real data is given.
    records = load_records(config) if config.data else demo_records(list(config.tasks)) or None
    with contextlib.ExitStack() as stack:
        if mock.keep_state:
            folder = config.state_path.parent / "mock-wallets"
        else:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="quasar-mock-")))
            config = dataclasses.replace(config, state_path=folder / "validator-state.json")
        async with mock_subnet(config, mock, folder, records) as (chain, wallet, miners):
            kinds = {m.uid: m.kind for m in miners}
            view = chain.view(wallet.hotkey.ss58_address)
            state = await run_validator(config, view, wallet, records, make_wandb, kinds)
    print(verdict(state.combined, kinds))
    return 0


def verdict(scores: Mapping[int, float], kinds: Mapping[int, str]) -> str:
    """One line: the best score of each kind, and whether honest miners outscored both adversaries."""
    best = {
        kind: max((scores.get(uid, 0.0) for uid, k in kinds.items() if k == kind), default=0.0)
        for kind in dict.fromkeys(kinds.values())
    }
    worst_honest = min((scores.get(uid, 0.0) for uid, k in kinds.items() if k == "honest"), default=None)
    adversaries = max(best.get("empty", 0.0), best.get("memorizer", 0.0))
    parts = ", ".join(f"{kind} {score:.4f}" for kind, score in best.items())
    if worst_honest is None:
        return f"best score by kind: {parts}"
    outcome = (
        "yes" if worst_honest > adversaries else "no (the tiny model answers noise: see docs/validator.md)"
    )
    return f"best score by kind: {parts}; every honest miner outscores both adversaries: {outcome}"
