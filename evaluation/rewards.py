"""Accuracy -> reward, moving-average scores and chain weights: pure functions for the validator.

The seed's rule: reward = min(accuracy * multiplier[bucket], cap). Multipliers are modest on purpose:
with 20x multipliers and a cap of 1.0 (the original subnet) 5% accuracy at 2M tokens paid in full.
"""

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from evaluation.buckets import BUCKETS, DEVELOPMENT_BUCKETS
from evaluation.errors import InputError

DEFAULT_MULTIPLIERS: dict[str, float] = {"32k": 1.0, "124k": 1.2, "512k": 1.5, "1.5m": 1.8, "2m": 2.0}
# Development sizes (mock mode on a CPU) are paid as the smallest seed bucket.
DEVELOPMENT_RATE_BUCKET = "32k"
U16_MAX = 65535


@dataclass(frozen=True)
class RewardRule:
    multipliers: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_MULTIPLIERS))
    cap: float = 1.0

    def __post_init__(self) -> None:
        for bucket, value in self.multipliers.items():
            if bucket not in BUCKETS:
                raise InputError(
                    f"multiplier {bucket!r}", f"unknown bucket; choose from {', '.join(BUCKETS)}"
                )
            if not (math.isfinite(value) and value > 0):
                raise InputError(f"multiplier {bucket!r}", f"must be a positive number, got {value!r}")
        if not (math.isfinite(self.cap) and self.cap > 0):
            raise InputError("reward cap", f"must be a positive number, got {self.cap!r}")

    @classmethod
    def parse(cls, text: str, cap: float = 1.0) -> "RewardRule":
        """Parse 'BUCKET=MULT,...' (e.g. '32k=1,2m=2.5'); buckets not named keep their default."""
        multipliers = dict(DEFAULT_MULTIPLIERS)
        for part in filter(None, (p.strip() for p in text.split(","))):
            bucket, sep, value = part.partition("=")
            if not sep:
                raise InputError(f"multiplier {part!r}", "expected BUCKET=MULTIPLIER")
            try:
                multipliers[bucket.strip()] = float(value)
            except ValueError:
                raise InputError(f"multiplier {part!r}", f"{value!r} is not a number") from None
        return cls(multipliers, cap)

    def reward(self, accuracy: float, bucket: str) -> float:
        """Reward for an accuracy in [0, 1] on a bucket."""
        if not 0.0 <= accuracy <= 1.0:
            raise InputError(f"accuracy on {bucket}", f"must be within [0, 1], got {accuracy!r}")
        rate_bucket = DEVELOPMENT_RATE_BUCKET if bucket in DEVELOPMENT_BUCKETS else bucket
        if rate_bucket not in self.multipliers:
            raise InputError(f"bucket {bucket!r}", "has no reward multiplier")
        return min(accuracy * self.multipliers[rate_bucket], self.cap)


def update_scores(
    scores: Mapping[int, float], rewards: Mapping[int, float], alpha: float
) -> dict[int, float]:
    """Exponential moving average per uid: new = alpha * reward + (1 - alpha) * old (old defaults to 0).

    Uids without a new reward keep their score; a non-finite reward counts as 0 so one bad value
    cannot poison a miner's score forever.
    """
    if not 0.0 < alpha <= 1.0:
        raise InputError("moving-average alpha", f"must be within (0, 1], got {alpha!r}")
    updated = dict(scores)
    for uid, reward in rewards.items():
        value = reward if math.isfinite(reward) else 0.0
        updated[uid] = alpha * value + (1.0 - alpha) * scores.get(uid, 0.0)
    return updated


def forget(scores: Mapping[int, float], uids: set[int]) -> dict[int, float]:
    """Drop the scores of uids whose hotkey changed: a new miner must not inherit an old one's score."""
    return {uid: score for uid, score in scores.items() if uid not in uids}


def normalize_weights(scores: Mapping[int, float]) -> dict[int, float]:
    """L1-normalise scores into weights; negatives and non-finite values count as 0; all-zero gives {}.

    A share too small for a float (a subnormal score next to a normal one) is dropped rather than kept as a
    weight of 0.0: every weight returned is positive.
    """
    clean = {uid: s for uid, s in scores.items() if math.isfinite(s) and s > 0}
    if not clean:
        return {}
    # Scaled by the largest first: the sum of scores near the float maximum would overflow to inf.
    largest = max(clean.values())
    scaled = {uid: s / largest for uid, s in clean.items()}
    total = math.fsum(scaled.values())
    weights = {uid: s / total for uid, s in scaled.items()}
    return {uid: w for uid, w in weights.items() if w > 0}


def to_u16_weights(weights: Mapping[int, float]) -> tuple[list[int], list[int]]:
    """Weights as the chain stores them: scaled so the largest is 65535, rounded, zeros dropped."""
    largest = max(weights.values(), default=0.0)
    if largest <= 0:
        return [], []
    pairs = [(uid, round(w / largest * U16_MAX)) for uid, w in sorted(weights.items())]
    kept = [(uid, value) for uid, value in pairs if value > 0]
    return [uid for uid, _ in kept], [value for _, value in kept]
