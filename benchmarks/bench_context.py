"""How long building one bucket-filling prompt takes, and its peak memory, for every bucket.

    .venv/bin/python -m benchmarks.bench_context [--tokenizer NAME_OR_PATH] [--tasks niah_single,qasper]

Each build runs in a fresh process, so its peak RSS is its own (interpreter, tokenizer and, for LongBench
tasks, the loaded records included). LongBench tasks use a generated pool (evaluation/demo_data.py)
of about 3.5M tokens, written once to a temporary folder; loading it is timed apart from the build.
Target: the 2m bucket (2,097,152 tokens) under 10 s and 1 GB.
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from evaluation.buckets import BUCKETS
from evaluation.contexts import build_item
from evaluation.demo_data import write_folder
from evaluation.longbench import load_records
from evaluation.tasks import get_task
from evaluation.tokenizer import load_tokenizer

POOL_RECORDS, POOL_WORDS = 40, 8000


def _one(task: str, bucket: str, tokenizer_name: str | None, data: Path | None) -> dict[str, float]:
    """One build in this process: its times, prompt size and the process's peak RSS."""
    tokenizer = load_tokenizer(tokenizer_name)
    started = time.perf_counter()
    records = load_records([task], data) if data is not None else None
    loaded = time.perf_counter()
    item = build_item(task, bucket, 0, tokenizer=tokenizer, seed=0, records=records)
    built = time.perf_counter()
    return {
        "load_s": loaded - started,
        "build_s": built - loaded,
        "prompt_tokens": item.prompt_tokens,
        "fill": (item.prompt_tokens + get_task(task).max_new_tokens) / BUCKETS[bucket],
        "megabytes": len(item.prompt.encode()) / 1e6,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokenizer", help="tokenizer folder or Hub id (default: the built-in local one)")
    parser.add_argument("--tasks", default="niah_single,qasper", help="comma list")
    parser.add_argument("--buckets", default=",".join(BUCKETS), help="comma list (default: all)")
    parser.add_argument("--one", nargs=3, metavar=("TASK", "BUCKET", "DATA"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        task, bucket, data = args.one
        print(json.dumps(_one(task, bucket, args.tokenizer, Path(data) if data != "-" else None)))
        return
    tasks, buckets = args.tasks.split(","), args.buckets.split(",")
    with tempfile.TemporaryDirectory() as folder:
        data = "-"
        if any(get_task(task).source == "longbench" for task in tasks):
            data = str(write_folder(Path(folder), POOL_RECORDS, words=POOL_WORDS))
        print(f"{'task':<14}{'bucket':>7}{'tokens':>10}{'fill':>8}{'MB':>7}", end="")
        print(f"{'load s':>8}{'build s':>9}{'peak RSS MB':>13}")
        for task in tasks:
            for bucket in buckets:
                command = [sys.executable, "-m", "benchmarks.bench_context", "--one", task, bucket]
                command += [data if get_task(task).source == "longbench" else "-"]
                command += ["--tokenizer", args.tokenizer] if args.tokenizer else []
                row = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
                print(
                    f"{task:<14}{bucket:>7}{row['prompt_tokens']:>10}{row['fill']:>8.2%}{row['megabytes']:>7.1f}"
                    f"{row['load_s']:>8.2f}{row['build_s']:>9.2f}{row['peak_rss_mb']:>13.0f}"
                )


if __name__ == "__main__":
    main()
