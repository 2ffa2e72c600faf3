"""The autoscaler's decisions as pure functions: the HPA's reading of the engines' metric, the stabilisation
windows, the scale-down rate limit and the bounds. Time is passed in; the simulations feed each decision its
own history, as the operator does between reconciles."""

import itertools
import math
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from quasar_operator.autoscaler import Decision, Recommendation, clamp, decide, recommend, stabilize
from quasar_operator.models import AutoscalingSpec

T0 = 1_000_000.0
STEP = 15.0  # seconds between two decisions in the simulations

# Targets and values whose float arithmetic is exact enough that an exact oracle applies: queue sizes are
# whole numbers, and these targets divide them without a rounding that crosses a whole number.
targets = st.sampled_from([0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 10.0])
tolerances = st.sampled_from([0.0, 0.05, 0.1, 0.2, 0.5])
queue_sizes = st.lists(st.integers(0, 60).map(float), min_size=1, max_size=12)


def spec(**fields: Any) -> AutoscalingSpec:
    return AutoscalingSpec.model_validate({"minReplicas": 1, "maxReplicas": 10, **fields})


@st.composite
def specs(draw: st.DrawFn) -> AutoscalingSpec:
    low = draw(st.integers(0, 5))
    return spec(
        minReplicas=low,
        maxReplicas=draw(st.integers(low, 30)),
        target=draw(targets),
        tolerance=draw(tolerances),
        scaleUpStabilizationSeconds=draw(st.sampled_from([0, 15, 30, 50, 60, 120])),
        scaleDownStabilizationSeconds=draw(st.sampled_from([0, 15, 45, 60, 300])),
        scaleDownStep=draw(st.integers(1, 4)),
        scaleDownPeriodSeconds=draw(st.sampled_from([0, 15, 60, 120])),
    )


def hpa(values: Sequence[float], current: int, scaling: AutoscalingSpec) -> int:
    """The HPA's reading in exact arithmetic: replicas that do not report count as idle when the load says
    scale up (so they never make it scale down), and as exactly on target when it says scale down."""
    load, target = sum((Fraction(v) for v in values), Fraction(0)), Fraction(scaling.target)
    ratio = load / len(values) / target
    if abs(ratio - 1) <= Fraction(scaling.tolerance):
        return current
    if ratio > 1:
        return max(current, math.ceil(load / target))
    silent = max(0, current - len(values))
    # With the silent replicas counted on target, the tolerance is checked again (the HPA does the same).
    if silent and abs((load / target + silent) / current - 1) <= Fraction(scaling.tolerance):
        return current
    return math.ceil(load / target + silent)


def spread(load: int, replicas: int) -> list[float]:
    """The queue sizes of `replicas` engines sharing `load` waiting requests."""
    return [float(load // replicas + (i < load % replicas)) for i in range(replicas)]


def simulate(
    scaling: AutoscalingSpec,
    loads: Sequence[int],
    start: int,
    *,
    warm: int | None = None,
) -> list[tuple[float, int]]:
    """(time, desired replicas) after each decision, one every STEP seconds from T0, under `loads` waiting
    requests in all. `warm`: the load of a steady phase run first (long enough to fill both windows),
    whose decisions are left out: a resource the operator has been watching for a while."""
    windows = max(scaling.scale_up_stabilization_seconds, scaling.scale_down_stabilization_seconds)
    before = [] if warm is None else [warm] * (int(windows // STEP) + 2)
    current, last_down = start, None
    history: tuple[Recommendation, ...] = ()
    out = []
    for i, load in enumerate([*before, *loads]):
        now = T0 + (i - len(before)) * STEP
        decision = decide(
            spec=scaling,
            values=spread(load, current) if current else [],
            current=current,
            history=history,
            now=now,
            last_scale_down=last_down,
        )
        if decision.replicas < current:
            last_down = now
        current, history = decision.replicas, decision.history
        if i >= len(before):
            out.append((now, current))
    return out


def changes(run: Sequence[tuple[float, int]], start: int) -> list[tuple[float, int]]:
    """(time, change) of each decision that moved the count."""
    out, before = [], start
    for now, replicas in run:
        if replicas != before:
            out.append((now, replicas - before))
        before = replicas
    return out


# --- clamp ---------------------------------------------------------------------------------------------


@given(specs(), st.integers(-5, 2000))
def test_clamp_keeps_within_bounds_and_leaves_counts_inside_alone(scaling: AutoscalingSpec, n: int) -> None:
    clamped = clamp(n, scaling)
    assert scaling.min_replicas <= clamped <= scaling.max_replicas
    assert clamp(clamped, scaling) == clamped
    if scaling.min_replicas <= n <= scaling.max_replicas:
        assert clamped == n


# --- recommend -----------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(queue_sizes, st.integers(0, 20), targets, tolerances)
def test_recommend_is_the_hpa_reading(values: list[float], current: int, target: float, tol: float) -> None:
    scaling = spec(target=target, tolerance=tol, maxReplicas=1000)
    ratio = sum((Fraction(v) for v in values), Fraction(0)) / len(values) / Fraction(target)
    assume(abs(abs(ratio - 1) - Fraction(tol)) > Fraction(1, 10**6))  # not on the tolerance's edge
    assert recommend(values, current, scaling) == hpa(values, current, scaling)


@pytest.mark.parametrize(
    ("values", "current", "expected"),
    [
        ([4.0, 4.0], 2, 4),  # twice the target on each: twice the replicas
        ([5.0, 4.0], 2, 5),  # 9 waiting at 2 per replica: 4.5 rounds up
        ([0.0, 0.0], 4, 2),  # two idle, two loading (on target): the idle ones go
        ([0.0, 0.0, 0.0, 0.0], 4, 0),  # all idle: min/max bounds are decide's business
        ([6.0], 4, 4),  # one hot, three loading: the load (3 replicas' worth) fits the 4 already there
        ([10.0], 4, 5),  # ... but 10 waiting need 5 whatever the loading ones will take
        ([2.0, 2.0], 5, 5),  # on target, three still loading: nothing moves
        ([2.1, 1.9, 2.0], 3, 3),  # within the tolerance
        ([1.0, 1.0, 1.0, 1.0, 1.0, 1.0], 2, 3),  # more replicas report than desired (a scale-down in flight)
    ],
)
def test_recommend_examples(values: list[float], current: int, expected: int) -> None:
    assert recommend(values, current, spec(target=2.0, maxReplicas=100)) == expected


@given(st.integers(1, 12), st.integers(0, 12), targets, tolerances, st.floats(-0.99, 0.99))
def test_recommend_within_tolerance_changes_nothing(
    reporting: int, current: int, target: float, tol: float, within: float
) -> None:
    values = [target * (1 + tol * within)] * reporting
    assert recommend(values, current, spec(target=target, tolerance=tol)) == current


@settings(max_examples=200, deadline=None)
@given(queue_sizes, st.integers(0, 20), targets, tolerances)
def test_replicas_that_do_not_report_are_never_drained(
    values: list[float], current: int, target: float, tol: float
) -> None:
    scaling = spec(target=target, tolerance=tol, maxReplicas=1000)
    replicas = recommend(values, current, scaling)
    assert replicas >= current - len(values)  # the silent ones (still loading) stay
    if sum(values) >= target * len(values):  # the reporting ones are at or above target
        assert replicas >= current


def test_a_rollout_in_progress_neither_inflates_nor_drains() -> None:
    scaling = spec(target=2.0, maxReplicas=100)
    for ready in range(1, 8):
        assert recommend([2.0] * ready, 8, scaling) == 8


def test_recommend_does_not_overshoot_on_float_rounding() -> None:
    # queueTime of three replicas, in seconds, against a 2 s target: 14 s of waiting needs 7 replicas.
    assert recommend([2.7, 5.4, 5.9], 3, spec(target=2.0, maxReplicas=20)) == 7


# --- stabilize -----------------------------------------------------------------------------------------


def test_stabilize_without_history_keeps_the_count() -> None:
    assert stabilize([], T0, 4, spec()) == 4


def test_stabilize_scales_up_to_the_lowest_and_down_to_the_highest_of_each_window() -> None:
    scaling = spec(scaleUpStabilizationSeconds=60, scaleDownStabilizationSeconds=300)
    history = [Recommendation(T0 - 400, 1), Recommendation(T0 - 200, 6), Recommendation(T0 - 30, 8)]
    assert stabilize([*history, Recommendation(T0, 9)], T0, 4, scaling) == 8  # lowest of the last 60 s
    assert stabilize([*history, Recommendation(T0, 2)], T0, 10, scaling) == 8  # highest of the last 300 s
    assert stabilize([*history, Recommendation(T0, 2)], T0, 5, scaling) == 5  # neither window agrees
    # A recommendation exactly a window old still counts; one older does not.
    assert stabilize([Recommendation(T0 - 60, 3), Recommendation(T0, 9)], T0, 2, scaling) == 3
    assert stabilize([Recommendation(T0 - 61, 3), Recommendation(T0, 9)], T0, 2, scaling) == 9


@given(
    st.lists(st.tuples(st.integers(0, 400), st.integers(0, 20)), max_size=20),
    st.integers(0, 20),
    specs(),
)
def test_stabilize_moves_only_as_far_as_its_whole_window_agrees(
    recs: list[tuple[int, int]], current: int, scaling: AutoscalingSpec
) -> None:
    history = [Recommendation(T0 - age, n) for age, n in recs]
    up = [r.replicas for r in history if T0 - r.time <= scaling.scale_up_stabilization_seconds]
    down = [r.replicas for r in history if T0 - r.time <= scaling.scale_down_stabilization_seconds]
    replicas = stabilize(history, T0, current, scaling)
    if replicas > current:
        assert replicas in up
        assert all(n >= replicas for n in up)
    elif replicas < current:
        assert replicas in down
        assert all(n <= replicas for n in down)
        assert not up or min(up) <= current  # a scale-up would have been taken first
    else:
        assert not up or min(up) <= current
        assert not down or max(down) >= current


# --- decide --------------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    specs(),
    st.lists(st.floats(0, 1e4), max_size=12),
    st.integers(-3, 60),
    st.lists(st.tuples(st.integers(0, 4000), st.integers(0, 60)), max_size=12),
    st.none() | st.integers(0, 4000),
)
def test_decide_stays_within_bounds_and_keeps_only_its_windows(
    scaling: AutoscalingSpec,
    values: list[float],
    current: int,
    recs: list[tuple[int, int]],
    down_ago: int | None,
) -> None:
    history = sorted((Recommendation(T0 - age, n) for age, n in recs), key=lambda r: r.time)
    decision = decide(
        spec=scaling,
        values=values,
        current=current,
        history=history,
        now=T0,
        last_scale_down=None if down_ago is None else T0 - down_ago,
    )
    assert scaling.min_replicas <= decision.replicas <= scaling.max_replicas
    keep = max(scaling.scale_up_stabilization_seconds, scaling.scale_down_stabilization_seconds)
    if values:
        assert decision.history, "the next decision needs a history"
    assert all(T0 - r.time <= keep for r in decision.history)
    assert [r.time for r in decision.history] == sorted(r.time for r in decision.history)
    clamped = clamp(current, scaling)
    if values:
        assert decision.history[-1] == Recommendation(T0, clamp(recommend(values, clamped, scaling), scaling))
        assert decision.metric_value == pytest.approx(sum(values) / len(values))
    else:
        assert decision.replicas == clamped
        assert decision.metric_value is None
    if decision.replicas < clamped:
        assert clamped - decision.replicas <= scaling.scale_down_step
        assert down_ago is None or down_ago >= scaling.scale_down_period_seconds


def test_no_values_keep_the_count_and_add_nothing_to_the_history() -> None:
    history = (Recommendation(T0 - 30, 7),)
    decision = decide(spec=spec(), values=[], current=4, history=history, now=T0, last_scale_down=None)
    assert decision == Decision(4, "no queueSize reported: staying at 4", history, None)
    assert decide(spec=spec(), values=[], current=40, history=(), now=T0, last_scale_down=None).replicas == 10


def test_a_count_outside_the_bounds_is_brought_inside_at_once() -> None:
    scaling = spec(minReplicas=2, maxReplicas=5)
    for current, expected in [(0, 2), (9, 5)]:
        decision = decide(spec=scaling, values=[2.0], current=current, history=(), now=T0, last_scale_down=T0)
        assert decision.replicas == expected


@given(st.integers(1, 8), st.integers(3, 120))
def test_a_spike_scales_up_on_the_next_decision_without_an_up_window(start: int, load: int) -> None:
    scaling = spec(maxReplicas=50, scaleUpStabilizationSeconds=0)
    assume(load > start * scaling.target * (1 + scaling.tolerance))
    run = simulate(scaling, [load] * 5, start, warm=int(start * scaling.target))
    wanted = min(50, math.ceil(load / scaling.target))
    assert changes(run, start) == [(T0, wanted - start)]


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 8), st.integers(3, 120), st.sampled_from([15, 30, 45, 50, 60, 100, 120]))
def test_a_spike_scales_up_only_once_it_has_lasted_the_up_window(start: int, load: int, window: int) -> None:
    scaling = spec(maxReplicas=50, scaleUpStabilizationSeconds=window)
    assume(load > start * scaling.target * (1 + scaling.tolerance))
    run = simulate(scaling, [load] * 20, start, warm=int(start * scaling.target))
    # The last low recommendation came at T0 - STEP; it leaves the window once it is older than the window.
    first = next(t for t, _ in run if t - (T0 - STEP) > window)
    wanted = min(50, math.ceil(load / scaling.target))
    assert changes(run, start) == [(first, wanted - start)]


@settings(max_examples=150, deadline=None)
@given(
    st.integers(2, 12),
    st.integers(0, 20),
    st.sampled_from([15, 60, 300]),
    st.integers(1, 3),
    st.sampled_from([0, 15, 60]),
    st.integers(1, 3),
)
def test_a_lasting_drop_scales_down_after_the_window_step_by_step(
    start: int, load: int, window: int, step: int, period: int, low: int
) -> None:
    scaling = spec(
        minReplicas=low,
        maxReplicas=12,
        scaleDownStabilizationSeconds=window,
        scaleDownStep=step,
        scaleDownPeriodSeconds=period,
    )
    assume(start > low and load < start * scaling.target * (1 - scaling.tolerance))
    run = simulate(scaling, [load] * 100, start, warm=int(start * scaling.target))
    moves = changes(run, start)
    assert all(change < 0 for _, change in moves)
    assert all(-change <= step for _, change in moves)
    assert all(later - earlier >= period for (earlier, _), (later, _) in itertools.pairwise(moves))
    # The last high recommendation came at T0 - STEP: nothing goes down while it is inside the window.
    assert all(t - (T0 - STEP) > window for t, _ in moves)
    final = run[-1][1]
    needed = max(low, math.ceil(load / scaling.target))
    assert final >= needed
    # It stops only where the load is within the tolerance (or at the floor).
    assert final == needed or abs(load / final / scaling.target - 1) <= scaling.tolerance


@settings(max_examples=150, deadline=None)
@given(
    st.integers(3, 12),
    st.data(),
    st.sampled_from([30, 60, 120, 300]),
)
def test_a_noisy_metric_does_not_flap(high_replicas: int, data: st.DataObject, window: int) -> None:
    """100 decisions 15 s apart: the load alternates between high and low for 50, then stays low."""
    scaling = spec(maxReplicas=20, scaleDownStabilizationSeconds=window)
    high = int(high_replicas * scaling.target)
    low = data.draw(st.integers(0, high // 2), label="low")
    start = data.draw(st.integers(1, high_replicas), label="start")
    loads = [high if i % 2 == 0 else low for i in range(50)] + [low] * 50
    run = simulate(scaling, loads, start, warm=int(start * scaling.target))
    moves = changes(run, start)
    ups = [t for t, change in moves if change > 0]
    downs = [t for t, change in moves if change < 0]
    assert len(ups) <= 1, moves
    assert all(up < down for up in ups for down in downs), "one increase, then only decreases"
    last_high = T0 + 48 * STEP
    assert all(t - last_high > window for t in downs), "nothing goes down while the high load recurs"
    peak = max(replicas for _, replicas in run)
    hot = abs(high / start / scaling.target - 1) > scaling.tolerance
    assert peak == (high_replicas if hot else start)
    if max(1, math.ceil(low / scaling.target)) < peak:
        assert downs, "once the noise stops, the low load scales down"


@pytest.mark.parametrize("window", [60, 300])
def test_a_fresh_history_does_not_scale_down_before_a_whole_window(window: int) -> None:
    """An operator restart forgets the history: the count it finds stands for a whole window."""
    scaling = spec(scaleDownStabilizationSeconds=window, scaleDownPeriodSeconds=0, scaleDownStep=10)
    run = simulate(scaling, [0] * 40, 8)
    moves = changes(run, 8)
    first = next(t for t, _ in run if t - T0 > window)
    assert moves[0] == (first, 1 - 8)
    assert len(moves) == 1


def test_the_rate_limit_holds_a_scale_down_but_not_a_scale_up() -> None:
    scaling = spec(
        scaleUpStabilizationSeconds=60,
        scaleDownStabilizationSeconds=0,
        scaleDownPeriodSeconds=60,
        scaleDownStep=2,
    )
    history = (Recommendation(T0 - STEP, 1),)
    held = decide(spec=scaling, values=[0.0] * 6, current=6, history=history, now=T0, last_scale_down=T0 - 59)
    assert held.replicas == 6
    assert "rate limit" in held.reason
    assert held.history[-1] == Recommendation(T0, 1)  # the recommendation is still remembered
    done = decide(spec=scaling, values=[0.0] * 6, current=6, history=history, now=T0, last_scale_down=T0 - 60)
    assert done.replicas == 4
    assert done.reason.endswith("6 -> 4 replicas")
    hot = (Recommendation(T0 - STEP, 10),)
    up = decide(spec=scaling, values=[8.0] * 6, current=6, history=hot, now=T0, last_scale_down=T0)
    assert up.replicas == 10


def test_a_spike_scales_up_on_the_first_decision_after_a_restart() -> None:
    scaling = spec(scaleUpStabilizationSeconds=0)
    decision = decide(spec=scaling, values=[10.0, 10.0], current=2, history=(), now=T0, last_scale_down=None)
    assert decision.replicas == 10


@pytest.mark.parametrize(
    ("up", "down", "interval"),
    [(0, 0, 15.0), (0, 30, 60.0)],
    ids=["both-windows-0", "windows-shorter-than-the-reconcile-interval"],
)
@pytest.mark.parametrize(("load", "start", "end"), [(40, 2, 10), (0, 8, 1)], ids=["spike", "idle"])
def test_short_windows_still_scale(
    up: int, down: int, interval: float, load: int, start: int, end: int
) -> None:
    scaling = spec(
        scaleUpStabilizationSeconds=up,
        scaleDownStabilizationSeconds=down,
        scaleDownStep=10,
        scaleDownPeriodSeconds=0,
    )
    current, last_down = start, None
    history: tuple[Recommendation, ...] = ()
    for i in range(20):
        now = T0 + i * interval
        decision = decide(
            spec=scaling,
            values=spread(load, current),
            current=current,
            history=history,
            now=now,
            last_scale_down=last_down,
        )
        last_down = now if decision.replicas < current else last_down
        current, history = decision.replicas, decision.history
    assert current == end
