"""How far below a reader a memoriser scores once LongBench samples are perturbed.

    .venv/bin/python -m benchmarks.bench_memorisation [--data FOLDER_OR_DATA.ZIP] [--samples 50]

Per dataset, every sample is perturbed as evaluation.contexts does (evaluation.perturb.perturb), then
graded as validators grade (evaluation.grading.grade: LongBench's metric against the perturbed answers,
0 for an answer naming an entity that was substituted out of the context):
- memoriser: answers with the public LongBench answer (the record's first answer), reading nothing;
- reader: answers with the first perturbed answer, as a model reading the context perfectly would.
Without --data the records are generated ones (evaluation/demo_data.py), so the figures show how the
method behaves on LongBench-shaped data; run it on LongBench's data.zip for the real gap.
"""

import argparse
import random
import statistics
import tempfile
from pathlib import Path

from evaluation.demo_data import write_folder
from evaluation.grading import grade
from evaluation.longbench import load_records
from evaluation.metrics import score_prediction
from evaluation.perturb import perturb
from evaluation.tasks import LONGBENCH_TASKS, EvalItem, get_task


def _row(dataset: str, records: list[tuple[str, str, tuple[str, ...], tuple[str, ...] | None]]) -> str:
    memoriser, unguarded, reader, changed, phrased = [], [], [], 0, 0
    for index, (context, question, answers, classes) in enumerate(records):
        done = perturb(context, question, answers, get_task(dataset).metric, random.Random(index), classes)
        item = EvalItem(
            dataset, "32k", str(index), done.context, 0, done.answers, done.classes,
            replaced_entities=tuple(done.substitutions),
        )  # fmt: skip
        memoriser.append(grade(item, answers[0]))
        unguarded.append(score_prediction(dataset, answers[0], done.answers, done.classes))
        reader.append(grade(item, done.answers[0]))
        changed += done.answers != answers
        phrased += done.phrase is not None
    low, metric_only = 100 * statistics.mean(memoriser), 100 * statistics.mean(unguarded)
    high, n = 100 * statistics.mean(reader), len(records)
    return (
        f"{dataset:<17}{n:>5}{100 * changed / n:>10.0f}%{100 * phrased / n:>8.0f}%"
        f"{metric_only:>13.1f}{low:>11.1f}{high:>9.1f}{high - low:>7.1f}"
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
    print(
        f"{'dataset':<17}{'n':>5}{'changed':>11}{'phrase':>9}{'metric only':>13}{'memoriser':>11}"
        f"{'reader':>9}{'gap':>7}"
    )
    for dataset in LONGBENCH_TASKS:
        chosen = records[dataset][: args.samples]
        print(_row(dataset, [(r.context, r.input, r.answers, r.all_classes) for r in chosen]))


if __name__ == "__main__":
    main()
