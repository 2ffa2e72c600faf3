"""Pure round logic: bucket and task choice, sampling, deadlines, rewards into scores, replaced hotkeys."""

import random
from collections import Counter

import pytest

from evaluation.buckets import MAX_BUCKET_SHARE
from evaluation.errors import InputError
from evaluation.rewards import RewardRule
from neurons import rounds
from neurons.rounds import Miner, Scores


def test_bucket_weights_parse_and_refuse_a_dominant_bucket() -> None:
    assert rounds.parse_bucket_weights("32k=1, 124k=3") == {"32k": 1.0, "124k": 3.0}
    assert rounds.parse_bucket_weights("32k,2m=0,124k") == {"32k": 1.0, "124k": 1.0}
    with pytest.raises(InputError, match="32k would get 100% of rounds"):
        rounds.parse_bucket_weights("32k=1")
    with pytest.raises(InputError, match="91%"):
        rounds.parse_bucket_weights("32k=91,124k=9")
    assert rounds.parse_bucket_weights("32k=1", max_share=1.0) == {"32k": 1.0}
    for bad, problem in [
        ("7k=1,32k=1", "unknown bucket"),
        ("32k=x,124k", "not a number"),
        ("32k=-1,124k", ">= 0"),
        ("32k,32k", "named twice"),
        ("32k=0", "no positive"),
    ]:
        with pytest.raises(InputError, match=problem):
            rounds.parse_bucket_weights(bad)


def test_task_weights_name_known_tasks() -> None:
    assert rounds.parse_task_weights("niah_single=2,trec") == {"niah_single": 2.0, "trec": 1.0}
    with pytest.raises(InputError, match="unknown task"):
        rounds.parse_task_weights("nope")


def test_choice_follows_the_weights() -> None:
    weights = rounds.parse_bucket_weights("32k=1,124k=1,512k=2")
    rng = random.Random(5)
    counts = Counter(rounds.choose(weights, rng) for _ in range(8000))
    assert set(counts) == {"32k", "124k", "512k"}
    assert counts["512k"] / 8000 == pytest.approx(0.5, abs=0.03)
    assert counts["32k"] / 8000 == pytest.approx(0.25, abs=0.03)
    assert max(counts.values()) / 8000 < MAX_BUCKET_SHARE


def test_eligible_miners_serve_an_endpoint_and_exclude_the_validator() -> None:
    neurons = [(0, "val", ("127.0.0.1", 1)), (1, "a", ("127.0.0.1", 2)), (2, "b", None), (3, "c", ("h", 3))]
    assert [m.uid for m in rounds.eligible_miners(neurons, "val")] == [1, 3]


def test_query_urls() -> None:
    assert rounds.query_url(("10.0.0.7", 8091), "/v1/query") == "http://10.0.0.7:8091/v1/query"
    assert rounds.query_url(("2001:db8::1", 8091), "/v1/query") == "http://[2001:db8::1]:8091/v1/query"


def test_sampling_is_distinct_bounded_and_covers_everyone() -> None:
    miners = [Miner(uid, f"hk{uid}", ("127.0.0.1", 1000 + uid)) for uid in range(10)]
    rng = random.Random(1)
    seen: set[int] = set()
    for _ in range(50):
        sample = rounds.sample_miners(miners, 4, rng)
        uids = [m.uid for m in sample]
        assert len(set(uids)) == 4
        assert uids == sorted(uids)
        seen |= set(uids)
    assert seen == set(range(10))
    assert len(rounds.sample_miners(miners, 64, rng)) == 10
    with pytest.raises(InputError, match="sample size"):
        rounds.sample_miners(miners, 0, rng)


def test_deadline_grows_with_the_context_and_is_capped() -> None:
    short = rounds.deadline_s(32_000, cap_s=1000)
    long = rounds.deadline_s(2_000_000, cap_s=1000)
    assert short == pytest.approx(rounds.DEADLINE_BASE_S + 3.2)
    assert long == pytest.approx(rounds.DEADLINE_BASE_S + 200)
    assert rounds.deadline_s(2_000_000, cap_s=60) == 60
    assert rounds.deadline_s(1000, cap_s=60, base_s=1, per_ktoken_s=2) == 3


def test_rewards_then_moving_averages_per_bucket_then_combined() -> None:
    rule = RewardRule()
    rewards = rounds.rewards_for({1: 1.0, 2: 0.5, 3: 0.0}, "124k", rule)
    assert rewards == {1: 1.0, 2: 0.6, 3: 0.0}  # 124k multiplier 1.2, capped at 1
    weights = {"32k": 1.0, "124k": 1.0}
    scores = rounds.apply_rewards(Scores({}, {}), "124k", rewards, 0.5, weights)
    assert scores.buckets == {"124k": {1: 0.5, 2: 0.3, 3: 0.0}}
    assert scores.combined == {1: 0.25, 2: 0.15, 3: 0.0}  # the 32k bucket has no score yet: 0
    scores = rounds.apply_rewards(scores, "32k", {1: 1.0, 4: 1.0}, 0.5, weights)
    assert scores.buckets["124k"] == {1: 0.5, 2: 0.3, 3: 0.0}
    assert scores.combined == {1: 0.5, 2: 0.15, 3: 0.0, 4: 0.25}


def test_replaced_or_departed_hotkeys_start_from_zero() -> None:
    previous = {1: "a", 2: "b", 3: "c"}
    current = {1: "a", 2: "B", 4: "d"}
    assert rounds.changed_uids(previous, current) == {2, 3}
    scores = Scores({"32k": {1: 0.9, 2: 0.8, 3: 0.7}}, {1: 0.9, 2: 0.8, 3: 0.7})
    kept = rounds.forget_uids(scores, {2, 3})
    assert kept.buckets == {"32k": {1: 0.9}}
    assert kept.combined == {1: 0.9}
    again = rounds.apply_rewards(kept, "32k", {2: 0.2}, 0.5, {"32k": 1.0, "124k": 1.0})
    assert again.buckets["32k"][2] == pytest.approx(0.1)  # from zero, not from 0.8


def test_cap_shares_spreads_the_excess() -> None:
    capped = rounds.cap_shares({1: 8.0, 2: 1.0, 3: 1.0}, 0.5)
    assert capped == pytest.approx({1: 0.5, 2: 0.25, 3: 0.25})
    assert rounds.cap_shares({1: 1.0, 2: 1.0}, 0.3) == {1: 0.5, 2: 0.5}  # infeasible: equal
    assert rounds.cap_shares({1: 0.0}, 0.5) == {}


def test_chain_weights_normalise_cap_and_pad() -> None:
    weights = rounds.chain_weights({1: 3.0, 2: 1.0, 9: 5.0}, uids=[0, 1, 2, 3], max_share=1.0, min_allowed=0)
    assert weights == pytest.approx({1: 0.75, 2: 0.25})  # uid 9 left the metagraph
    padded = rounds.chain_weights({1: 1.0}, uids=[0, 1, 2, 3], max_share=1.0, min_allowed=3)
    assert set(padded) == {0, 1, 2}
    assert padded[1] > 0.99
    assert sum(padded.values()) == pytest.approx(1)
    assert rounds.chain_weights({1: 0.0}, uids=[1], max_share=1.0, min_allowed=1) == {}


def test_chain_weights_meet_a_share_cap_that_one_scorer_alone_would_break() -> None:
    weights = rounds.chain_weights({1: 1.0}, uids=[0, 1, 2, 3], max_share=0.6, min_allowed=1)
    assert weights[1] == pytest.approx(0.6)
    assert len(weights) == 2
    assert sum(weights.values()) == pytest.approx(1)
