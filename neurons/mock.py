"""Mock mode: a whole subnet on one machine (`python neurons/validator.py --mock`), built on the validator.

A FakeChain; one development engine server (evaluation.dev_engine) shared by the honest miners; and miners
of four kinds, every one a real miner server (neurons/miner.py) reached over loopback HTTP with signed
requests, so mock mode runs exactly the production path:

- honest: real inference through the engine server, by default with Gemma 3 270M, a pretrained base model
  that reads the context (evaluation.local_model; `--mock.model tiny` is the random model of the unit
  tests, which answers noise). A base model gets the prompt as text to complete (TGI's /generate); a model
  with a chat template (an instruct model) gets it as a user message (the OpenAI chat API).
- reader: reads the context with rules written for the synthetic tasks (find the needle for the asked key,
  follow the VAR chain, count the words) and answers from what it read. It shows what reading earns; it
  does no inference and knows nothing the prompt does not say.
- empty: answers "" to everything.
- memorizer: answers from the public answer set without reading the context: the original answer of the
  public record whose question best matches the prompt's question, or for an unknown question (every
  synthetic one) a guessed 7-digit number. Mock mode has no LongBench data, so LongBench tasks (only when
  named in --neuron.tasks) use generated LongBench-shaped records (evaluation.demo_data); their original
  answers are the memorizer's public answer set, and the validator perturbs them as it would LongBench.

On a CPU the rounds use a development context size (1k tokens; `--mock.lengths` asks for others, the
seed's buckets included); on CUDA the seed's 32k bucket. The run says what it starts, prints one line per
round and ends with the leaderboard and a verdict; --summary-json adds each miner's kind.
"""

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import itertools
import logging
import random
import re
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import bittensor

from evaluation.buckets import BUCKETS, bucket_tokens
from evaluation.contexts import Records
from evaluation.demo_data import make_records
from evaluation.dev_engine.server import start_engine_server
from evaluation.engines import Engine, EngineInfo, EngineKind, Generation, make_engine
from evaluation.errors import InputError
from evaluation.local_model import BUILTIN_MODELS, GEMMA_MODEL, has_chat_template, resolve_model
from evaluation.longbench import LongBenchRecord, parse_record
from evaluation.tasks import LONGBENCH_TASKS, get_task
from neurons.auth import create_wallet
from neurons.chain import FakeChain
from neurons.miner import MinerConfig, start_miner
from neurons.rounds import parse_task_weights
from neurons.state import ValidatorState
from neurons.validator import RoundResult, ValidatorConfig, WandbFactory, load_records, run_validator

VALIDATOR_STAKE = 10_000.0
# The context size of mock rounds on a CPU, where a 270M model takes minutes over a 32k prompt: a
# development size, not one of the seed's buckets. On CUDA mock rounds use the seed's 32k.
CPU_LENGTH = "1k"
CUDA_LENGTH = "32k"
# The tasks of mock rounds unless --neuron.tasks names others: those a 270M base model reads at the
# development size (at 1k it finds planted numbers; it fails the multi-key, variable and word-count tasks).
MOCK_TASKS = "niah_single,niah_multivalue"
KIND_DESCRIPTIONS = {
    "honest": "the engine's model answers: real inference",
    "reader": "rules that read the context for the synthetic tasks; no model",
    "empty": 'adversary: answers ""',
    "memorizer": "adversary: answers from public data without reading the context",
}
DEMO_RECORDS_PER_DATASET = 40  # enough distractor documents to fill the 32k bucket
# An upper bound only: each query's own deadline (300 s + 0.1 s per 1k tokens in mock mode) stops it first.
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
    builtin = "; ".join(f"{name}: {what}" for name, what in BUILTIN_MODELS.items())
    group.add_argument(
        "--mock.model",
        dest="mock_model",
        default=GEMMA_MODEL,
        help=f"the model the honest miners' engine server runs: a built-in name ({builtin}), a folder or a "
        f"Hub id in the HF cache; contexts are measured in its tokenizer unless --neuron.tokenizer says "
        f"otherwise (default: {GEMMA_MODEL})",
    )
    group.add_argument(
        "--mock.lengths",
        dest="mock_lengths",
        help=f"context sizes of the rounds, comma list: the seed's buckets ({', '.join(BUCKETS)}) or a "
        f"development size (default: {CUDA_LENGTH} on CUDA, the development size {CPU_LENGTH} on a CPU; "
        "--neuron.bucket_weights also sets them)",
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
    model: str = GEMMA_MODEL
    # Context sizes of the rounds; None: those of --neuron.bucket_weights.
    lengths: tuple[str, ...] | None = None
    # Task weights of the rounds; None: those of --neuron.tasks.
    tasks: Mapping[str, float] | None = dataclasses.field(
        default_factory=lambda: parse_task_weights(MOCK_TASKS)
    )
    # A state file named on the command line: mock wallets live beside it, so a restarted mock run keeps
    # its hotkeys and scores. Otherwise wallets and state go to a temporary folder.
    keep_state: bool = False


def mock_config_from_args(args: argparse.Namespace) -> MockConfig:
    for flag, value in (("--mock.honest", args.mock_honest), ("--mock.readers", args.mock_readers)):
        if value < 0:
            raise InputError(flag, f"must not be negative, got {value}")
    lengths = _lengths(args.mock_lengths) if args.mock_lengths else None
    if lengths is None and args.bucket_weights is None:
        lengths = (default_length(),)
    return MockConfig(
        args.mock_honest,
        args.mock_readers,
        args.mock_model,
        lengths,
        None if args.tasks else parse_task_weights(MOCK_TASKS),
        keep_state=args.state_path is not None,
    )


def _lengths(text: str) -> tuple[str, ...]:
    lengths = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    if not lengths:
        raise InputError("--mock.lengths", f"name at least one context size, got {text!r}")
    for length in lengths:
        bucket_tokens(length)
    return lengths


def default_length() -> str:
    """The seed's 32k bucket where a GPU runs the model; the development size on a CPU."""
    import torch

    return CUDA_LENGTH if torch.cuda.is_available() else CPU_LENGTH


def describe_length(bucket: str) -> str:
    if bucket in BUCKETS:
        return f"{bucket} (one of the seed's buckets)"
    return f"{bucket} (a development size for CPUs, not one of the seed's buckets)"


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
    engine_server = None
    api: EngineKind = "tgi"
    if mock.honest:
        folder = await asyncio.to_thread(resolve_model, mock.model)
        # A base model completes the prompt as text (TGI's /generate); an instruct model is asked in its
        # chat format, which the engine's OpenAI chat API applies.
        api = "openai" if await asyncio.to_thread(has_chat_template, folder) else api
        engine_server = await start_engine_server(folder)
    engines: list[tuple[str, Engine]] = []
    if engine_server is not None:
        engines += [
            ("honest", make_engine(api, engine_server.url, None, ENGINE_TIMEOUT_S))
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


async def run_mock(config: ValidatorConfig, mock: MockConfig, make_wandb: WandbFactory, debug: bool) -> int:
    if mock.lengths is not None:
        config = dataclasses.replace(config, bucket_weights=dict.fromkeys(mock.lengths, 1.0))
    if mock.tasks is not None:
        config = dataclasses.replace(config, tasks=mock.tasks)
    # Contexts are measured in the tokens of the model that answers them.
    config = dataclasses.replace(config, tokenizer=config.tokenizer or (mock.model if mock.honest else None))
    # LongBench tasks named in mock mode run on generated records unless real data is given.
    records = load_records(config) if config.data else demo_records(list(config.tasks)) or None
    if not debug:
        # The progress lines below say what happens; the neurons' own INFO logs would repeat it.
        logging.getLogger("quasar").setLevel(logging.WARNING)
    print(_plan(config, mock), flush=True)
    with contextlib.ExitStack() as stack:
        if mock.keep_state:
            folder = config.state_path.parent / "mock-wallets"
        else:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="quasar-mock-")))
            config = dataclasses.replace(config, state_path=folder / "validator-state.json")
        async with mock_subnet(config, mock, folder, records) as (chain, wallet, miners):
            kinds = {m.uid: m.kind for m in miners}
            print(_roster(miners), flush=True)
            view = chain.view(wallet.hotkey.ss58_address)
            progress = Progress(kinds, config.rounds)
            state = await run_validator(config, view, wallet, records, make_wandb, kinds, on_round=progress)
    print(verdict(state.combined, kinds))
    return 0


def _plan(config: ValidatorConfig, mock: MockConfig) -> str:
    model = BUILTIN_MODELS.get(mock.model, "a model folder or Hub id")
    rounds = f"{config.rounds} rounds" if config.rounds else "rounds until stopped"
    lines = [
        "QUASAR mock subnet: a FakeChain, a validator and miners, all on this machine over loopback HTTP.",
        f"  honest miners' model: {mock.model} ({model}); one engine server shared by {mock.honest} miners",
        f"  context size: {', '.join(describe_length(b) for b in config.bucket_weights)}",
        f"  tasks: {', '.join(config.tasks)}"
        + (" (what a 270M model reads; --neuron.tasks for others)" if mock.tasks is not None else ""),
        f"  {rounds}; each round every miner gets the same question, and the validator grades the answers",
    ]
    return "\n".join(lines)


def _roster(miners: Sequence[MockMiner]) -> str:
    lines = ["  miners:"]
    for kind, description in KIND_DESCRIPTIONS.items():
        uids = [m.uid for m in miners if m.kind == kind]
        if uids:
            lines.append(f"    uid {','.join(map(str, uids)):<8} {kind:<10} {description}")
    return "\n".join(lines)


class Progress:
    """One line per round: task, context size, seconds, and the accuracy of each kind of miner."""

    def __init__(self, kinds: Mapping[int, str], rounds: int | None) -> None:
        self._kinds = kinds
        self._rounds = rounds
        self._since = time.monotonic()

    def __call__(self, result: RoundResult, state: ValidatorState) -> None:
        now, started = time.monotonic(), self._since
        self._since = now
        by_kind: dict[str, list[float]] = {}
        for uid, accuracy in result.accuracies.items():
            by_kind.setdefault(self._kinds.get(uid, "unknown"), []).append(accuracy)
        accuracies = ", ".join(f"{kind} {sum(a) / len(a):.2f}" for kind, a in by_kind.items())
        size = result.bucket if result.bucket in BUCKETS else f"{result.bucket} (dev size)"
        of = f"/{self._rounds}" if self._rounds else ""
        print(
            f"round {result.round + 1}{of}: {result.task} at {size}, {result.prompt_tokens:,} tokens, "
            f"{now - started:.0f} s; accuracy by kind: {accuracies}",
            flush=True,
        )


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
    outcome = "yes" if worst_honest > adversaries else "no"
    return f"best score by kind: {parts}; every honest miner outscores both adversaries: {outcome}"
