import math
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from evaluation.buckets import BUCKETS, DEVELOPMENT_BUCKETS
from evaluation.errors import InputError
from evaluation.rewards import (
    DEFAULT_MULTIPLIERS,
    U16_MAX,
    RewardRule,
    forget,
    normalize_weights,
    to_u16_weights,
    update_scores,
)

unit = st.floats(min_value=0.0, max_value=1.0)
bucket = st.sampled_from(list(BUCKETS))
# Scores are moving averages of capped rewards: within [0, cap], plus the junk a bug could produce.
score_values = st.one_of(
    st.floats(min_value=0.0, max_value=2.0), st.sampled_from([math.nan, math.inf, -math.inf, -0.5])
)
score_maps = st.dictionaries(st.integers(0, 255), score_values, max_size=40)


def test_seed_multipliers_cover_every_bucket() -> None:
    assert set(DEFAULT_MULTIPLIERS) == set(BUCKETS)
    assert DEFAULT_MULTIPLIERS == {"32k": 1.0, "124k": 1.2, "512k": 1.5, "1.5m": 1.8, "2m": 2.0}


@given(unit, bucket)
def test_reward_is_capped_product(accuracy: float, name: str) -> None:
    rule = RewardRule()
    assert rule.reward(accuracy, name) == min(accuracy * DEFAULT_MULTIPLIERS[name], 1.0)


@given(unit, unit, bucket)
def test_reward_is_monotone_in_accuracy(a: float, b: float, name: str) -> None:
    low, high = sorted((a, b))
    assert RewardRule().reward(low, name) <= RewardRule().reward(high, name)


def test_half_accuracy_at_2m_saturates_but_small_accuracy_does_not() -> None:
    rule = RewardRule()
    assert rule.reward(0.5, "2m") == 1.0
    assert rule.reward(0.05, "2m") == pytest.approx(0.1)


def test_parse_overrides_named_buckets_only() -> None:
    rule = RewardRule.parse("2m=3, 32k=0.5", cap=2.0)
    assert rule.multipliers == {**DEFAULT_MULTIPLIERS, "2m": 3.0, "32k": 0.5}
    assert rule.reward(0.9, "2m") == 2.0


@pytest.mark.parametrize(
    ("text", "named"),
    [("3m=1", "'3m'"), ("2m", "'2m'"), ("2m=fast", "'fast'"), ("32k=-1", "'32k'"), ("32k=nan", "'32k'")],
)
def test_parse_rejects_bad_rules_naming_the_part(text: str, named: str) -> None:
    with pytest.raises(InputError, match=named):
        RewardRule.parse(text)


def test_reward_rejects_out_of_range_accuracy() -> None:
    with pytest.raises(InputError, match="2m"):
        RewardRule().reward(1.5, "2m")


@given(score_maps, score_maps, st.floats(min_value=0.01, max_value=1.0))
def test_update_scores_is_an_ema_that_keeps_unrewarded_uids(
    old: dict[int, float], new: dict[int, float], alpha: float
) -> None:
    old = {uid: s for uid, s in old.items() if math.isfinite(s)}
    updated = update_scores(old, new, alpha)
    assert set(updated) == set(old) | set(new)
    for uid, value in updated.items():
        if uid not in new:
            assert value == old[uid]
        else:
            reward = new[uid] if math.isfinite(new[uid]) else 0.0
            assert value == pytest.approx(alpha * reward + (1 - alpha) * old.get(uid, 0.0))


def test_update_scores_rejects_bad_alpha() -> None:
    with pytest.raises(InputError, match="alpha"):
        update_scores({}, {1: 1.0}, 0.0)


def test_forget_drops_only_named_uids() -> None:
    assert forget({1: 0.5, 2: 0.7, 3: 0.1}, {2}) == {1: 0.5, 3: 0.1}


@given(score_maps)
def test_normalized_weights_sum_to_one_over_positive_scores(scores: dict[int, float]) -> None:
    weights = normalize_weights(scores)
    positive = {uid: s for uid, s in scores.items() if math.isfinite(s) and s > 0}
    assert set(weights) <= set(positive)
    if positive:
        largest = max(positive.values())
        # Only a share below the smallest float can be dropped (a subnormal score next to a normal one).
        assert all(positive[uid] / largest < sys.float_info.epsilon for uid in set(positive) - set(weights))
        assert math.fsum(weights.values()) == pytest.approx(1.0)
        assert all(0 < w <= 1 for w in weights.values())


@given(score_maps)
def test_u16_weights_keep_order_and_scale_max_to_u16(scores: dict[int, float]) -> None:
    weights = normalize_weights(scores)
    uids, values = to_u16_weights(weights)
    assert uids == sorted(uids)
    assert all(0 < v <= U16_MAX for v in values)
    if weights:
        assert max(values) == U16_MAX
        by_uid = dict(zip(uids, values, strict=True))
        for a in by_uid:
            for b in by_uid:
                if weights[a] > weights[b]:
                    assert by_uid[a] >= by_uid[b]


@given(unit, st.sampled_from(sorted(DEVELOPMENT_BUCKETS)))
def test_development_sizes_are_paid_as_the_smallest_seed_bucket(accuracy: float, name: str) -> None:
    rule = RewardRule.parse("32k=1.3")
    assert rule.reward(accuracy, name) == rule.reward(accuracy, "32k")
