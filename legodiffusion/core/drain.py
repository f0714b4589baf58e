"""How fast the cluster really drains profiled work when it is saturated.

Admission spreads the work ordered before a request over the workers at its profiled batch-1
cost. That figure is wrong both ways: a saturated cluster also loads models, attaches LoRAs and
waits for holders (slower than the profile), and it batches a burst of one workflow (faster).
:class:`DrainRate` measures the ratio that covers all of these at once: profiled work completed
per worker-second while no worker was idle, decayed with a time constant, and starting from the
profile's own answer (1.0) until it has seen enough saturated time to say otherwise.

What a drain rate cannot see (a request's own chain of steps, work spread unevenly over the
holders of a model) still makes some admitted requests late. :class:`LateGuard` closes that loop
on the promise itself: each admitted request that finishes late raises a margin on the queue
estimate, each one on time lowers it, so that in steady state a ``target`` share is late.
"""

from __future__ import annotations

import math


class DrainRate:
    """Profiled work done per saturated worker-second, decayed over ``window_s``.

    The coordinator calls :meth:`credit` for each node's profiled work as it completes and
    :meth:`tick` at the end of every event with whether the cluster is saturated (no idle
    worker) from then on; :attr:`factor` is the measured ratio, pulled towards 1.0 by a prior of
    ``prior_s`` saturated seconds per worker and clamped to [``low``, ``high``]."""

    __slots__ = ("window_s", "prior_s", "low", "high", "_done", "_busy", "_new", "_t", "_saturated", "_workers", "factor")

    def __init__(self, window_s: float = 20.0, prior_s: float = 2.0, low: float = 0.25, high: float = 4.0) -> None:
        if window_s <= 0 or prior_s <= 0 or not 0 < low <= 1.0 <= high:
            raise ValueError("DrainRate needs window_s > 0, prior_s > 0 and 0 < low <= 1 <= high")
        self.window_s, self.prior_s, self.low, self.high = window_s, prior_s, low, high
        self._done = 0.0  # decayed profiled work completed while saturated
        self._busy = 0.0  # decayed worker-seconds spent saturated
        self._new = 0.0  # work credited since the last tick
        self._t = 0.0
        self._saturated = False
        self._workers = 0
        #: profiled seconds of work one worker completes per second when all are busy
        self.factor = 1.0

    def credit(self, work_s: float) -> None:
        """A node's profiled work completed (counted only if the cluster was saturated)."""
        if self._saturated:
            self._new += work_s

    def tick(self, now: float, saturated: bool, workers: int) -> None:
        """An event ended at ``now``: account the interval since the last one, then remember
        whether the cluster is saturated with ``workers`` taking work from now on."""
        dt = now - self._t
        if dt > 0 or self._new:
            decay = math.exp(-dt / self.window_s) if dt > 0 else 1.0
            self._done = self._done * decay + self._new
            self._busy = self._busy * decay + (self._workers * dt if self._saturated else 0.0)
            self._new = 0.0
            self._t = max(self._t, now)
            prior = self.prior_s * max(1, self._workers)
            self.factor = min(self.high, max(self.low, (self._done + prior) / (self._busy + prior)))
        self._saturated = saturated and workers > 0
        self._workers = workers


class LateGuard:
    """A margin (>= 1) on admission's queue estimate, steered by outcomes: ``theta += step *
    (late - target)`` per finished admitted request with a deadline, margin = exp(theta), capped
    at ``high``. It only scales the wait for work ahead: an idle cluster admits whatever fits."""

    __slots__ = ("target", "step", "high", "_theta", "margin")

    def __init__(self, target: float = 0.05, step: float = 0.05, high: float = 4.0) -> None:
        if not 0 < target < 1 or step <= 0 or high < 1:
            raise ValueError("LateGuard needs 0 < target < 1, step > 0 and high >= 1")
        self.target, self.step, self.high = target, step, high
        self._theta = 0.0
        self.margin = 1.0

    def finished(self, late: bool) -> None:
        """An admitted request with a deadline succeeded, ``late`` or not."""
        self._theta = min(math.log(self.high), max(0.0, self._theta + self.step * ((1.0 if late else 0.0) - self.target)))
        self.margin = math.exp(self._theta)
