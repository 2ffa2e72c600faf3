"""`quasar eval ...`: the command-line surface of the evaluation package.

Argument parsing only; each command's work lives in its own module, imported when it runs.
"""

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evaluation.buckets import BUCKETS, DEVELOPMENT_BUCKETS
from evaluation.errors import InputError
from evaluation.tasks import DEFAULT_TASKS, TASKS


class SubcommandParser(argparse.ArgumentParser):
    """A subcommand's parser that rejects unknown arguments itself, showing its own usage.

    argparse leaves a subcommand's unknown arguments to the parent, whose usage does not show the subcommand's
    options. Pass it as `add_subparsers(parser_class=SubcommandParser)`.
    """

    # typeshed declares three overloads by namespace type; one signature serves them all here.
    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: Any = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, unknown = super().parse_known_args(args, namespace)
        if unknown:
            self.error(f"unrecognized arguments: {' '.join(unknown)}")
        return parsed, unknown


def _csv(value: str) -> list[str]:
    return [part for part in value.replace(" ", ",").split(",") if part]


def _build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Evaluate long-context models.")
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=SubcommandParser
    )

    score = commands.add_parser(
        "score",
        help="score a LongBench prediction folder or file (drop-in for LongBench's eval.py)",
        description="Score LongBench predictions exactly as LongBench's eval.py does, and write result.json.",
    )
    score.add_argument("path", type=Path, help="folder of <dataset>.jsonl prediction files, or one such file")
    score.add_argument(
        "--e", dest="longbench_e", action="store_true", help="LongBench-E: score by length group"
    )
    score.add_argument(
        "--per-sample", type=Path, metavar="OUT.jsonl", help="write one score line per input line"
    )
    score.add_argument(
        "--output",
        type=Path,
        metavar="result.json",
        help="where to write result.json (default: beside the input)",
    )

    run = commands.add_parser(
        "run",
        help="evaluate a TGI or OpenAI-compatible endpoint (or the built-in local model)",
        description="Build long-context tasks, query an engine, score the answers, turn them into rewards.",
    )
    run.add_argument("--endpoint", help="engine base URL; without it the built-in local model answers")
    run.add_argument(
        "--engine",
        choices=["tgi", "vllm", "sglang", "openai"],
        default="tgi",
        help="the server at --endpoint: tgi (/generate), vllm, sglang or another openai-compatible one "
        "(default: tgi)",
    )
    run.add_argument(
        "--api",
        choices=["chat", "completions"],
        default="chat",
        help="for vllm, sglang and openai: chat (instruct models: the server applies the chat template) or "
        "completions (base models) (default: chat)",
    )
    run.add_argument(
        "--model",
        help="model id: the tokenizer for bucket sizes, and the model name sent to vllm, sglang and openai",
    )
    run.add_argument(
        "--tasks",
        type=_csv,
        default=list(DEFAULT_TASKS),
        help=f"comma list from: {', '.join(TASKS)} (default: {', '.join(DEFAULT_TASKS)}: no data set needed)",
    )
    run.add_argument(
        "--lengths",
        type=_csv,
        default=["32k"],
        help=f"comma list of buckets: {', '.join(BUCKETS)}, or development sizes for CPUs: "
        f"{', '.join(DEVELOPMENT_BUCKETS)} (default: 32k)",
    )
    run.add_argument("--samples", type=int, default=1, help="samples per task and bucket (default: 1)")
    run.add_argument("--seed", type=int, default=0, help="seed for context construction (default: 0)")
    run.add_argument(
        "--data",
        type=Path,
        help="LongBench data: a folder of <dataset>.jsonl files or data.zip (default: data.zip from the "
        "Hugging Face Hub, or its cache)",
    )
    run.add_argument("--timeout", type=float, default=3600.0, help="seconds per request (default: 3600)")
    run.add_argument("--concurrency", type=int, default=1, help="requests in flight at once (default: 1)")
    run.add_argument("--output", type=Path, help="JSON results file (default: results/eval-<time>.json)")
    return parser


def main(argv: Sequence[str], prog: str = "quasar eval") -> int:
    args = _build_parser(prog).parse_args(argv)
    try:
        if args.command == "score":
            from evaluation.scoring import run_score

            return run_score(
                args.path, longbench_e=args.longbench_e, per_sample=args.per_sample, output=args.output
            )
        from evaluation.runner import RunOptions, run_eval

        return run_eval(RunOptions.from_namespace(args))
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
