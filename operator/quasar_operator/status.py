"""A resource's status from what the reconciler saw: pure, so every combination is tested without a cluster.

Four conditions, as Kubernetes controllers report them (metav1.Condition):

- Reconciled: the objects were applied for this generation (False with the reason when they could not be).
- Degraded: something needs a person (an invalid spec, a missing Secret, an API error).
- Progressing: a rollout or an address is still on its way.
- Ready: every desired pod is ready.

A condition keeps its lastTransitionTime while its status stays the same, so `kubectl wait` and alerts see
when it really changed.
"""

import datetime
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

Obj = dict[str, Any]
Status = Literal["True", "False", "Unknown"]
CONDITION_TYPES = ("Ready", "Progressing", "Degraded", "Reconciled")


def rfc3339(epoch: float) -> str:
    """A time as the status writes it (seconds, UTC)."""
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def epoch(value: str | None) -> float | None:
    """A Kubernetes timestamp (RFC 3339) as seconds since the epoch; None for none."""
    return None if not value else datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


@dataclass(frozen=True)
class Failure:
    """Why a reconcile stopped: a CamelCase reason and a message that names the field or object."""

    reason: str
    message: str


@dataclass(frozen=True)
class Workload:
    """The Deployment's or StatefulSet's counts as the API server reported them."""

    desired: int
    replicas: int
    ready: int
    updated: int

    @classmethod
    def from_object(cls, obj: Obj | None, desired: int) -> "Workload":
        status: Obj = (obj or {}).get("status") or {}
        return cls(
            desired=desired,
            replicas=int(status.get("replicas") or 0),
            ready=int(status.get("readyReplicas") or 0),
            updated=int(status.get("updatedReplicas") or 0),
        )

    @classmethod
    def total(cls, objs: Sequence[Obj], desired: int) -> "Workload":
        """Several Deployments (one per pool) as one workload."""
        parts = [cls.from_object(obj, 0) for obj in objs]
        return cls(
            desired=desired,
            replicas=sum(p.replicas for p in parts),
            ready=sum(p.ready for p in parts),
            updated=sum(p.updated for p in parts),
        )

    @property
    def rolled_out(self) -> bool:
        # Old pods still running (replicas above desired) mean the rollout has not finished.
        return self.ready >= self.desired and self.updated >= self.desired and self.replicas <= self.desired


def condition(
    type_: str,
    status: Status,
    reason: str,
    message: str,
    *,
    generation: int | None,
    previous: Sequence[Obj],
    now: str,
) -> Obj:
    before = next((c for c in previous if c.get("type") == type_), None)
    unchanged = before is not None and before.get("status") == status and before.get("lastTransitionTime")
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": before["lastTransitionTime"] if unchanged and before else now,
        "observedGeneration": generation,
    }


def compute(
    *,
    generation: int | None,
    previous: Sequence[Obj],
    now: str,
    failure: Failure | None = None,
    workload: Workload | None = None,
    waiting: Failure | None = None,
) -> Obj:
    """The conditions and counts (the caller adds kind-specific fields such as the endpoint).

    `failure` stops the reconcile (Degraded); `waiting` is a normal wait (an address not assigned yet):
    the objects that could be applied were, and the rest follows.
    """
    states: dict[str, tuple[Status, str, str]]
    if failure is not None:
        states = {
            "Reconciled": ("False", failure.reason, failure.message),
            "Degraded": ("True", failure.reason, failure.message),
            "Progressing": ("False", failure.reason, "stopped until the problem is fixed"),
        }
    elif waiting is not None:
        states = {
            "Reconciled": ("True", "Applied", "the objects that can exist yet are applied"),
            "Degraded": ("False", "AsExpected", ""),
            "Progressing": ("True", waiting.reason, waiting.message),
        }
    else:
        states = {
            "Reconciled": ("True", "Applied", "every object is applied"),
            "Degraded": ("False", "AsExpected", ""),
        }
        if workload is not None and workload.rolled_out:
            states["Progressing"] = ("False", "RolloutComplete", "every replica runs the current spec")
        else:
            states["Progressing"] = ("True", "RollingOut", "waiting for the replicas to be updated and ready")
    if workload is not None:
        ready: Status = "True" if workload.ready >= workload.desired else "False"
        reason = "ReplicasReady" if ready == "True" else "ReplicasNotReady"
        states["Ready"] = (ready, reason, f"{workload.ready}/{workload.desired} replicas ready")
    else:
        cause = failure or waiting
        states["Ready"] = ("False", cause.reason if cause else "NotObserved", "no workload observed yet")
    result: Obj = {
        "observedGeneration": generation,
        "conditions": [
            condition(t, *states[t], generation=generation, previous=previous, now=now)
            for t in CONDITION_TYPES
        ],
    }
    if workload is not None:
        result["replicas"] = workload.replicas
        result["readyReplicas"] = workload.ready
    return result
