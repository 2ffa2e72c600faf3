"""How many replicas a miner wants: pure functions of its engines' metrics, its spec and its recent history.

The algorithm is the HorizontalPodAutoscaler's, so its behaviour is familiar:

- A recommendation from the metric: each reporting replica's value against the target (`recommend`).
  Replicas that do not report yet (still loading the model) count as idle when the load says scale up, and
  as exactly on target when it says scale down, so a rollout in progress neither inflates nor drains.
  Within `tolerance` of the target nothing changes.
- Stabilisation (`stabilize`): scale up to the lowest recommendation of the up-window, down to the highest
  of the down-window; a noisy metric therefore moves the count only when it stays high or low.
- A scale-down rate limit: at most `scaleDownStep` replicas per `scaleDownPeriodSeconds`.
- Clamped to [minReplicas, maxReplicas].
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

from quasar_operator.models import AutoscalingSpec


@dataclass(frozen=True)
class Recommendation:
    """What the metric asked for at one time."""

    time: float
    replicas: int
    # The count found on a fresh start (a new resource, an operator restart): it holds a scale-down for a
    # whole window, so a restart never drains replicas early, and never holds a scale-up.
    seed: bool = False


@dataclass(frozen=True)
class Decision:
    replicas: int
    reason: str
    # The recommendations still inside either window, the newest last: the next decision's history.
    history: tuple[Recommendation, ...]
    metric_value: float | None


def clamp(replicas: int, spec: AutoscalingSpec) -> int:
    return max(spec.min_replicas, min(spec.max_replicas, replicas))


def recommend(values: Sequence[float], current: int, spec: AutoscalingSpec) -> int:
    """Replicas for the load that `values` (one per reporting replica) show, with `current` desired now."""
    reporting = len(values)
    mean = sum(values) / reporting
    if abs(mean / spec.target - 1) <= spec.tolerance:
        return current
    # Replicas the reporting ones' load needs at the target; the epsilon keeps float noise (a sum of
    # 14.000000000000002) from asking for one replica more.
    needed = sum(values) / spec.target - 1e-9
    if needed > current:
        return math.ceil(needed)
    # Scaling down: replicas not reporting yet count as exactly on target (the HPA's rule), and the
    # tolerance is checked again with them.
    silent = max(0, current - reporting)
    if silent and abs((needed + silent) / current - 1) <= spec.tolerance:
        return current
    return min(current, math.ceil(needed + silent))


def stabilize(history: Sequence[Recommendation], now: float, current: int, spec: AutoscalingSpec) -> int:
    up = [r.replicas for r in history if not r.seed and now - r.time <= spec.scale_up_stabilization_seconds]
    down = [r.replicas for r in history if now - r.time <= spec.scale_down_stabilization_seconds]
    replicas = current
    if up and min(up) > replicas:
        replicas = min(up)
    if down and max(down) < replicas:
        replicas = max(down)
    return replicas


def decide(
    *,
    spec: AutoscalingSpec,
    values: Sequence[float],
    current: int,
    history: Sequence[Recommendation],
    now: float,
    last_scale_down: float | None,
) -> Decision:
    """The desired replicas now. `current`: the desired count so far (clamped here); `values`: the metric of
    each replica that reported; `last_scale_down`: when the desired count last went down."""
    current = clamp(current, spec)
    keep = max(spec.scale_up_stabilization_seconds, spec.scale_down_stabilization_seconds)
    past = [r for r in history if now - r.time <= keep]
    if not history and spec.scale_down_stabilization_seconds > 0:
        past = [Recommendation(now, current, seed=True)]
    if not values:
        return Decision(current, f"no {spec.metric} reported: staying at {current}", tuple(past), None)
    mean = sum(values) / len(values)
    wanted = clamp(recommend(values, current, spec), spec)
    past.append(Recommendation(now, wanted))
    replicas = stabilize(past, now, current, spec)
    what = f"{spec.metric} {mean:.3g} per replica ({len(values)} reporting), target {spec.target:g}"
    if replicas < current:
        if last_scale_down is not None and now - last_scale_down < spec.scale_down_period_seconds:
            return Decision(current, f"{what}: scale-down held by the rate limit", tuple(past), mean)
        replicas = max(replicas, current - spec.scale_down_step)
    if replicas == current:
        return Decision(current, f"{what}: {current} replicas", tuple(past), mean)
    return Decision(replicas, f"{what}: {current} -> {replicas} replicas", tuple(past), mean)
