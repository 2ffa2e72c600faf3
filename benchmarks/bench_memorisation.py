"""How far below a reader a memoriser scores once LongBench samples are perturbed.

    .venv/bin/python -m benchmarks.bench_memorisation [--data FOLDER_OR_DATA.ZIP] [--samples 50]

Per dataset, every sample is perturbed as evaluation.contexts does (evaluation.perturb.perturb), then
scored with LongBench's metric (evaluation.metrics.score_prediction) against the perturbed answers:
- memoriser: answers with the public LongBench answer (the record's first answer), reading nothing;
- reader: answers with the first perturbed answer, as a model reading the context perfectly would.
Without --data the records are generated ones (tests/fixtures_longbench.py), so the figures show how the
method behaves on LongBench-shaped data; run it on LongBench's data.zip for the real gap.
"""

import argparse
import random
import statistics
import tempfile
from pathlib import Path

from evaluation.longbench import load_records
from evaluation.metrics import score_prediction
from evaluation.perturb import perturb
from evaluation.tasks import LONGBENCH_TASKS, get_task
from tests.fixtures_longbench import write_folder


def _row(dataset: str, records: list[tuple[str, str, tuple[str, ...], tuple[str, ...] | None]]) -> str:
    memoriser, reader, changed, phrased = [], [], 0, 0
    for index, (context, question, answers, classes) in enumerate(records):
        item = perturb(context, question, answers, get_task(dataset).metric, random.Random(index))
        memoriser.append(score_prediction(dataset, answers[0], item.answers, classes))
        reader.append(score_prediction(dataset, item.answers[0], item.answers, classes))
        changed += item.answers != answers
        phrased += item.phrase is not None
    low, high = 100 * statistics.mean(memoriser), 100 * statistics.mean(reader)
    share = 100 * changed / len(records)
    return (
        f"{dataset:<17}{len(records):>5}{share:>10.0f}%{100 * phrased / len(records):>8.0f}%"
        f"{low:>11.1f}{high:>9.1f}{high - low:>7.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, help="LongBench folder or data.zip (default: generated records)")
    parser.add_argument("--samples", type=int, default=50, help="samples per dataset (default: 50)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        data = args.data or write_folder(Path(folder), args.samples, words=1500)
        records = load_records(list(LONGBENCH_TASKS), data)
    print(f"{'dataset':<17}{'n':>5}{'changed':>11}{'phrase':>9}{'memoriser':>11}{'reader':>9}{'gap':>7}")
    for dataset in LONGBENCH_TASKS:
        chosen = records[dataset][: args.samples]
        print(_row(dataset, [(r.context, r.input, r.answers, r.all_classes) for r in chosen]))


if __name__ == "__main__":
    main()
