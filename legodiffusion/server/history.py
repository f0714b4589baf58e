"""What finished runs looked like, for the dashboard: per workflow a bounded time series of
latency and deadline attainment (per tenant usage is :meth:`ServerState.tenant_usage`). Fed as each run ends
(:meth:`~legodiffusion.server.state.ServerState._keep`)."""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass

from legodiffusion.stats import percentile


@dataclass(frozen=True, slots=True)
class Point:
    t_s: float  # when the run ended, Unix seconds
    latency_s: float
    status: str
    met: bool | None  # finished in time; None without a deadline

    def to_json(self) -> dict:
        return {"t_s": round(self.t_s, 3), "latency_s": round(self.latency_s, 4), "status": self.status, "met": self.met}


class History:
    """Bounded: the last ``max_points`` runs of each workflow, and the ``max_workflows`` workflows
    that finished a run most recently."""

    def __init__(self, max_points: int = 500, max_workflows: int = 64) -> None:
        self.max_points, self.max_workflows = max_points, max_workflows
        self.points: OrderedDict[str, deque[Point]] = OrderedDict()

    def add(self, workflow: str, status: str, latency_s: float, slo_s: float | None, now_s: float) -> None:
        met = None if slo_s is None else status == "succeeded" and latency_s <= slo_s
        series = self.points.get(workflow)
        if series is None:
            series = self.points[workflow] = deque(maxlen=self.max_points)
        self.points.move_to_end(workflow)
        series.append(Point(now_s, latency_s, status, met))
        while len(self.points) > self.max_workflows:
            self.points.popitem(last=False)

    def workflows_json(self) -> dict[str, dict]:
        """Per workflow: its points, oldest first, and a summary of them (latency of the runs that
        succeeded; attainment over those with a deadline, None when none had one)."""
        out = {}
        for workflow, series in self.points.items():
            ok = [p.latency_s for p in series if p.status == "succeeded"]
            timed = [p.met for p in series if p.met is not None]
            out[workflow] = {
                "points": [p.to_json() for p in series],
                "runs": len(series),
                "succeeded": len(ok),
                "p50_s": round(percentile(ok, 50), 4) if ok else None,
                "p95_s": round(percentile(ok, 95), 4) if ok else None,
                "slo_runs": len(timed),
                "slo_attainment": round(sum(timed) / len(timed), 4) if timed else None,
            }
        return out
