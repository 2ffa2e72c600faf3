"""Mock mode: its answerers, and a whole mock subnet run through the validator's command line."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from evaluation.contexts import build_item
from evaluation.errors import InputError
from evaluation.grading import grade
from evaluation.tasks import LONGBENCH_TASKS, SYNTHETIC_TASKS
from evaluation.tokenizer import load_tokenizer
from neurons import state as state_io
from neurons.mock import (
    MockConfig,
    default_length,
    demo_records,
    memorised_answer,
    mock_config_from_args,
    read_answer,
    verdict,
)
from neurons.validator_cli import build_parser, main


@pytest.mark.parametrize("task", SYNTHETIC_TASKS)
def test_the_reader_answers_synthetic_tasks_from_the_prompt_alone(task: str) -> None:
    tokenizer = load_tokenizer(None)
    for index in range(2):
        item = build_item(task, "32k", index, tokenizer=tokenizer, seed=11)
        assert grade(item, read_answer(item.prompt)) == 1.0


def test_the_memorizer_answers_the_public_answer_and_the_guard_catches_named_entities() -> None:
    assert demo_records(["niah_single"]) == {}
    records = demo_records(["narrativeqa", "niah_single"])
    assert set(records) == set(LONGBENCH_TASKS)
    public = [record for dataset in records.values() for record in dataset]
    item = build_item("narrativeqa", "32k", 0, tokenizer=load_tokenizer(None), seed=5, records=records)
    answer = memorised_answer(item.prompt, public)
    assert answer in {a for r in public for a in r.answers}  # an original answer, not the perturbed one
    assert answer not in item.answers
    assert grade(item, answer) == 0.0
    synthetic = build_item("niah_single", "32k", 0, tokenizer=load_tokenizer(None), seed=5)
    guess = memorised_answer(synthetic.prompt, public)
    assert guess.isdigit()
    assert grade(synthetic, guess) == 0.0


def test_mock_flags() -> None:
    args = build_parser("test").parse_args(
        [
            "--mock",
            "--mock.honest",
            "2",
            "--mock.readers",
            "0",
            "--mock.model",
            "m",
            "--mock.lengths",
            "32k,124k",
            "--neuron.state_path",
            "s",
        ]
    )
    expected = MockConfig(honest=2, readers=0, model="m", lengths=("32k", "124k"), keep_state=True)
    assert mock_config_from_args(args) == expected
    # Defaults: the real model, at the seed's 32k on CUDA or the development size on a CPU.
    defaults = mock_config_from_args(build_parser("test").parse_args(["--mock"]))
    assert defaults == MockConfig(lengths=(default_length(),))
    assert defaults.model == "gemma3-270m"
    # --neuron.bucket_weights sets the sizes when --mock.lengths does not.
    weighted = build_parser("test").parse_args(["--mock", "--neuron.bucket_weights", "124k=1"])
    assert mock_config_from_args(weighted).lengths is None
    with pytest.raises(InputError, match=r"--mock\.honest"):
        mock_config_from_args(build_parser("test").parse_args(["--mock", "--mock.honest", "-1"]))
    with pytest.raises(InputError, match=r"'3k'.*unknown bucket"):
        mock_config_from_args(build_parser("test").parse_args(["--mock", "--mock.lengths", "32k,3k"]))


def test_verdict_says_whether_honest_miners_win() -> None:
    kinds = {1: "honest", 2: "reader", 3: "empty", 4: "memorizer"}
    assert verdict({1: 0.5, 2: 0.9, 3: 0.0, 4: 0.1}, kinds).endswith("both adversaries: yes")
    assert "adversaries: no" in verdict({1: 0.0, 2: 0.9, 3: 0.0, 4: 0.0}, kinds)


def test_mock_mode_runs_rounds_writes_the_leaderboard_and_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    summary, state = tmp_path / "summary.json", tmp_path / "state.json"
    # The tiny model at the seed's 32k bucket: quick on any machine (it answers noise).
    tiny = ["--mock.model", "tiny", "--mock.lengths", "32k"]
    flags = ["--mock", "--mock.honest", "1", *tiny, "--neuron.state_path", str(state), "--wandb.off"]
    assert main([*flags, "--rounds", "2", "--summary-json", str(summary)], "test") == 0
    rows = json.loads(summary.read_text())
    kinds = {row["kind"] for row in rows}
    assert kinds == {"honest", "reader", "empty", "memorizer"}
    score = {row["kind"]: row["score"] for row in rows}
    # Synthetic tasks: the reader reads every answer; neither adversary can score.
    assert score["reader"] == pytest.approx(0.19)  # alpha 0.1, two perfect rounds
    assert score["empty"] == 0.0
    assert score["memorizer"] == 0.0
    # The tiny model answers noise: the honest miner was asked and scored, but only ties the adversaries.
    assert score["honest"] == 0.0
    out = capsys.readouterr().out
    # It says what it starts, one line per round, and what the leaderboard's numbers are.
    assert "honest miners' model: tiny" in out
    assert "context size: 32k (one of the seed's buckets)" in out
    for kind in ("honest", "reader", "empty", "memorizer"):
        assert f" {kind} " in out.split("miners:")[1].split("round 1/2")[0]
    assert [line.split(":")[0] for line in out.splitlines() if line.startswith("round ")] == [
        "round 1/2",
        "round 2/2",
    ]
    assert "score = moving average (alpha 0.1) of each miner's per-round rewards" in out
    assert "every honest miner outscores both adversaries: no" in out
    hotkeys = {row["uid"]: row["hotkey"] for row in rows}
    saved = json.loads(state.read_text())
    assert saved["round"] == 2
    assert saved["last_weights_block"] is not None  # mock epochs are 2 blocks: weights were set

    # A restart with the same state file keeps the hotkeys and scores and goes on counting rounds. This run is
    # the script in a process of its own (wandb keeps process-wide state), with WandB on: offline, as mock
    # mode defaults to without an account. Nor is the Hub offline here: a run still reaches nothing outside
    # loopback (the egress guard, tests/conftest.py).
    env = {**os.environ, "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true"}
    env.pop("WANDB_MODE", None)
    env.pop("HF_HUB_OFFLINE", None)
    script = [sys.executable, "neurons/validator.py", *flags[:-1], "--rounds", "1"]
    done = subprocess.run(script, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(list((tmp_path / "wandb").glob("offline-run-*"))) == 1
    resumed = state_io.load(state, saved["netuid"], saved["hotkey"])
    assert resumed.round == 3
    assert {uid: resumed.hotkeys[uid] for uid in hotkeys} == hotkeys
    reader_uid = next(row["uid"] for row in rows if row["kind"] == "reader")
    assert resumed.combined[reader_uid] == pytest.approx(0.271)
