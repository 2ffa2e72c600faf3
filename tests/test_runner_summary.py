"""The pure half of `quasar eval run`: option checks, per-cell summaries and the table."""

import argparse

import pytest
from hypothesis import given
from hypothesis import strategies as st

from evaluation.errors import InputError
from evaluation.rewards import RewardRule
from evaluation.runner import ItemResult, RunOptions, format_table, summarise

results = st.lists(
    st.builds(
        ItemResult,
        task=st.sampled_from(["niah_single", "qasper"]),
        bucket=st.sampled_from(["32k", "2m"]),
        item_id=st.text(max_size=4),
        prompt_tokens=st.integers(1, 2_000_000),
        score=st.floats(0.0, 1.0),
        latency_s=st.none() | st.floats(0.0, 100.0),
        error=st.none() | st.just("engine down"),
    ),
    min_size=1,
    max_size=30,
)


@given(results)
def test_summary_cells_partition_the_results(items: list[ItemResult]) -> None:
    summaries = summarise(items, RewardRule())
    assert sum(s.samples for s in summaries) == len(items)
    assert sum(s.errors for s in summaries) == sum(r.error is not None for r in items)
    assert len({(s.task, s.bucket) for s in summaries}) == len(summaries)


@given(results)
def test_throughput_counts_the_tokens_of_timed_answers_over_their_seconds(items: list[ItemResult]) -> None:
    for cell in summarise(items, RewardRule()):
        timed = [r for r in items if (r.task, r.bucket) == (cell.task, cell.bucket) and r.latency_s]
        if not timed:
            assert cell.tokens_per_s is None
            continue
        assert cell.tokens_per_s is not None
        # The slowest and fastest answers bound the cell's rate.
        rates = [(r.prompt_tokens + (r.completion_tokens or 0)) / (r.latency_s or 1) for r in timed]
        assert min(rates) * (1 - 1e-9) <= cell.tokens_per_s <= max(rates) * (1 + 1e-9)


@given(results)
def test_cell_accuracy_is_the_mean_score_and_reward_follows_the_rule(items: list[ItemResult]) -> None:
    rule = RewardRule()
    for cell in summarise(items, rule):
        scores = [r.score for r in items if (r.task, r.bucket) == (cell.task, cell.bucket)]
        assert cell.accuracy == pytest.approx(sum(scores) / len(scores))
        assert cell.reward == rule.reward(cell.accuracy, cell.bucket)


def test_table_has_a_row_per_cell_with_percent_accuracy() -> None:
    items = [
        ItemResult("niah_single", "32k", "a", 32000, score=1.0, latency_s=2.0),
        ItemResult("niah_single", "32k", "b", 32100, score=0.5, latency_s=4.0),
        ItemResult("qasper", "2m", "c", 2_000_000, error="engine down"),
    ]
    lines = format_table(summarise(items, RewardRule())).splitlines()
    assert lines[0].split()[:2] == ["task", "bucket"]
    # tokens/s: 64,100 prompt tokens answered in 6 s.
    assert lines[2].split() == [
        "niah_single",
        "32k",
        "2",
        "0",
        "32,050",
        "75.00",
        "0.7500",
        "3.00s",
        "10,683",
    ]
    assert lines[3].split() == ["qasper", "2m", "1", "1", "2,000,000", "0.00", "0.0000", "-", "-"]


def _namespace(**overrides: object) -> argparse.Namespace:
    values: dict[str, object] = {
        "endpoint": None,
        "engine": "tgi",
        "model": None,
        "tasks": ["niah_single"],
        "lengths": ["32k"],
        "samples": 1,
        "seed": 0,
        "data": None,
        "timeout": 60.0,
        "concurrency": 1,
        "output": None,
        "api": "chat",
    }
    return argparse.Namespace(**{**values, **overrides})


def test_without_endpoint_the_local_engine_answers() -> None:
    assert RunOptions.from_namespace(_namespace()).engine == "local"
    assert RunOptions.from_namespace(_namespace(endpoint="http://x", engine="openai")).engine == "openai"


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ({"tasks": ["nope"]}, "'nope'"),
        ({"tasks": []}, "--tasks"),
        ({"lengths": ["3m"]}, "'3m'"),
        ({"samples": 0}, "--samples"),
        ({"concurrency": 0}, "--concurrency"),
        ({"timeout": 0.0}, "--timeout"),
    ],
)
def test_bad_options_are_named(override: dict[str, object], named: str) -> None:
    with pytest.raises(InputError, match=named):
        RunOptions.from_namespace(_namespace(**override))
