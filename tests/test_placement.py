"""Placement as a pure function of the desired count and the pools' observed state: fill in order of
preference within each pool's room, spill past full pools, reopen them, and make before break. Properties
run over random pool views; a small world model (pods scheduled when GPUs are free, ready one step later,
removed as a Deployment removes them) runs plans in a loop the way the operator does."""

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from hypothesis import given, settings
from hypothesis import strategies as st
from quasar_operator.placement import MAX_BACKOFF_DOUBLINGS, Plan, PoolView, plan

NOW = 1_000_000.0
SPILL = 300.0
STEP = 15.0


def pool(
    name: str,
    max_replicas: int,
    replicas: int = 0,
    *,
    ready: int = 0,
    scheduled: int | None = None,
    unschedulable_since: float | None = None,
    free: int | None = None,
    full_since: float | None = None,
) -> PoolView:
    return PoolView(
        name=name,
        max_replicas=max_replicas,
        replicas=replicas,
        ready=ready,
        scheduled=replicas if scheduled is None else scheduled,
        unschedulable_since=unschedulable_since,
        free=free,
        full_since=full_since,
    )


def shares(result: Plan) -> dict[str, int]:
    return {share.name: share.replicas for share in result.shares}


ages = st.integers(0, 1000).map(lambda age: NOW - age)


@st.composite
def pool_views(draw: st.DrawFn) -> list[PoolView]:
    views = []
    for i in range(draw(st.integers(1, 4))):
        replicas = draw(st.integers(0, 8))
        views.append(
            PoolView(
                name=f"pool-{i}",
                max_replicas=draw(st.integers(0, 8)),
                replicas=replicas,
                # The Deployment's readyReplicas can lag a scale-down: ready may exceed replicas by one.
                ready=draw(st.integers(0, replicas + 1)),
                scheduled=draw(st.integers(0, replicas)),
                unschedulable_since=draw(st.none() | ages),
                free=draw(st.none() | st.integers(0, 8)),
                full_since=draw(st.none() | ages),
                spills=draw(st.integers(0, 8)),
            )
        )
    return views


spill_afters = st.sampled_from([0.0, 60.0, 300.0])


def fill(desired: int, views: Sequence[PoolView], spill_after: float) -> Plan:
    """The plan with no replica ready anywhere: make-before-break keeps nothing, so its shares are the
    fill."""
    return plan(desired, [dataclasses.replace(v, ready=0) for v in views], NOW, spill_after)


def room(view: PoolView, full: bool) -> int:
    """What the pool has room for, as the module's docstring defines it."""
    if full:
        return min(view.max_replicas, view.scheduled)
    if view.free is None:
        return view.max_replicas
    return min(view.max_replicas, view.scheduled + view.free)


def live_ready(view: PoolView) -> int:
    """Ready replicas that will still exist: a status reporting more ready than replicas lags a cut."""
    return min(view.ready, view.replicas)


def ready_removed(view: PoolView, replicas: int) -> int:
    """Ready replicas a Deployment loses going from view.replicas to `replicas`: it removes not-ready ones
    first."""
    removed = max(0, view.replicas - replicas)
    return max(0, removed - (view.replicas - live_ready(view)))


def shrinking(desired: int, views: list[PoolView]) -> bool:
    return desired < sum(v.replicas for v in views)


# --- properties ----------------------------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(st.integers(0, 30), pool_views(), spill_afters)
def test_fill_places_in_order_of_preference_within_room(
    desired: int, views: list[PoolView], spill_after: float
) -> None:
    result = fill(desired, views, spill_after)
    placed = [s.replicas for s in result.shares]
    full = [s.full_since is not None for s in result.shares]
    rooms = [room(v, f) for v, f in zip(views, full, strict=True)]
    assert [s.name for s in result.shares] == [v.name for v in views]
    assert sum(placed) + result.unplaced == desired
    assert all(n >= 0 for n in placed)
    assert result.unplaced >= 0
    kept = [min(v.replicas, r) for v, r in zip(views, rooms, strict=True)]
    if shrinking(desired, views) and sum(kept) >= desired:
        # Shrinking: no pool starts a replica; the least preferred give theirs up first.
        assert all(n <= k for n, k in zip(placed, kept, strict=True))
        for i, (n, k) in enumerate(zip(placed, kept, strict=True)):
            if n < k:
                assert all(placed[j] == 0 for j in range(i + 1, len(views)))
        return
    for i, (view, n, is_full) in enumerate(zip(views, placed, full, strict=True)):
        assert n <= view.max_replicas
        if is_full:
            assert n <= rooms[i], "a full pool takes no replicas beyond those it runs"
        if n:  # a later pool gets replicas only once every earlier one is at its room
            assert all(placed[k] >= rooms[k] for k in range(i))
        if n > rooms[i]:  # waiting replicas go to the first non-full pools under their max
            assert all(placed[k] >= rooms[k] for k in range(len(views)))
            assert all(full[k] or placed[k] == views[k].max_replicas for k in range(i))
    if result.unplaced:
        for view, n, is_full, r in zip(views, placed, full, rooms, strict=True):
            assert n == (r if is_full else view.max_replicas)


@settings(max_examples=400, deadline=None)
@given(st.integers(0, 30), pool_views(), spill_afters)
def test_make_before_break(desired: int, views: list[PoolView], spill_after: float) -> None:
    result = plan(desired, views, NOW, spill_after)
    bare = fill(desired, views, spill_after)
    # What full pools, spills and unplaced replicas are does not depend on which replicas are ready.
    assert (result.unplaced, result.spilled, result.reopened) == (bare.unplaced, bare.spilled, bare.reopened)
    assert [s.full_since for s in result.shares] == [s.full_since for s in bare.shares]
    final = [s.replicas for s in result.shares]
    placed = [s.replicas for s in bare.shares]
    held = [f > p for f, p in zip(final, placed, strict=True)]
    for view, f, p, kept in zip(views, final, placed, held, strict=True):
        assert f >= p
        if kept:  # only ready replicas of a pool that has them are kept above its share
            assert f <= min(view.replicas, view.ready)
        # Above its max only while draining its ready replicas.
        assert f <= view.max_replicas or f <= min(view.replicas, view.ready)
    if not any(v.replicas > p for v, p in zip(views, placed, strict=True)):
        assert final == placed  # nothing to drain: the shares and the unplaced account for desired
        assert sum(final) + result.unplaced == desired
    ready = sum(live_ready(v) for v in views)
    lost = [ready_removed(v, f) for v, f in zip(views, final, strict=True)]
    assert ready - sum(lost) >= min(desired, ready), "ready replicas go only while others cover desired"
    if any(held):
        assert ready - sum(lost) == min(desired, ready), "and every one that is not needed goes"
    for i, gone in enumerate(lost):  # the least preferred pools give up their ready replicas first
        if gone:
            assert not any(held[i + 1 :])


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 30), pool_views(), spill_afters)
def test_full_pools_spill_and_reopen_on_time(desired: int, views: list[PoolView], spill_after: float) -> None:
    result = plan(desired, views, NOW, spill_after)
    for view, share in zip(views, result.shares, strict=True):
        if view.full_since is None:
            stuck = view.unschedulable_since is not None and NOW - view.unschedulable_since >= spill_after
            assert share.full_since == (NOW if stuck else None)
            assert (view.name in result.spilled) == stuck
            assert view.name not in result.reopened
            trusted = view.replicas > 0 and view.scheduled >= view.replicas
            assert share.spills == (view.spills + 1 if stuck else 0 if trusted else view.spills)
        else:
            # A pool whose free GPUs are not observed (free None) is retried on time alone; the wait
            # doubles with each spill in a row.
            wait = spill_after * 2 ** min(max(view.spills - 1, 0), MAX_BACKOFF_DOUBLINGS)
            again = (view.free is None or view.free > 0) and NOW - view.full_since >= wait
            assert share.full_since == (None if again else view.full_since)
            assert (view.name in result.reopened) == again
            assert view.name not in result.spilled
            assert share.spills == view.spills


# --- examples ------------------------------------------------------------------------------------------


def test_pools_fill_in_order_of_preference() -> None:
    views = [pool("a", 4, free=2), pool("b", 10, free=10)]
    assert shares(plan(5, views, NOW, SPILL)) == {"a": 2, "b": 3}
    assert shares(plan(2, views, NOW, SPILL)) == {"a": 2, "b": 0}
    # What a pool runs counts toward its room along with its free GPUs.
    views = [pool("a", 4, 3, ready=3, free=0), pool("b", 10, 2, ready=2, free=10)]
    assert shares(plan(5, views, NOW, SPILL)) == {"a": 3, "b": 2}


def test_a_node_autoscaling_pool_takes_up_to_its_max() -> None:
    views = [pool("spot", 4, free=None), pool("on-demand", 10, free=10)]
    assert shares(plan(6, views, NOW, SPILL)) == {"spot": 4, "on-demand": 2}
    assert shares(plan(3, views, NOW, SPILL)) == {"spot": 3, "on-demand": 0}


def test_what_fits_nowhere_waits_in_the_first_open_pool() -> None:
    views = [pool("a", 2, free=0), pool("b", 4, free=0)]
    result = plan(5, views, NOW, SPILL)
    assert shares(result) == {"a": 2, "b": 3}
    assert result.unplaced == 0
    # Full pools and pools at their max take none of it: it is unplaced.
    views = [pool("a", 2, 2, ready=2, free=0), pool("b", 4, 1, ready=1, free=0, full_since=NOW - 10)]
    result = plan(5, views, NOW, SPILL)
    assert shares(result) == {"a": 2, "b": 1}
    assert result.unplaced == 2


def test_a_pool_spills_once_a_replica_has_waited_the_grace_period() -> None:
    def views(waiting_since: float) -> list[PoolView]:
        # a: a cluster autoscaler's pool (its free GPUs are not observed) with two replicas waiting.
        return [
            pool("a", 4, 3, ready=1, scheduled=1, unschedulable_since=waiting_since, free=None),
            pool("b", 4, free=4),
        ]

    waiting = plan(3, views(NOW - SPILL + 1), NOW, SPILL)
    assert shares(waiting) == {"a": 3, "b": 0}  # the grace period is not over
    assert waiting.spilled == ()
    spilled = plan(3, views(NOW - SPILL), NOW, SPILL)
    assert spilled.spilled == ("a",)
    assert spilled.shares[0].full_since == NOW
    assert shares(spilled) == {"a": 1, "b": 2}  # a keeps the replica it runs; its waiting ones move


def test_waiting_replicas_move_at_once_where_free_gpus_show_that_their_pool_has_none() -> None:
    views = [
        pool("a", 4, 3, ready=1, scheduled=1, unschedulable_since=NOW, free=0),
        pool("b", 4, free=4),
    ]
    result = plan(3, views, NOW, SPILL)
    assert shares(result) == {"a": 1, "b": 2}
    assert result.spilled == ()


def test_a_full_pool_reopens_once_free_gpus_show_for_the_grace_period() -> None:
    def views(full_since: float, free: int) -> list[PoolView]:
        return [
            pool("a", 4, 1, ready=1, full_since=full_since, free=free),
            pool("b", 4, 3, ready=3, free=1),
        ]

    for since, free in [(NOW - SPILL + 1, 3), (NOW - 10 * SPILL, 0)]:
        result = plan(4, views(since, free), NOW, SPILL)
        assert result.reopened == ()
        assert result.shares[0].full_since == since
        assert shares(result) == {"a": 1, "b": 3}
    result = plan(4, views(NOW - SPILL, 3), NOW, SPILL)
    assert result.reopened == ("a",)
    assert result.shares[0].full_since is None
    # a takes its room; b's ready replicas stay until a's new ones are ready.
    assert shares(result) == {"a": 4, "b": 3}


def test_a_retired_pool_drains_once_the_new_one_is_ready() -> None:
    new = pool("new", 4, free=4)
    retired = pool("old", 0, 3, ready=3, free=0)
    assert shares(plan(3, [new, retired], NOW, SPILL)) == {"new": 3, "old": 3}
    loading = dataclasses.replace(new, replicas=3, scheduled=3, free=1)
    assert shares(plan(3, [loading, retired], NOW, SPILL)) == {"new": 3, "old": 3}
    assert shares(plan(3, [dataclasses.replace(loading, ready=2), retired], NOW, SPILL)) == {
        "new": 3,
        "old": 1,
    }
    assert shares(plan(3, [dataclasses.replace(loading, ready=3), retired], NOW, SPILL)) == {
        "new": 3,
        "old": 0,
    }
    # Its replicas that are not ready go at once.
    assert shares(plan(3, [new, dataclasses.replace(retired, ready=1)], NOW, SPILL)) == {"new": 3, "old": 1}


def test_scaling_down_removes_the_least_preferred_replicas_first() -> None:
    views = [pool("a", 3, 3, ready=3, free=0), pool("b", 3, 3, ready=3, free=0), pool("c", 3, 2, ready=2)]
    assert shares(plan(4, views, NOW, SPILL)) == {"a": 3, "b": 1, "c": 0}
    assert shares(plan(0, views, NOW, SPILL)) == {"a": 0, "b": 0, "c": 0}


def test_replicas_beyond_every_pool_are_unplaced() -> None:
    result = plan(12, [pool("a", 2, free=5), pool("b", 3, free=None)], NOW, SPILL)
    assert shares(result) == {"a": 2, "b": 3}
    assert result.unplaced == 7


def test_plan_replicas_looks_up_a_pool_by_name() -> None:
    result = plan(3, [pool("a", 2, free=2), pool("b", 2, free=2)], NOW, SPILL)
    assert (result.replicas("a"), result.replicas("b")) == (2, 1)


# --- a world in a loop ---------------------------------------------------------------------------------


@dataclass
class World:
    """One pool's nodes and the miner's pods there. `slots`: replicas its nodes fit; `shown`: whether its
    free GPUs are observed (False: a cluster autoscaler pool, free=None)."""

    name: str
    max_replicas: int
    slots: int
    shown: bool = True
    ready: int = 0
    loading: int = 0  # bound to a node, not ready yet
    pending: list[float] = field(default_factory=list)  # creation times of pods no node fits
    full_since: float | None = None

    @property
    def replicas(self) -> int:
        return self.ready + self.loading + len(self.pending)

    def view(self) -> PoolView:
        scheduled = self.ready + self.loading
        return PoolView(
            name=self.name,
            max_replicas=self.max_replicas,
            replicas=self.replicas,
            ready=self.ready,
            scheduled=scheduled,
            unschedulable_since=min(self.pending, default=None),
            free=max(0, self.slots - scheduled) if self.shown else None,
            full_since=self.full_since,
        )

    def scale(self, replicas: int, now: float) -> None:
        """A Deployment scaled to `replicas`: it removes pending pods first (the newest), then loading ones,
        then ready ones; new pods wait for the scheduler."""
        cut = max(0, self.replicas - replicas)
        while cut and self.pending:
            self.pending.pop()
            cut -= 1
        gone = min(cut, self.loading)
        self.loading -= gone
        self.ready -= cut - gone
        self.pending += [now] * max(0, replicas - self.replicas)

    def schedule(self) -> None:
        while self.pending and self.ready + self.loading < self.slots:
            self.pending.pop(0)
            self.loading += 1

    def start(self) -> None:
        self.ready += self.loading
        self.loading = 0


@dataclass
class Cluster:
    """The pools of one miner, planned every STEP seconds."""

    pools: list[World]
    spill_after: float = SPILL
    now: float = NOW

    def run(self, desired: int, steps: int) -> list[Plan]:
        """One plan per step: pods bound in the previous step become ready, the plan is applied, the
        scheduler binds what fits. Checks make-before-break at every step."""
        plans = []
        for _ in range(steps):
            self.now += STEP
            for world in self.pools:
                world.start()
            before = sum(world.ready for world in self.pools)
            result = plan(desired, [world.view() for world in self.pools], self.now, self.spill_after)
            for world, share in zip(self.pools, result.shares, strict=True):
                world.full_since = share.full_since
                world.scale(share.replicas, self.now)
                world.schedule()
            assert sum(world.ready for world in self.pools) >= min(desired, before), self.pools
            plans.append(result)
        return plans


def test_replicas_move_back_to_the_preferred_pool_make_before_break() -> None:
    preferred, fallback = World("a", 4, slots=0), World("b", 8, slots=8)
    cluster = Cluster([preferred, fallback])
    cluster.run(4, 5)
    assert (preferred.ready, fallback.ready) == (0, 4)
    preferred.slots = 4  # GPUs free up in the preferred pool
    cluster.run(4, 1)
    assert (preferred.loading, fallback.ready) == (4, 4)  # the new ones start first
    cluster.run(4, 1)
    assert (preferred.ready, fallback.replicas) == (4, 0)  # the old ones drain once they are ready


@settings(max_examples=150, deadline=None)
@given(
    st.integers(0, 14),
    st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6), st.integers(0, 6)), min_size=1, max_size=3),
    spill_afters.filter(lambda s: s <= 60),
)
def test_a_static_world_converges_to_the_preferred_placement(
    desired: int, shapes: list[tuple[int, int, int]], spill_after: float
) -> None:
    """Pools of fixed size, some replicas already running in any of them (within its max): the plans
    converge to each pool, in order, taking what it fits, the rest unplaced, nothing pending, and never
    fewer ready than before."""
    pools = [
        World(f"pool-{i}", max_replicas, slots, ready=min(running, slots, max_replicas))
        for i, (max_replicas, slots, running) in enumerate(shapes)
    ]
    plans = Cluster(pools, spill_after).run(desired, 40)
    left, expected = desired, []
    for world in pools:
        take = min(left, world.max_replicas, world.slots)
        expected.append(take)
        left -= take
    assert [world.ready for world in pools] == expected
    assert [world.replicas for world in pools] == expected
    assert plans[-1].unplaced == left


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6), st.booleans()), min_size=1, max_size=3),
    st.lists(st.tuples(st.integers(0, 12), st.lists(st.integers(0, 6), min_size=3, max_size=3)), max_size=30),
    spill_afters,
)
def test_a_changing_world_keeps_every_step_safe(
    shapes: list[tuple[int, int, bool]], steps: list[tuple[int, list[int]]], spill_after: float
) -> None:
    """Desired and the pools' sizes change at every step: each plan keeps enough ready replicas (checked
    in Cluster.run), grows no full pool, and grows no pool past its max."""
    pools = [World(f"pool-{i}", m, slots, shown) for i, (m, slots, shown) in enumerate(shapes)]
    cluster = Cluster(pools, spill_after)
    for desired, sizes in steps:
        for world, size in zip(pools, sizes, strict=False):
            world.slots = size
        before = [(world.full_since, world.view()) for world in pools]
        [result] = cluster.run(desired, 1)
        for world, share, (full, view) in zip(pools, result.shares, before, strict=True):
            if share.full_since is not None:
                assert world.replicas <= max(view.scheduled, view.replicas)
            if world.replicas > view.replicas:
                assert world.replicas <= world.max_replicas
            assert share.full_since in (None, full, cluster.now)


def test_a_node_autoscaling_pool_spills_while_the_autoscaler_cannot_add_nodes() -> None:
    spot, on_demand = World("spot", 4, slots=2, shown=False), World("on-demand", 8, slots=8)
    cluster = Cluster([spot, on_demand], spill_after=60.0)
    cluster.run(4, 3)
    assert (spot.ready, len(spot.pending), on_demand.replicas) == (2, 2, 0)  # waiting for new nodes
    plans = cluster.run(4, 6)
    assert [p.spilled for p in plans if p.spilled] == [("spot",)]
    # The two that waited run on demand; spot is retried (new pods there) once it has been full as long.
    assert (spot.ready, on_demand.ready) == (2, 2)


def test_a_full_node_autoscaling_pool_is_retried() -> None:
    spot, on_demand = World("spot", 4, slots=2, shown=False), World("on-demand", 8, slots=8)
    cluster = Cluster([spot, on_demand], spill_after=60.0)
    cluster.run(4, 13)
    assert spot.full_since is not None
    spot.slots = 4  # the autoscaler got its nodes
    cluster.run(4, 40)
    assert (spot.ready, on_demand.replicas) == (4, 0)


def test_a_pool_found_full_again_and_again_is_retried_ever_more_rarely() -> None:
    def full(spills: int, full_for: float) -> PoolView:
        return replace(pool("a", 4, free=4, full_since=NOW - full_for), spills=spills)

    for spills in range(1, 10):
        wait = SPILL * 2 ** min(spills - 1, MAX_BACKOFF_DOUBLINGS)
        assert plan(2, [full(spills, wait - 1)], NOW, SPILL).reopened == ()
        reopened = plan(2, [full(spills, wait)], NOW, SPILL)
        assert reopened.reopened == ("a",)
        assert reopened.shares[0].spills == spills  # remembered until the pool proves itself
    # Each spill in a row counts; a pool that runs every replica it was given is trusted again.
    stuck = replace(pool("a", 4, 2, scheduled=0, unschedulable_since=NOW - SPILL), spills=3)
    assert plan(2, [stuck], NOW, SPILL).shares[0].spills == 4
    running = replace(pool("a", 4, 2, ready=2), spills=3)
    assert plan(2, [running], NOW, SPILL).shares[0].spills == 0
    waiting = replace(pool("a", 4, 2, scheduled=1, unschedulable_since=NOW - 1), spills=3)
    assert plan(2, [waiting], NOW, SPILL).shares[0].spills == 3


def test_a_cut_still_in_flight_is_not_counted_as_spare_twice() -> None:
    # spot was just cut from 7 to 6; its Deployment's status still reports 7 ready.
    views = [
        pool("h100", 8, 4, ready=4, free=0),
        pool("a100", 8, 3, ready=3, free=0),
        pool("spot", 8, 6, ready=7),
    ]
    result = plan(7, views, NOW, SPILL)
    assert shares(result) == {"h100": 4, "a100": 3, "spot": 0}
    kept_ready = sum(
        min(v.ready, v.replicas) - ready_removed(v, s.replicas)
        for v, s in zip(views, result.shares, strict=True)
    )
    assert kept_ready == 7


def test_shrinking_starts_no_replica_and_moves_back_only_after() -> None:
    views = [pool("h100", 4, 1, ready=1, free=3), pool("spot", 8, 3, ready=3, free=5)]
    assert shares(plan(2, views, NOW, SPILL)) == {"h100": 1, "spot": 1}
    # Once it runs what it wants, a preferred pool with room takes the replicas back (make before break).
    views = [pool("h100", 4, 1, ready=1, free=3), pool("spot", 8, 1, ready=1, free=7)]
    assert shares(plan(2, views, NOW, SPILL)) == {"h100": 2, "spot": 1}
