"""Which pool runs how many replicas: a pure function of the desired count and what each pool shows now.

1. Full pools. A pool whose replica has been unschedulable for `spillAfterSeconds` becomes full: it keeps
   the replicas it runs and gets no more. It takes replicas again once free GPUs show there (or, when they
   are not observed, on time alone) and it has been full for as long, doubled for each time in a row it
   was found full (up to 32 times): a pool that keeps refusing pods despite free GPUs is retried ever more
   rarely, and trusted again once it runs all its replicas.
2. Room. A pool's room is what it runs plus what fits on its free GPUs, within its maxReplicas; a pool whose
   nodes come from a cluster autoscaler has room up to its maxReplicas (its pending pods are what make the
   autoscaler add nodes).
3. Fill in order of preference. What no pool has room for goes to the first pool that is not full and is
   under its maxReplicas, where it waits (and spills after the grace period); what is left is unplaced.
   While the miner shrinks (fewer desired than it runs), no pool starts a replica: the least preferred
   pools give theirs up, and replicas move back to preferred pools only once the shrinking is over.
4. Make before break. A pool above its share gives up its not-ready replicas at once, but its ready ones
   only while the ready replicas elsewhere cover the desired count: a replica moving back to a preferred
   pool starts there first, and the old one drains only once the new one is ready. A pool counts at most
   as many ready replicas as it has replicas: a Deployment's status lags a cut, and the pod being removed
   must not be counted as spare a second time.
"""

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class PoolView:
    """One pool as observed now. `free`: further replicas that fit on its free GPUs (None: not observed)."""

    name: str
    max_replicas: int
    replicas: int  # the Deployment's replicas now
    ready: int
    scheduled: int  # replicas bound to a node
    unschedulable_since: float | None  # the oldest unschedulable replica's time (epoch seconds)
    free: int | None
    full_since: float | None
    spills: int = 0  # times in a row the pool was found full


@dataclass(frozen=True)
class PoolShare:
    name: str
    replicas: int
    full_since: float | None
    spills: int = 0


@dataclass(frozen=True)
class Plan:
    shares: tuple[PoolShare, ...]
    unplaced: int
    spilled: tuple[str, ...]  # pools found full by this plan
    reopened: tuple[str, ...]  # full pools that take replicas again

    def replicas(self, name: str) -> int:
        return next(s.replicas for s in self.shares if s.name == name)


MAX_BACKOFF_DOUBLINGS = 5


def _full_state(pool: PoolView, now: float, spill_after: float) -> tuple[float | None, int]:
    """The pool's (full since, spills in a row) after this round."""
    if pool.full_since is None:
        if pool.unschedulable_since is not None and now - pool.unschedulable_since >= spill_after:
            return now, pool.spills + 1
        trusted = pool.replicas > 0 and pool.scheduled >= pool.replicas
        return None, 0 if trusted else pool.spills
    wait = spill_after * 2 ** min(max(pool.spills - 1, 0), MAX_BACKOFF_DOUBLINGS)
    # A pool whose free GPUs are not observed (its nodes come from a cluster autoscaler) is retried on time.
    room_again = (pool.free is None or pool.free > 0) and now - pool.full_since >= wait
    return (None if room_again else pool.full_since), pool.spills


def _room(pool: PoolView, full: bool) -> int:
    if full:
        return min(pool.max_replicas, pool.scheduled)
    if pool.free is None:
        return pool.max_replicas
    return min(pool.max_replicas, pool.scheduled + pool.free)


def _fill(desired: int, pools: Sequence[PoolView], full: Sequence[bool]) -> tuple[list[int], int]:
    shares = []
    remaining = desired
    for pool, is_full in zip(pools, full, strict=True):
        take = min(remaining, _room(pool, is_full))
        shares.append(take)
        remaining -= take
    for i, (pool, is_full) in enumerate(zip(pools, full, strict=True)):
        if remaining and not is_full and shares[i] < pool.max_replicas:
            extra = min(remaining, pool.max_replicas - shares[i])
            shares[i] += extra
            remaining -= extra
    return shares, remaining


def _shrink(desired: int, pools: Sequence[PoolView], full: Sequence[bool]) -> list[int] | None:
    """Shares that only remove replicas, the least preferred first; None when the pools cannot keep
    `desired` without starting some (a pool full or retired lost more than the shrink removes)."""
    kept = [min(p.replicas, _room(p, is_full)) for p, is_full in zip(pools, full, strict=True)]
    excess = sum(kept) - desired
    if excess < 0:
        return None
    for i in reversed(range(len(pools))):
        cut = min(excess, kept[i])
        kept[i] -= cut
        excess -= cut
    return kept


def _make_before_break(desired: int, pools: Sequence[PoolView], shares: list[int]) -> list[int]:
    live_ready = [min(p.ready, p.replicas) for p in pools]
    spare_ready = max(0, sum(live_ready) - desired)
    result = list(shares)
    # The least preferred pools give up replicas first.
    for i in reversed(range(len(pools))):
        pool = pools[i]
        cut = pool.replicas - shares[i]
        if cut <= 0:
            continue
        not_ready = min(cut, pool.replicas - live_ready[i])
        ready = min(cut - not_ready, spare_ready)
        spare_ready -= ready
        result[i] = pool.replicas - not_ready - ready
    return result


def plan(desired: int, pools: Sequence[PoolView], now: float, spill_after: float) -> Plan:
    """Each pool's replicas for `desired` in all; `pools` most preferred first (retired pools last, with
    maxReplicas 0)."""
    states = [_full_state(pool, now, spill_after) for pool in pools]
    full_since = [since for since, _ in states]
    full = [since is not None for since in full_since]
    shrunk = _shrink(desired, pools, full) if desired < sum(p.replicas for p in pools) else None
    shares, unplaced = (shrunk, 0) if shrunk is not None else _fill(desired, pools, full)
    final = _make_before_break(desired, pools, shares)
    return Plan(
        shares=tuple(
            PoolShare(pool.name, replicas, since, spills)
            for pool, replicas, (since, spills) in zip(pools, final, states, strict=True)
        ),
        unplaced=unplaced,
        spilled=tuple(
            p.name for p, s in zip(pools, full_since, strict=True) if p.full_since is None and s is not None
        ),
        reopened=tuple(
            p.name for p, s in zip(pools, full_since, strict=True) if p.full_since is not None and s is None
        ),
    )
