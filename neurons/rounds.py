"""Pure round logic of the validator: what to ask, whom, how long to wait, and what the answers earn.

Nothing here does I/O; the validator loop (neurons/validator.py) wires these to the chain and HTTP.
"""

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from evaluation.buckets import MAX_BUCKET_SHARE, bucket_tokens
from evaluation.errors import InputError
from evaluation.rewards import RewardRule, forget, normalize_weights, update_scores
from evaluation.tasks import get_task

DEFAULT_BUCKET_WEIGHTS = "32k=1,124k=1,512k=1,1.5m=1,2m=1"

# Deadline = base + allowance per 1,000 prompt tokens, capped by --neuron.timeout. The allowance covers
# prefill (long contexts dominate: ~2M tokens of prefill on one H100 for an 8B model takes minutes) and
# the transfer of the compressed prompt; the base covers decoding and connection setup.
DEADLINE_BASE_S = 10.0
DEADLINE_PER_KTOKEN_S = 0.1


@dataclass(frozen=True)
class Miner:
    uid: int
    hotkey: str
    endpoint: tuple[str, int]


def parse_weights(text: str, what: str) -> dict[str, float]:
    """Parse 'NAME=WEIGHT,...' (a bare NAME weighs 1) into positive finite weights; zero weights drop out."""
    weights: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = (s.strip() for s in part.partition("="))
        try:
            weight = float(value) if sep else 1.0
        except ValueError:
            raise InputError(f"{what} {part!r}", f"{value!r} is not a number") from None
        if not (math.isfinite(weight) and weight >= 0):
            raise InputError(f"{what} {part!r}", f"weight must be a finite number >= 0, got {value}")
        if name in weights:
            raise InputError(f"{what} {part!r}", f"{name!r} is named twice")
        if weight > 0:
            weights[name] = weight
    if not weights:
        raise InputError(what, f"no positive weight in {text!r}")
    return weights


def parse_task_weights(text: str) -> dict[str, float]:
    weights = parse_weights(text, "task weight")
    for task in weights:
        get_task(task)
    return weights


def parse_bucket_weights(text: str, max_share: float = MAX_BUCKET_SHARE) -> dict[str, float]:
    """Bucket weights whose largest share of the total is at most `max_share`."""
    weights = parse_weights(text, "bucket weight")
    for bucket in weights:
        bucket_tokens(bucket)
    total = sum(weights.values())
    for bucket, weight in weights.items():
        if weight / total > max_share + 1e-9:
            raise InputError(
                f"bucket weights {text!r}",
                f"{bucket} would get {weight / total:.0%} of rounds; no bucket may get more than "
                f"{max_share:.0%} (name more buckets)",
            )
    return weights


def choose(weights: Mapping[str, float], rng: random.Random) -> str:
    names = sorted(weights)
    return rng.choices(names, weights=[weights[n] for n in names])[0]


def eligible_miners(
    neurons: Sequence[tuple[int, str, tuple[str, int] | None]], own_hotkey: str
) -> list[Miner]:
    """Neurons (uid, hotkey, endpoint) that serve an endpoint, other than the validator itself."""
    return [
        Miner(uid, hotkey, endpoint)
        for uid, hotkey, endpoint in neurons
        if endpoint is not None and hotkey != own_hotkey
    ]


def query_url(endpoint: tuple[str, int], path: str) -> str:
    """The URL of `path` on a served endpoint; an IPv6 address goes in brackets."""
    host, port = endpoint
    return f"http://{f'[{host}]' if ':' in host else host}:{port}{path}"


def sample_miners(miners: Sequence[Miner], size: int, rng: random.Random) -> list[Miner]:
    """Up to `size` distinct miners, uniformly at random, in uid order."""
    if size < 1:
        raise InputError("sample size", f"must be >= 1, got {size}")
    chosen = rng.sample(list(miners), min(size, len(miners)))
    return sorted(chosen, key=lambda m: m.uid)


def deadline_s(
    prompt_tokens: int,
    cap_s: float,
    base_s: float = DEADLINE_BASE_S,
    per_ktoken_s: float = DEADLINE_PER_KTOKEN_S,
) -> float:
    """Seconds a miner gets to answer a prompt of `prompt_tokens`: base + per-1k-token allowance, capped."""
    return min(cap_s, base_s + per_ktoken_s * prompt_tokens / 1000)


def rewards_for(accuracies: Mapping[int, float], bucket: str, rule: RewardRule) -> dict[int, float]:
    """Reward per uid; accuracies are grade() results, 0.0 for a failed or invalid answer."""
    return {uid: rule.reward(accuracy, bucket) for uid, accuracy in accuracies.items()}


@dataclass(frozen=True)
class Scores:
    """Moving-average scores: per bucket (uid -> score) and combined across buckets."""

    buckets: Mapping[str, Mapping[int, float]]
    combined: Mapping[int, float]


def combine(
    buckets: Mapping[str, Mapping[int, float]], bucket_weights: Mapping[str, float]
) -> dict[int, float]:
    """Combined score per uid: the bucket scores averaged with the bucket weights (a bucket a miner was
    never asked counts as 0), so the combined score estimates the reward a miner earns per round."""
    total = sum(bucket_weights.values())
    uids = sorted({uid for scores in buckets.values() for uid in scores})
    return {
        uid: sum(w * buckets.get(b, {}).get(uid, 0.0) for b, w in bucket_weights.items()) / total
        for uid in uids
    }


def apply_rewards(
    scores: Scores,
    bucket: str,
    rewards: Mapping[int, float],
    alpha: float,
    bucket_weights: Mapping[str, float],
) -> Scores:
    """Fold one round's rewards into the bucket's moving average, then recombine."""
    buckets = {b: dict(s) for b, s in scores.buckets.items()}
    buckets[bucket] = update_scores(buckets.get(bucket, {}), rewards, alpha)
    return Scores(buckets, combine(buckets, bucket_weights))


def changed_uids(previous: Mapping[int, str], current: Mapping[int, str]) -> set[int]:
    """Uids whose hotkey changed or that left the metagraph: their scores belong to someone else."""
    return {uid for uid, hotkey in previous.items() if current.get(uid) != hotkey}


def forget_uids(scores: Scores, uids: set[int]) -> Scores:
    """Scores without `uids` anywhere: a replaced hotkey starts from zero."""
    if not uids:
        return scores
    return Scores({b: forget(s, uids) for b, s in scores.buckets.items()}, forget(scores.combined, uids))


# Weight given to each padding uid when fewer uids have a score than the chain's min_allowed_weights
# (bittensor's own process_weights_for_netuid pads the same way).
PAD_WEIGHT = 1e-5


def cap_shares(weights: Mapping[int, float], max_share: float) -> dict[int, float]:
    """Normalised weights with no share above `max_share`: the excess of capped uids is spread over the
    others in proportion (water-filling). Where the cap cannot hold (too few uids), weights are equal."""
    total = sum(weights.values())
    if total <= 0:
        return {}
    shares = {uid: w / total for uid, w in weights.items()}
    if max_share * len(shares) < 1:
        return {uid: 1 / len(shares) for uid in shares}
    capped: set[int] = set()
    while True:
        free = {uid: s for uid, s in shares.items() if uid not in capped}
        room = 1.0 - max_share * len(capped)
        free_total = sum(free.values())
        scaled = {uid: s * room / free_total for uid, s in free.items()}
        over = {uid for uid, s in scaled.items() if s > max_share + 1e-12}
        if not over:
            return {**{uid: max_share for uid in capped}, **scaled}
        capped |= over


def chain_weights(
    combined: Mapping[int, float], uids: Sequence[int], max_share: float, min_allowed: int
) -> dict[int, float]:
    """Weights to set: normalised combined scores of current `uids`, no share above `max_share`.

    Where too few uids have a score to meet the subnet's `min_allowed` count or its share cap, other uids
    are added at PAD_WEIGHT first; capping then spreads the excess over them. Empty when no uid has a
    positive score."""
    current = set(uids)
    weights = normalize_weights({uid: s for uid, s in combined.items() if uid in current})
    if not weights:
        return {}
    needed = max(min_allowed, math.ceil(1 / max_share - 1e-9) if max_share > 0 else len(current))
    for uid in sorted(current - set(weights))[: max(0, needed - len(weights))]:
        weights[uid] = PAD_WEIGHT
    return dict(sorted(cap_shares(weights, max_share).items()))
