"""`quasar eval run` end to end: real prompts, real HTTP to a fake TGI, real scoring and rewards."""

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from evaluation.contexts import build_items
from evaluation.demo_data import write_zip
from evaluation.rewards import RewardRule
from evaluation.tasks import DEFAULT_TASKS
from evaluation.tokenizer import load_tokenizer
from quasar_cli import main
from tests.fake_openai_engines import FakeOpenAIEngine, FakeSGLang, FakeVLLM
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


def _run(server: FakeTGI | FakeOpenAIEngine, output: Path, *extra: str) -> int:
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


def _run_without_data(
    tmp_path: Path, extra: Sequence[str] = (), **env: str
) -> "subprocess.CompletedProcess[str]":
    """`quasar eval run --tasks qasper` without --data, in a process of its own with the Hugging Face cache
    in tmp_path/hf and the given environment (the suite's HF_HUB_OFFLINE removed)."""
    environment = {k: v for k, v in os.environ.items() if k not in {"HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"}}
    return subprocess.run(
        [sys.executable, "-m", "quasar_cli", "eval", "run", "--tasks", "qasper", *extra],
        env=environment | {"HF_HOME": str(tmp_path / "hf")} | env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_an_unreachable_hub_fails_at_once_asking_for_data(tmp_path: Path) -> None:
    # A bound, never-listening port on loopback: connections to it are refused. No request leaves the host.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{closed.getsockname()[1]}"
        done = _run_without_data(tmp_path, HF_ENDPOINT=endpoint)
    assert done.returncode == 2
    assert f"the Hugging Face Hub at {endpoint} is unreachable" in done.stderr
    assert "pass --data" in done.stderr
    assert "Retry" not in done.stderr  # one attempt, not the Hub client's five retries
    assert not (tmp_path / "results").exists()


def test_offline_mode_without_a_cached_copy_asks_for_data(tmp_path: Path) -> None:
    # The endpoint is a loopback one too, so that nothing could leave the host if offline mode were ignored.
    done = _run_without_data(tmp_path, HF_HUB_OFFLINE="1", HF_ENDPOINT="http://127.0.0.1:9")
    assert done.returncode == 2
    assert "data.zip is not in the Hugging Face cache and HF_HUB_OFFLINE is set" in done.stderr
    assert "pass --data" in done.stderr


@pytest.mark.parametrize(
    "command", [["eval", "score", "preds"], ["eval", "run"], ["engine", "serve"], ["operator", "run"]]
)
def test_a_bad_flag_after_a_subcommand_shows_that_subcommands_usage(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*command, "--bogus"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    name = " ".join(command[:2])
    assert err.startswith(f"usage: quasar {name} ")
    assert f"quasar {name}: error: unrecognized arguments: --bogus" in err


def test_run_help_shows_the_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["eval", "run", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines anywhere
    assert f"(default: {', '.join(DEFAULT_TASKS)}: no data set needed)" in help_text
    assert "(default: 32k)" in help_text


def test_a_cached_data_zip_is_used_without_asking_the_hub(tmp_path: Path) -> None:
    # data.zip where the Hugging Face cache keeps it (HF_HOME/hub), as a download at `main` leaves it.
    repo = tmp_path / "hf" / "hub" / "datasets--THUDM--LongBench"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    write_zip(repo / "snapshots" / commit / "data.zip", 12)  # enough text for a 32k context
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{closed.getsockname()[1]}"
        done = _run_without_data(tmp_path, HF_ENDPOINT=endpoint, extra=["--endpoint", endpoint])
    # The records were found: the run got as far as the engine, which is down.
    assert "data.zip" not in done.stderr
    assert f"127.0.0.1:{endpoint.rsplit(':', 1)[1]}" in done.stderr
    assert done.returncode == 1


@pytest.mark.parametrize(
    ("engine", "api", "path"),
    [
        ("vllm", "completions", "/v1/completions"),
        ("vllm", "chat", "/v1/chat/completions"),
        ("sglang", "completions", "/v1/completions"),
        ("sglang", "chat", "/v1/chat/completions"),
    ],
)
def test_vllm_and_sglang_are_asked_through_the_api_chosen(
    engine: str, api: str, path: str, answers_by_prompt: dict[str, str], tmp_path: Path
) -> None:
    double = {"vllm": FakeVLLM, "sglang": FakeSGLang}[engine]
    with double(max_model_len=1_000_000) as fake:
        fake.answer = lambda prompt: answers_by_prompt.get(prompt, "not a prompt we built")
        assert _run(fake, tmp_path / "out.json", "--engine", engine, "--api", api) == 0
    generations = [r for r in fake.requests if r.method == "POST"]
    assert generations
    assert {r.path for r in generations} == {path}
    saved = json.loads((tmp_path / "out.json").read_text())
    # A completion is answered for the raw prompt; the chat double wraps it in its template, so only the
    # completions API gets the perfect reader's answers back.
    if api == "completions":
        assert all(c["accuracy"] == 1.0 for c in saved["summary"])
