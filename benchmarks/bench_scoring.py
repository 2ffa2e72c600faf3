"""Benchmark `quasar eval score` against LongBench's official eval.py on a generated prediction folder.

A script that prints a table, not a test. It writes a seeded LongBench-style prediction folder (8 datasets,
realistic lengths), scores each dataset with both tools in a fresh process, checks that the result.json files
are byte-identical, and prints per-dataset wall times and the speed-up. Then it scores the whole folder with
quasar once more and checks the numbers against the official per-dataset results.

The official code is not part of this repository: pass a checkout of THUDM/LongBench (the folder holding
eval.py and metrics.py) and an interpreter that has its dependencies:

    python3 -m venv /tmp/lbenv && /tmp/lbenv/bin/pip install rouge==1.0.1 fuzzywuzzy jieba numpy
    .venv/bin/python benchmarks/bench_scoring.py --longbench-dir /tmp/LongBench --python /tmp/lbenv/bin/python
"""

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DATASETS = (
    "narrativeqa",
    "qasper",
    "multifieldqa_en",
    "gov_report",
    "qmsum",
    "multi_news",
    "trec",
    "triviaqa",
)
SUMMARIES = frozenset({"gov_report", "qmsum", "multi_news"})

# Reference summary length in words per dataset (LongBench's are roughly of these sizes).
SUMMARY_WORDS = {"gov_report": (350, 700), "qmsum": (40, 160), "multi_news": (200, 400)}

# TREC's fine question classes in words, as LongBench lists them in all_classes (a representative list).
# fmt: off
TREC_CLASSES = (
    "Abbreviation", "Expression abbreviated", "Animal", "Organ of body", "Color",
    "Invention, book and other creative piece", "Currency name", "Disease and medicine", "Event", "Food",
    "Musical instrument", "Language", "Letter like a-z", "Other entity", "Plant", "Product", "Religion",
    "Sport", "Element and substance", "Symbols and sign", "Techniques and method", "Equivalent term",
    "Vehicle", "Word with a special property", "Definition of something", "Description of something",
    "Manner of an action", "Reason", "Group or organization of person", "Individual", "Title of a person",
    "Description of a person", "City", "Country", "Mountain", "Other location", "State",
    "Postcode or other code", "Number of something", "Date", "Distance, linear measure", "Price",
    "Order, rank", "Other number", "Lasting time of something", "Percent, fraction", "Speed", "Temperature",
    "Size, area and volume", "Weight",
)
# fmt: on

# Frequent words, to give summaries the shared function words real ones have.
# fmt: off
COMMON = [
    "the", "of", "and", "to", "a", "in", "is", "that", "for", "it", "as", "was", "with", "be", "by", "on",
    "not", "he", "i", "this", "are", "or", "his", "from", "at", "which", "but", "have", "an", "they", "you",
    "were", "her", "she", "there", "been", "one", "all", "we", "their", "has", "would", "when", "if", "so",
    "no", "will", "more", "can", "who", "its", "said", "out", "about", "what", "up", "some", "them", "into",
    "only", "other", "than", "then", "also", "these", "two", "may", "first", "new", "after", "over", "most",
    "state", "year", "report", "program", "agency", "federal", "government", "committee", "meeting",
    "project", "data", "percent",
]
# fmt: on


def vocabulary(rng: random.Random, size: int = 4000) -> list[str]:
    syllables = [
        "ka",
        "to",
        "ri",
        "men",
        "sa",
        "lo",
        "ver",
        "dan",
        "pre",
        "tion",
        "al",
        "co",
        "ne",
        "st",
        "um",
    ]
    words = {"".join(rng.choices(syllables, k=rng.randint(2, 4))) for _ in range(size * 2)}
    return COMMON + sorted(words)[:size]


@dataclass(frozen=True)
class Writer:
    """Seeded text in the shape of model outputs: Zipf-distributed words, sentences with capitals and dots."""

    rng: random.Random
    words: Sequence[str]
    weights: Sequence[float]

    def phrase(self, count: int) -> list[str]:
        return self.rng.choices(self.words, self.weights, k=count)

    def sentence(self) -> list[str]:
        words = self.phrase(self.rng.randint(8, 30))
        words[0] = words[0].capitalize()
        if self.rng.random() < 0.3:
            words[self.rng.randrange(len(words))] += ","
        return words

    def summary(self, total: int) -> list[list[str]]:
        sentences: list[list[str]] = []
        while sum(map(len, sentences)) < total:
            sentences.append(self.sentence())
        return sentences

    def paraphrase(self, reference: list[list[str]], total: int) -> str:
        """A prediction that reuses some reference sentences (with words dropped) among new ones."""
        sentences: list[list[str]] = []
        while sum(map(len, sentences)) < total:
            if reference and self.rng.random() < 0.5:
                source = self.rng.choice(reference)
                sentences.append([word for word in source if self.rng.random() < 0.8] or source[:1])
            else:
                sentences.append(self.sentence())
        text = " ".join(" ".join(words) + "." for words in sentences)
        if self.rng.random() < 0.05:
            text = text.replace(".", "")  # an unpunctuated run-on: one long "sentence"
        return text


def qa_line(writer: Writer, rng: random.Random, dataset: str) -> dict[str, Any]:
    answers = [" ".join(writer.phrase(rng.randint(1, 6))) for _ in range(rng.randint(1, 3))]
    if rng.random() < 0.6:
        hit = rng.choice(answers)
        hit = hit.upper() if rng.random() < 0.2 else hit
        prediction = f"{' '.join(writer.phrase(rng.randint(0, 8)))} {hit}{rng.choice(['', '.', '!', ','])}"
    else:
        prediction = " ".join(writer.phrase(rng.randint(1, 30)))
    if dataset == "triviaqa":  # few-shot: the model runs on into the next example
        lead = rng.choice(["", "\n"])
        prediction = f"{lead}{prediction}\nPassage: {' '.join(writer.phrase(40))}"
    return {"pred": prediction.strip(" "), "answers": answers, "all_classes": None}


def summary_line(writer: Writer, rng: random.Random, dataset: str) -> dict[str, Any]:
    low, high = SUMMARY_WORDS[dataset]
    reference = writer.summary(rng.randint(low, high))
    prediction = "" if rng.random() < 0.01 else writer.paraphrase(reference, rng.randint(200, 500))
    answer = " ".join(" ".join(words) + "." for words in reference)
    return {"pred": prediction, "answers": [answer], "all_classes": None}


def trec_line(writer: Writer, rng: random.Random, dataset: str) -> dict[str, Any]:
    answer = rng.choice(TREC_CLASSES)
    named = answer if rng.random() < 0.6 else rng.choice(TREC_CLASSES)
    prediction = f"{named}\nQuestion: {' '.join(writer.phrase(12))}?\nType: {rng.choice(TREC_CLASSES)}"
    return {"pred": prediction, "answers": [answer], "all_classes": list(TREC_CLASSES)}


def line_maker(dataset: str) -> Callable[[Writer, random.Random, str], dict[str, Any]]:
    if dataset in SUMMARIES:
        return summary_line
    return trec_line if dataset == "trec" else qa_line


def generate(folder: Path, lines: int, seed: int) -> dict[str, int]:
    """Write <dataset>.jsonl files with `lines` lines in all; return lines per dataset."""
    rng = random.Random(seed)
    words = vocabulary(rng)
    writer = Writer(rng, words, [1.0 / (rank + 1) for rank in range(len(words))])
    folder.mkdir(parents=True)
    counts = {}
    for index, dataset in enumerate(DATASETS):
        count = lines // len(DATASETS) + (index < lines % len(DATASETS))
        make = line_maker(dataset)
        with (folder / f"{dataset}.jsonl").open("w", encoding="utf-8") as handle:
            for _ in range(count):
                record = make(writer, rng, dataset) | {"length": rng.randint(500, 16000)}
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        counts[dataset] = count
    return counts


def timed(command: Sequence[str], cwd: Path) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return elapsed


def quasar_command(folder: Path, output: Path, longbench_e: bool) -> list[str]:
    command = [sys.executable, "-m", "quasar_cli", "eval", "score", str(folder), "--output", str(output)]
    return [*command, "--e"] if longbench_e else command


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--longbench-dir", type=Path, required=True, help="folder holding eval.py and metrics.py"
    )
    parser.add_argument(
        "--python", default="python3", help="interpreter for the official side (default: python3)"
    )
    parser.add_argument("--lines", type=int, default=20_000, help="prediction lines in all (default: 20000)")
    parser.add_argument("--seed", type=int, default=0, help="generation seed (default: 0)")
    parser.add_argument("--e", dest="longbench_e", action="store_true", help="LongBench-E mode on both sides")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    eval_py = args.longbench_dir.resolve() / "eval.py"
    with tempfile.TemporaryDirectory(prefix="bench-scoring-") as temp:
        root = Path(temp)
        counts = generate(root / "all", args.lines, args.seed)
        layout = root / ("pred_e" if args.longbench_e else "pred")  # eval.py reads <layout>/<model>/
        rows = []
        official_results: dict[str, Any] = {}
        for dataset, count in counts.items():
            folder = layout / dataset
            folder.mkdir(parents=True)
            shutil.copy(root / "all" / f"{dataset}.jsonl", folder)
            ours = root / "quasar" / dataset / "result.json"
            quasar_s = timed(quasar_command(folder, ours, args.longbench_e), root)
            official = [args.python, str(eval_py), "--model", dataset] + (["--e"] if args.longbench_e else [])
            official_s = timed(official, root)
            official_text = (folder / "result.json").read_text(encoding="utf-8")
            official_results |= json.loads(official_text)
            same = ours.read_text(encoding="utf-8") == official_text
            rows.append((dataset, count, quasar_s, official_s, same))
            print(f"  {dataset}: quasar {quasar_s:.2f}s, eval.py {official_s:.2f}s", file=sys.stderr)
        whole = root / "quasar-all.json"
        whole_s = timed(quasar_command(root / "all", whole, args.longbench_e), root)
        whole_same = json.loads(whole.read_text(encoding="utf-8")) == official_results
    print(format_report(rows, whole_s, whole_same, args))
    return 0 if whole_same and all(row[4] for row in rows) else 1


def format_report(
    rows: Sequence[tuple[str, int, float, float, bool]],
    whole_s: float,
    whole_same: bool,
    args: argparse.Namespace,
) -> str:
    lines = [
        f"{args.lines} lines, seed {args.seed}{', LongBench-E' if args.longbench_e else ''}; wall time per"
        " dataset, each tool in a fresh process (interpreter start-up included)",
        f"{'dataset':<16} {'lines':>6} {'quasar s':>9} {'eval.py s':>10} {'speed-up':>9}  same result.json",
    ]
    for dataset, count, quasar_s, official_s, same in rows:
        speedup = official_s / quasar_s
        lines.append(
            f"{dataset:<16} {count:>6} {quasar_s:>9.2f} {official_s:>10.2f} {speedup:>8.1f}x  {same}"
        )
    quasar_total = sum(row[2] for row in rows)
    official_total = sum(row[3] for row in rows)
    lines.append(
        f"{'total':<16} {sum(row[1] for row in rows):>6} {quasar_total:>9.2f} {official_total:>10.2f}"
        f" {official_total / quasar_total:>8.1f}x"
    )
    lines.append(f"quasar on the whole folder at once: {whole_s:.2f}s; same numbers as eval.py: {whole_same}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
