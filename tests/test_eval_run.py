"""`quasar eval run` end to end: real prompts, real HTTP to a fake TGI, real scoring and rewards."""

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from evaluation.contexts import build_items
from evaluation.rewards import RewardRule
from evaluation.tokenizer import load_tokenizer
from quasar_cli import main
from tests.fake_tgi import FakeTGI

TASKS = ["niah_single", "variable_tracking"]


@pytest.fixture(scope="module")
def answers_by_prompt() -> dict[str, str]:
    """What a perfect reader would answer, from the same seeded construction the run performs."""
    items = build_items(TASKS, ["32k"], 2, tokenizer=load_tokenizer(None), seed=7)
    return {item.prompt: " ".join(item.answers) for item in items}


@pytest.fixture
def server() -> Iterator[FakeTGI]:
    with FakeTGI(max_input_tokens=1_000_000, max_total_tokens=1_000_001) as fake:
        yield fake


def _run(server: FakeTGI, output: Path, *extra: str) -> int:
    args = ["eval", "run", "--endpoint", server.url, "--tasks", ",".join(TASKS), "--lengths", "32k"]
    return main([*args, "--samples", "2", "--seed", "7", "--output", str(output), *extra])


def test_a_perfect_reader_scores_full_accuracy_and_reward(
    server: FakeTGI, answers_by_prompt: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server.answer = answers_by_prompt.__getitem__
    assert _run(server, tmp_path / "out.json") == 0

    saved = json.loads((tmp_path / "out.json").read_text())
    assert {(c["task"], c["bucket"], c["samples"], c["accuracy"]) for c in saved["summary"]} == {
        (task, "32k", 2, 1.0) for task in TASKS
    }
    assert all(c["reward"] == RewardRule().reward(1.0, "32k") for c in saved["summary"])
    assert len(saved["results"]) == 4
    assert {r["prediction"] for r in saved["results"]} == set(answers_by_prompt.values())
    # The prompts the engine received are exactly the constructed ones; answers never travel with them.
    sent = [r.body["inputs"] for r in server.requests if r.path in {"/", "/generate"}]
    assert sorted(sent) == sorted(answers_by_prompt)
    for request in server.requests:
        if request.body:
            assert not any(
                answer in json.dumps(request.body["parameters"]) for answer in answers_by_prompt.values()
            )
    table = capsys.readouterr().out
    assert "niah_single" in table
    assert "100.00" in table


def test_a_reader_that_ignores_the_context_scores_nothing(server: FakeTGI, tmp_path: Path) -> None:
    server.answer = "I do not know."
    assert _run(server, tmp_path / "out.json") == 0
    saved = json.loads((tmp_path / "out.json").read_text())
    assert [c["accuracy"] for c in saved["summary"]] == [0.0, 0.0]


def test_prompts_over_the_engine_limit_are_not_sent_and_are_reported(
    server: FakeTGI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server.max_input_tokens, server.max_total_tokens = 4095, 4096
    assert _run(server, tmp_path / "out.json") == 1
    assert not [r for r in server.requests if r.path in {"/", "/generate"}]
    saved = json.loads((tmp_path / "out.json").read_text())
    assert all("the engine accepts at most 4095 input" in r["error"] for r in saved["results"])
    assert "the engine accepts at most 4095 input" in capsys.readouterr().err


def test_an_engine_that_is_down_fails_clearly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with FakeTGI() as gone:
        url = gone.url
    status = main(
        ["eval", "run", "--endpoint", url, "--tasks", "niah_single", "--output", str(tmp_path / "o.json")]
    )
    assert status != 0
    assert url.split("//")[1] in capsys.readouterr().err


def test_bad_options_exit_2_with_the_option_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "run", "--lengths", "3m", "--output", str(tmp_path / "o.json")]) == 2
    assert "'3m'" in capsys.readouterr().err
    assert not (tmp_path / "o.json").exists()
