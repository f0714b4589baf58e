"""The monolithic baseline: whole-pipeline replicas, as a competent operator would deploy them.

A replica is one GPU holding whole pipelines (its own copy of every model of each workflow it
serves) and running one request at a time to completion, as a diffusers pipeline call does: the
guidance branches of a step batch inside the call, and requests never interleave step by step.
Each workflow has one FCFS queue; a request starts on the first free replica of its workflow.

Allocation (:func:`allocate`): GPUs in proportion to demand x solo work, whole GPUs by share and
the fractional remainders bin-packed onto shared GPUs by memory and load, so small pipelines
share a GPU, no GPU idles and no workflow is starved. ``bundle-static`` keeps it; ``bundle-auto``
re-allocates on a timer from the observed work, only when that lowers the busiest replica's
load by a margin, moving the fewest GPUs (a moved GPU pays the real load of its new pipelines).
"""

from __future__ import annotations

import math

from legodiffusion.core.policy import MicroServingPolicy
from legodiffusion.core.view import SchedulerView

Bins = list  # per GPU: the set of workflows it serves


def allocate(weights: dict[str, float], n_workers: int, memory: dict[str, int] | None = None, capacity: int | None = None) -> Bins:
    """Workflows per GPU in proportion to ``weights`` (demand x work).

    Each workflow gets ``floor(share)`` GPUs of its own; the fractional remainders, largest first,
    fill the remaining GPUs one GPU of load at a time, a remainder that overflows a GPU carrying
    on to the next (McNaughton's wrap-around rule), and a GPU taking only pipelines (``memory``
    bytes each) that fit its ``capacity`` together. When memory runs out before the GPUs do, a
    workflow with no GPU goes to the least-loaded GPU whose memory holds it, else beside the
    workflow with the most GPUs of its own, else to the least-loaded GPU (it will swap). GPUs left empty go, one at a time, to the workflow with the highest load
    per GPU."""
    names = sorted((k for k in weights if weights[k] > 0), key=lambda k: (-weights[k], k))
    if not names or n_workers <= 0:
        return [set() for _ in range(max(0, n_workers))]
    mem = memory or {}
    total = sum(weights[k] for k in names)
    share = {k: n_workers * weights[k] / total for k in names}
    own = {k: int(share[k] + 1e-9) for k in names}
    bins: Bins = [{k} for k in names for _ in range(own[k])]
    free = n_workers - len(bins)
    left = {k: share[k] - own[k] for k in names if share[k] - own[k] > 1e-6}
    # McNaughton's wrap-around over the remainders, largest first: fill a GPU to one GPU of load,
    # carrying what does not fit into the next one (a workflow then has a replica on both)
    shared: list[list] = []  # [workflows, load, bytes]
    cur: list = [set(), 0.0, 0]
    queue = sorted(left, key=lambda k: (-left[k], k))
    while queue:
        k = next((k for k in queue if k in cur[0] or capacity is None or cur[2] + mem.get(k, 0) <= capacity), None)
        if k is None or cur[1] >= 1.0 - 1e-6:
            if cur[0]:
                shared.append(cur)
            cur = [set(), 0.0, 0]
            if len(shared) >= free:
                break
            continue
        take = min(left[k], 1.0 - cur[1])
        if k not in cur[0]:
            cur[0].add(k)
            cur[2] += mem.get(k, 0)
        cur[1] += take
        left[k] -= take
        if left[k] <= 1e-6:
            queue.remove(k)
    if cur[0] and len(shared) < free:
        shared.append(cur)
    for k in queue:  # no GPU left: the least-loaded one whose memory holds it
        if own[k] > 0:
            continue
        fitting = [b for b in shared if capacity is None or b[2] + mem.get(k, 0) <= capacity]
        if fitting:
            b = min(fitting, key=lambda b: b[1])
            b[0].add(k)
            b[1] += left[k]
            b[2] += mem.get(k, 0)
            continue
        # else beside the pipeline of the workflow with the most GPUs of its own, if it fits there
        single = [b for b in bins if len(b) == 1 and (capacity is None or mem.get(next(iter(b)), 0) + mem.get(k, 0) <= capacity)]
        if single:
            max(single, key=lambda b: own[next(iter(b))]).add(k)
        elif shared:  # nowhere: it swaps with what is there
            min(shared, key=lambda b: b[1])[0].add(k)
    bins += [b[0] for b in shared]
    while len(bins) < n_workers:  # D'Hondt: the busiest workflow per GPU gets another
        served = {k: sum(1 / len(b) for b in bins if k in b) for k in names}
        k = max(names, key=lambda k: (share[k] / max(served[k], 1e-9), k))
        bins.append({k})
    return bins


def busiest_load(bins: Bins, weights: dict[str, float]) -> float:
    """Load of the busiest workflow per GPU it is served by (a GPU's time split evenly between
    its workflows): what re-allocation tries to lower."""
    total = sum(weights.values()) or 1.0
    n = len(bins)
    worst = 0.0
    for k, w in weights.items():
        if w <= 0:
            continue
        served = sum(1 / len(b) for b in bins if k in b)
        worst = max(worst, math.inf if served == 0 else n * w / total / served)
    return worst


def sticky(old: Bins, new: Bins) -> Bins:
    """``new``'s GPU contents laid onto GPU ids so that the fewest GPUs change what they serve."""
    out: list[set | None] = [None] * len(old)
    pending = sorted(new, key=lambda b: (-len(b), sorted(b)))
    for exact in (True, False):
        rest = []
        for b in pending:
            free = [i for i in range(len(old)) if out[i] is None]
            same = [i for i in free if old[i] == b] if exact else sorted(free, key=lambda i: (-len(old[i] & b), i))
            if same:
                out[same[0]] = set(b)
            else:
                rest.append(b)
        pending = rest
    return [b if b is not None else set() for b in out]


class BundlePolicy(MicroServingPolicy):
    """Whole-pipeline replicas: see the module docstring. ``replicas`` fixes the GPUs per
    workflow; with ``demand`` (workflow -> expected work share) they are allocated by
    :func:`allocate`; with ``rebalance_s`` (bundle-auto) re-allocated on a timer. Without either,
    workers are dealt to workflows in order of first appearance."""

    isolate_workflows = True
    gated = True

    def __init__(
        self,
        replicas: dict[str, list[int]] | None = None,
        name: str = "bundle",
        demand: dict[str, float] | None = None,
        n_workers: int | None = None,
        rebalance_s: float | None = None,
        memory: dict[str, int] | None = None,
        capacity: int | None = None,
        margin: float = 0.2,
        min_window: int = 50,
        blend: float = 0.5,
    ) -> None:
        super().__init__(name=name, ordering="fcfs", admission=False, adaptive=False, batch_sizing=False, prefetch=False)
        self.isolate_workflows = True
        self._memory, self._capacity = memory, capacity
        self._weights = dict(demand or {})
        self.bins: Bins = []
        if replicas:
            n = max((w for ws in replicas.values() for w in ws), default=-1) + 1
            self.bins = [{k for k, ws in replicas.items() if i in ws} for i in range(n)]
        elif demand and n_workers:
            self.bins = allocate(demand, n_workers, memory, capacity)
        self.initial = [set(b) for b in self.bins]
        self.tick_s = rebalance_s
        self.margin = margin
        self.min_window = min_window
        self.blend = blend
        self._seen: dict[str, float] = {}
        self._seen_count = 0
        self._order: list[str] = []
        self.decisions: list[tuple[float, int]] = []  # (time, GPUs whose pipelines changed)

    def describe(self) -> str:
        """The deployment, as printed beside its figures."""
        groups: dict[str, int] = {}
        for b in self.initial:
            label = "+".join(sorted(b)) or "(idle)"
            groups[label] = groups.get(label, 0) + 1
        kind = f"bundle-auto (re-allocation every {self.tick_s:g} s)" if self.tick_s else "bundle-static"
        gpus = ", ".join(f"{label} x{n}" if n > 1 else label for label, n in sorted(groups.items(), key=lambda kv: (-kv[1], kv[0])))
        moved = f"; {len(self.decisions)} re-allocations moved {sum(m for _, m in self.decisions)} GPUs" if self.tick_s else ""
        return f"{kind}: one request at a time per GPU, one FCFS queue per workflow; GPUs: {gpus}{moved}"

    def replicas_of(self, workflow: str, n_workers: int) -> list[int]:
        if self.bins:
            return [i for i, b in enumerate(self.bins) if workflow in b and i < n_workers]
        if workflow not in self._order:
            self._order.append(workflow)
        k, groups = self._order.index(workflow), len(self._order)
        if n_workers >= groups:
            return [w for w in range(n_workers) if w % groups == k % groups]
        return [k % n_workers]

    def _free(self, view, wid: int) -> bool:
        w = view.workers[wid]
        return w.alive and not w.draining and w.pinned == 0

    def pin(self, view, req):
        free = [w for w in self.replicas_of(req.workflow, len(view.workers)) if self._free(view, w)]
        if not free:
            return None
        warm = [w for w in free if any(k[2] == req.workflow for k in view.workers[w].resident)]
        return (warm or free)[0]

    def next_held(self, view, worker):
        if not self._free(view, worker):
            return None
        if self.bins:
            served = self.bins[worker] if worker < len(self.bins) else set()
        else:
            served = {k for k in self._order if worker in self.replicas_of(k, len(view.workers))}
        best, first = None, None
        for k in sorted(served):
            head = view.held_head(k)
            if head is not None and (first is None or head.priority < first):
                best, first = k, head.priority
        return best

    def on_tick(self, view: SchedulerView, now: float) -> bool:
        """bundle-auto: once a window holds ``min_window`` arrivals, blend its observed work per
        workflow into the estimate (``blend`` of the new window), and re-allocate when that lowers
        the busiest workflow's load per GPU by ``margin``; the new layout keeps as many GPUs as
        it can where they are. Short windows would chase Poisson noise and pay loads for it."""
        if not self.tick_s or not self.bins:
            return False
        if view.stats.admitted - self._seen_count < self.min_window:
            return False
        self._seen_count = view.stats.admitted
        seen = dict(view.stats.work_by_workflow)
        window = {k: seen.get(k, 0.0) - self._seen.get(k, 0.0) for k in seen}
        self._seen = seen
        total = sum(window.values())
        if total <= 0:
            return False
        old_total = sum(self._weights.values()) or 1.0
        names = set(self._weights) | set(window)
        b = self.blend
        self._weights = {k: (1 - b) * self._weights.get(k, 0.0) / old_total + b * window.get(k, 0.0) / total for k in names}
        proposal = sticky(self.bins, allocate(self._weights, len(self.bins), self._memory, self._capacity))
        if busiest_load(proposal, self._weights) > (1 - self.margin) * busiest_load(self.bins, self._weights):
            return False
        moved = sum(1 for a, b in zip(self.bins, proposal) if a != b)
        self.bins = proposal
        if moved:
            self.decisions.append((now, moved))
        return moved > 0
