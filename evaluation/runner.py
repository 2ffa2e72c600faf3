"""`quasar eval run`: build long-context tasks, query an engine, score the answers, turn them into rewards.

A linear pipeline: options -> tokenizer -> items -> answers -> scores -> summary table and JSON.
Only `run_eval` does I/O; summarising and formatting are pure.
"""

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from tqdm import tqdm

from evaluation.buckets import bucket_tokens
from evaluation.contexts import build_items
from evaluation.engines import Engine, EngineApi, EngineError, EngineInfo, EngineKind, make_engine
from evaluation.errors import InputError
from evaluation.files import write_json_atomic
from evaluation.grading import grade
from evaluation.local_model import resolve_model
from evaluation.longbench import load_records
from evaluation.rewards import RewardRule
from evaluation.tasks import EvalItem, get_task
from evaluation.tokenizer import load_tokenizer


@dataclass(frozen=True)
class RunOptions:
    endpoint: str | None
    engine: EngineKind
    model: str | None
    tasks: tuple[str, ...]
    buckets: tuple[str, ...]
    samples: int
    seed: int = 0
    data: Path | None = None
    timeout_s: float = 3600.0
    concurrency: int = 1
    output: Path | None = None
    rewards: RewardRule = field(default_factory=RewardRule)
    api: EngineApi = (
        "chat"  # vLLM, SGLang, openai: chat (the server applies the chat template) or completions
    )

    def __post_init__(self) -> None:
        if not self.tasks:
            raise InputError("--tasks", "name at least one task")
        if not self.buckets:
            raise InputError("--lengths", "name at least one bucket")
        for name in self.tasks:
            get_task(name)
        for bucket in self.buckets:
            bucket_tokens(bucket)
        if self.samples < 1:
            raise InputError("--samples", f"must be at least 1, got {self.samples}")
        if self.concurrency < 1:
            raise InputError("--concurrency", f"must be at least 1, got {self.concurrency}")
        if not self.timeout_s > 0:
            raise InputError("--timeout", f"must be positive, got {self.timeout_s}")

    @classmethod
    def from_namespace(cls, args: argparse.Namespace) -> "RunOptions":
        return cls(
            endpoint=args.endpoint,
            engine=args.engine if args.endpoint else "local",
            model=args.model,
            tasks=tuple(args.tasks),
            buckets=tuple(args.lengths),
            samples=args.samples,
            seed=args.seed,
            data=args.data,
            timeout_s=args.timeout,
            concurrency=args.concurrency,
            output=args.output,
            api=args.api,
        )


@dataclass(frozen=True)
class ItemResult:
    task: str
    bucket: str
    item_id: str
    prompt_tokens: int
    score: float = 0.0  # stays 0.0 when the request failed
    latency_s: float | None = None
    completion_tokens: int | None = None
    prediction: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class CellSummary:
    """One (task, bucket) cell of the results table."""

    task: str
    bucket: str
    samples: int
    errors: int
    accuracy: float
    reward: float
    mean_prompt_tokens: float
    median_latency_s: float | None
    # Prompt and generated tokens over the seconds spent on them, answered requests only: mostly prefill
    # speed, which long contexts are bound by.
    tokens_per_s: float | None


def summarise(results: Sequence[ItemResult], rule: RewardRule) -> list[CellSummary]:
    """Per (task, bucket): accuracy (failed requests count as 0), reward, sizes and latency."""
    cells: dict[tuple[str, str], list[ItemResult]] = {}
    for result in results:
        cells.setdefault((result.task, result.bucket), []).append(result)
    summaries = []
    for (task, bucket), group in cells.items():
        accuracy = statistics.fmean(r.score for r in group)
        latencies = [r.latency_s for r in group if r.latency_s is not None]
        timed = [r for r in group if r.latency_s]
        seconds = sum(r.latency_s or 0.0 for r in timed)
        tokens = sum(r.prompt_tokens + (r.completion_tokens or 0) for r in timed)
        summaries.append(
            CellSummary(
                task=task,
                bucket=bucket,
                samples=len(group),
                errors=sum(r.error is not None for r in group),
                accuracy=accuracy,
                reward=rule.reward(accuracy, bucket),
                mean_prompt_tokens=statistics.fmean(r.prompt_tokens for r in group),
                median_latency_s=statistics.median(latencies) if latencies else None,
                tokens_per_s=tokens / seconds if timed else None,
            )
        )
    return summaries


def format_table(summaries: Sequence[CellSummary]) -> str:
    header = (
        "task",
        "bucket",
        "n",
        "errors",
        "prompt tok",
        "accuracy %",
        "reward",
        "p50 latency",
        "tokens/s",
    )
    rows = [
        (
            s.task,
            s.bucket,
            str(s.samples),
            str(s.errors),
            f"{s.mean_prompt_tokens:,.0f}",
            f"{100 * s.accuracy:.2f}",
            f"{s.reward:.4f}",
            "-" if s.median_latency_s is None else f"{s.median_latency_s:.2f}s",
            "-" if s.tokens_per_s is None else f"{s.tokens_per_s:,.0f}",
        )
        for s in summaries
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(row) for row in rows)])


async def _answer_all(
    items: Sequence[EvalItem],
    engine: Engine,
    limits: EngineInfo,
    concurrency: int,
    on_done: Callable[[], object],
) -> list[ItemResult]:
    gate = asyncio.Semaphore(concurrency)

    async def answer(item: EvalItem) -> ItemResult:
        try:
            return await attempt(item)
        finally:
            on_done()

    async def attempt(item: EvalItem) -> ItemResult:
        unanswered = ItemResult(item.task, item.bucket, item.item_id, item.prompt_tokens)
        max_new_tokens = get_task(item.task).max_new_tokens
        if not limits.fits(item.prompt_tokens, max_new_tokens):
            # Don't ship megabytes the engine will refuse: say so with the numbers.
            refusal = (
                f"prompt has {item.prompt_tokens} tokens (+{max_new_tokens} new); the engine accepts at most "
                f"{limits.max_input_tokens} input and {limits.max_total_tokens} total tokens"
            )
            return replace(unanswered, error=refusal)
        async with gate:
            try:
                generation = await engine.generate(item.prompt, max_new_tokens)
            except EngineError as exc:
                return replace(unanswered, error=str(exc))
        return replace(
            unanswered,
            score=grade(item, generation.text),
            latency_s=generation.latency_s,
            completion_tokens=generation.completion_tokens,
            prediction=generation.text,
        )

    return list(await asyncio.gather(*(answer(item) for item in items)))


async def _evaluate(
    options: RunOptions, items: Sequence[EvalItem]
) -> tuple[dict[str, object], list[ItemResult]]:
    # The local engine runs a built-in model by name (tiny, gemma3-270m) or a folder; an HTTP engine is sent
    # the name as it was given.
    model = resolve_model(options.model) if options.engine == "local" else options.model
    engine = make_engine(options.engine, options.endpoint, model, options.timeout_s, options.api)
    try:
        info = await engine.info()
        with tqdm(total=len(items), desc="answering", unit="prompt", file=sys.stderr) as bar:
            results = await _answer_all(items, engine, info, options.concurrency, bar.update)
    finally:
        await engine.aclose()
    return {"name": engine.name, **asdict(info)}, results


def _build_items(options: RunOptions) -> list[EvalItem]:
    longbench = [t for t in options.tasks if get_task(t).source == "longbench"]
    records = load_records(longbench, options.data) if longbench else None
    tokenizer = load_tokenizer(options.model)
    total = len(options.tasks) * len(options.buckets) * options.samples
    generated = build_items(
        options.tasks,
        options.buckets,
        options.samples,
        tokenizer=tokenizer,
        seed=options.seed,
        records=records,
    )
    return list(tqdm(generated, total=total, desc="building contexts", unit="prompt", file=sys.stderr))


def run_eval(options: RunOptions) -> int:
    """Run the whole evaluation; exit status 1 when any request failed (each failure is in the table)."""
    items = _build_items(options)
    try:
        engine_info, results = asyncio.run(_evaluate(options, items))
    except EngineError as error:  # the engine could not even say what it serves: nothing to evaluate
        print(f"error: {error}", file=sys.stderr)
        return 1
    summaries = summarise(results, options.rewards)
    print(f"engine: {engine_info['name']}")
    print(format_table(summaries))
    output = options.output or Path("results") / f"eval-{time.strftime('%Y%m%d-%H%M%S')}.json"
    write_json_atomic(
        output,
        {
            "options": asdict(options) | {"data": options.data and str(options.data), "output": str(output)},
            "engine": engine_info,
            "summary": [asdict(s) for s in summaries],
            "results": [asdict(r) for r in results],
        },
    )
    print(f"results: {output}")
    failures = [r for r in results if r.error is not None]
    for failure in failures[:5]:
        print(f"error: {failure.task}/{failure.bucket}/{failure.item_id}: {failure.error}", file=sys.stderr)
    return 1 if failures else 0
