"""Per-model replica targets: how many workers should keep each model resident.

A pure policy over observed demand and profiles, in the spirit of Ray Serve's autoscaling policy:
demand in seconds of work per second for a model, divided by the work one replica can take
(``target_utilisation``), gives a desired count, clamped to [min, max]; it is applied only after
it has held for ``upscale_delay_s`` (up) or ``downscale_delay_s`` (down). Cold models may scale to
zero. Backends act on the targets (the Ray backend will add or remove actors and request
resources); decisions are kept for logs and metrics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class AutoscaleConfig:
    min_replicas: int = 0
    """Replicas a model keeps even when cold (0: it may scale to zero)."""
    max_replicas: int = 8
    """Upper bound per model."""
    target_utilisation: float = 0.7
    """Share of a replica's time the policy aims to fill."""
    upscale_delay_s: float = 5.0
    """How long a higher desired count must hold before the target rises."""
    downscale_delay_s: float = 30.0
    """How long a lower desired count must hold before the target falls."""
    window_s: float = 10.0
    """Demand is measured over this sliding window."""


@dataclass
class Decision:
    at_s: float
    model: str
    old: int
    new: int
    demand_s_per_s: float


@dataclass
class ReplicaAutoscaler:
    config: AutoscaleConfig = field(default_factory=AutoscaleConfig)
    targets: dict[str, int] = field(default_factory=dict)
    decisions: list[Decision] = field(default_factory=list)
    _work: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    _pending: dict[str, tuple[int, float]] = field(default_factory=dict)  # model -> (desired, since)

    def observe(self, model: str, now: float, work_s: float) -> None:
        """``work_s`` seconds of profiled work for ``model`` arrived at ``now``."""
        self._work.setdefault(model, []).append((now, work_s))

    def demand(self, model: str, now: float) -> float:
        events = [e for e in self._work.get(model, []) if e[0] > now - self.config.window_s]
        self._work[model] = events
        return sum(w for _, w in events) / self.config.window_s

    def desired(self, model: str, now: float) -> int:
        c = self.config
        want = math.ceil(self.demand(model, now) / c.target_utilisation) if self._work.get(model) else 0
        return max(c.min_replicas, min(c.max_replicas, want))

    def update(self, now: float) -> dict[str, int]:
        """Re-evaluate every known model at ``now``; returns the current targets."""
        for model in sorted(set(self._work) | set(self.targets)):
            want = self.desired(model, now)
            have = self.targets.setdefault(model, self.config.min_replicas)
            if want == have:
                self._pending.pop(model, None)
                continue
            prev = self._pending.get(model)
            if prev is None or (prev[0] > have) != (want > have):
                self._pending[model] = (want, now)  # a new direction starts its delay
                continue
            self._pending[model] = (want, prev[1])
            delay = self.config.upscale_delay_s if want > have else self.config.downscale_delay_s
            if now - prev[1] >= delay:
                self.targets[model] = want
                self.decisions.append(Decision(now, model, have, want, self.demand(model, now)))
                self._pending.pop(model, None)
        return dict(self.targets)
