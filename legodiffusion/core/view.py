"""What policies see of the coordinator (:class:`CoordinatorView`, the
:class:`~legodiffusion.core.policy.SchedulerView` the coordinator hands to its policy)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from legodiffusion.core.coordinator import Coordinator


class CoordinatorView:
    """What policies see of the coordinator: its ready queues, workers and worker indices, cost
    model and statistics, and a few queries. The objects are the coordinator's own, not copies
    (a plan runs on every event); policies read them and never change them."""

    __slots__ = (
        "_pool",
        "queues",
        "classes",
        "workers",
        "eligible",
        "idle",
        "idle_set",
        "calm",
        "holders",
        "cost",
        "queue_threshold_s",
        "stats",
        "batch_limits",
        "locality",
        "backlog",
        "held_head",
        "demand",
        "top_class",
        "kept_for",
        "kept_urgent",
        "_drain",
        "_late",
    )

    def __init__(self, coord: Coordinator) -> None:
        pool = self._pool = coord.pool
        self.queues, self.classes = coord.queues, coord.classes
        self.workers, self.eligible, self.idle, self.idle_set = pool.workers, pool.eligible, pool.idle, pool.idle_set
        self.calm, self.holders = pool.calm, pool.holders
        self.cost, self.queue_threshold_s, self.stats = coord.cost, coord.queue_threshold_s, coord.stats
        self.batch_limits, self.locality = coord.batch_limits, coord.locality
        self.backlog, self.held_head = coord.backlog, coord.held_head
        self.demand = coord.demand
        self.top_class = coord.fair.top_class
        self.kept_for = coord.kept_for
        self.kept_urgent = coord.kept_urgent
        self._drain, self._late = coord.drain, coord.late_guards

    @property
    def free_slots(self) -> int:
        return self._pool.free_slots

    @property
    def active(self) -> int:
        """Live workers taking work."""
        return self._pool.active

    @property
    def drain_factor(self) -> float:
        """Profiled work the cluster completes per worker-second when saturated, as measured
        (:class:`~legodiffusion.core.drain.DrainRate`)."""
        return self._drain.factor

    def late_margin(self, rank: int) -> float:
        """Admission's margin on its queue estimate for priority class ``rank``, raised by that
        class's admitted requests that finished late (:class:`~legodiffusion.core.drain.LateGuard`;
        per class, since a lower class runs late by design while a higher one is served)."""
        guard = self._late.get(rank)
        return guard.margin if guard is not None else 1.0
