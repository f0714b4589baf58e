"""Scheduling policies: pure decisions over a read-only view of the coordinator.

A policy never mutates what it is shown. It orders requests (:meth:`priority`), admits or rejects
them on arrival (:meth:`admit`), may pin a request to one worker (:meth:`pin`, for the monolithic
baseline) and plans dispatches (:meth:`plan`); the coordinator carries the decisions out.
Policies are chosen by name: :data:`POLICIES`.
"""

from __future__ import annotations

import heapq
import math
import random

from legodiffusion.core.cost import CostModel
from legodiffusion.core.placement import _NONE, Placement, _Slots
from legodiffusion.core.view import Assignment, ClassInfo, Prefetch, RequestView, SchedulerView, TenantView


class SchedulingPolicy:
    name = "base"
    #: Bundle semantics: no model or batch is shared across workflows.
    isolate_workflows = False
    #: A request starts only once :meth:`pin` (or :meth:`next_held`) gives it a worker; until
    #: then it waits, admitted, in its workflow's held queue.
    gated = False
    #: Seconds between :meth:`on_tick` calls the driver makes (None: never).
    tick_s: float | None = None

    def priority(self, req: RequestView, seq: int, remaining_s: float) -> tuple:
        """The request's place among its tenant's requests in every ready queue (lower first),
        given its admission order and its profiled remaining work; re-evaluated each time one of
        its nodes finishes."""
        return (seq,)

    def share_key(self, tenant: TenantView) -> tuple:
        """Which tenant's ready nodes go first (lower first), read each time a queue's head is
        chosen: strict priority between classes, then, inside one, the tenant furthest behind its
        fair share of the class's profiled work (a lead of 0 when it is alone in its class)."""
        return (tenant.rank, tenant.lead_s)

    def order_key(self, req: RequestView) -> tuple:
        """A request's place among all requests as of now (its tenant's, then its own)."""
        return (self.share_key(req), req.priority)

    def admit(self, view: SchedulerView, req: RequestView, solo_s: float, now: float) -> str | None:
        """None to admit, else the reason for rejecting."""
        return None

    def pin(self, view: SchedulerView, req: RequestView) -> int | None:
        return None

    def next_held(self, view: SchedulerView, worker: int) -> str | None:
        """Gated policies: the workflow whose oldest held request ``worker`` (now free) starts."""
        return None

    def on_tick(self, view: SchedulerView, now: float) -> bool:
        """A timer event; True when the decision changed what held requests may start where."""
        return False

    def plan(self, view: SchedulerView) -> list[Assignment | Prefetch]:
        raise NotImplementedError


#: ``laxity``: least laxity first (deadline - remaining work, re-evaluated as the request
#: progresses); ``slack``: latest start (deadline - whole solo time) fixed at arrival; ``fcfs``
ORDERINGS = ("laxity", "slack", "fcfs")


class MicroServingPolicy(Placement, SchedulingPolicy):
    """The paper's decisions, each switchable for baselines and ablations.

    - ordering (:data:`ORDERINGS`): ``laxity`` (default, least laxity first) serves the request
      whose deadline - remaining profiled work is earliest, re-evaluated as it progresses: between
      two steps a request ahead of its schedule yields to one that is not, and a 4-step request is
      not queued behind 50-step ones; ``slack`` fixes the latest start (deadline - its whole
      profiled work) at arrival (the default until placement stopped loading on the critical path
      and urgent requests kept their workers; since then least laxity measures better at every
      fixed load, and on held-out trace seeds); ``fcfs``: arrival only.
    - admission: reject on arrival when the work ordered before the request, spread over the
      live workers at the rate a saturated cluster was measured to drain profiled work
      (:mod:`legodiffusion.core.drain`: loads, LoRA attaches and batching included), exceeds its
      slack (deadline - now - solo latency), or when admitting it would push an admitted
      request's fluid finish past its deadline; the rejection says which.
    - batching: a small latency-mode batch when there are enough free workers for every ready
      class, a larger throughput-mode batch otherwise (``adaptive=False``: always throughput).
      Latency mode spreads independent nodes of one request (guidance branches, ControlNets)
      over idle workers; throughput mode packs them into one batch on one worker. Either way a
      batch grows only while the profile says it saves time per item (``batch_sizing``).
    - placement ``cost``: minimise reserved queue + input transfer (real sizes, this cost
      model's link) + load (if not resident) + what the call evicts (:meth:`_eviction_s`) +
      execution, over the idle workers (searched round-robin, so work does not pile onto
      low-numbered ones), the input holders and the model holders; a load is chosen only when a
      holder would take longer to get to it (``evictions``), and then a worker left idle loads a
      replica meanwhile (:meth:`_prefetches`); ``random``: any eligible worker.
    - an urgent request (less slack than ``urgent_s``: deadline - now - its remaining work)
      keeps the worker its call runs on: no call of a request after it is queued there behind
      that call, so its next step does not wait a whole other call (a 0.45 s, 4-step request has
      0.45 s of slack in all).
    - proactive replicas (``prefetch``): workers a plan leaves idle load the components whose
      recent demand most exceeds their replicas (:meth:`_prefetches`), so loads leave the
      critical path.
    - tenants and priority classes (:meth:`share_key`, :mod:`legodiffusion.core.fairness`): a
      higher class first, strictly, then the tenant furthest behind its fair share, then the
      ordering above. While a higher class has requests running, a lower class takes only idle
      workers (one latency-size batch each, leaving the other slots free), keeps one idle worker
      per running higher-class request free, and evicts nothing; admission counts only its own
      and higher classes as work ahead and protects only its own class's deadlines.
    """

    def __init__(
        self,
        name: str = "default",
        ordering: str = "laxity",
        admission: bool = True,
        placement: str = "cost",
        adaptive: bool = True,
        seed: int = 0,
        share: bool = True,
        cross_request: bool = True,
        partition: list[set] | None = None,
        batch_sizing: bool = True,
        evictions: bool = True,
        prefetch: bool = True,
        target_utilisation: float = 0.9,
        urgent_s: float = 0.5,
        measured_admission: bool = True,
    ) -> None:
        if ordering not in ORDERINGS:
            raise ValueError(f"ordering must be one of {ORDERINGS}, got {ordering!r}")
        if placement not in ("cost", "random"):
            raise ValueError(f"placement must be cost or random, got {placement!r}")
        self.name = name
        self.ordering = ordering
        self.admission = admission
        self.placement = placement
        self.adaptive = adaptive
        self._rng = random.Random(seed)
        #: ablations: ``share=False`` gives every workflow its own model copies and batches;
        #: ``cross_request=False`` batches only nodes of one request; ``partition`` fixes, per
        #: worker, the models (or, with ``share=False``, the workflows) it may run: a static
        #: split in place of per-model scaling
        self.isolate_workflows = not share
        self.cross_request = cross_request
        self.partition = [set(p) for p in partition] if partition else None
        self.batch_sizing = batch_sizing
        self.evictions = evictions
        #: proactive replicas: an idle worker loads a component whose recent demand (seconds of
        #: work per second) / ``target_utilisation`` exceeds the workers holding it
        self.prefetch = prefetch
        self.target_utilisation = target_utilisation
        #: a request with less slack than this keeps the worker it runs on free of calls of
        #: requests after it (0: off)
        self.urgent_s = urgent_s
        #: admission drains the work ahead at the measured rate, with the late-finish margin
        #: (False: at the profile's batch-1 rate, the ablation ``profile-admission``)
        self.measured_admission = measured_admission
        self._sizes: dict[tuple, int] = {}  # batch class and most allowed -> batch size
        self._spin = 0  # the idle worker the next search starts from
        self._wanted: dict[str | None, int] = {}  # this plan: model -> ready nodes that need it
        self._waiting: set[tuple] = set()  # this plan: components whose nodes wait for a busy holder

    def priority(self, req, seq, remaining_s):
        # least laxity: deadline - remaining work is the latest time the rest can start; a
        # request that is ahead of its schedule yields, between two steps, to one that is not
        if self.ordering == "fcfs":
            return (0, 0.0, seq)
        if req.deadline_s is None:
            return (1, 0.0, seq)
        if self.ordering == "laxity":
            return (0, req.deadline_s - remaining_s, seq)
        return (0, req.deadline_s - req.solo_s, seq)  # latest start, fixed at arrival

    def admit(self, view, req, solo_s, now):
        if not self.admission or req.deadline_s is None:
            return None
        slack = req.deadline_s - now - solo_s
        if slack < 0:
            return f"SLO_REJECTED: needs {solo_s:.3f}s of work, {req.deadline_s - now:.3f}s left before its deadline"
        # the work ahead drains at the rate a saturated cluster was measured to complete profiled
        # work (loads, LoRA attaches and batching included), not at the profile's batch-1 rate,
        # with the margin that admitted requests finishing late have asked for
        rate = view.drain_factor / view.late_margin(req.rank) if self.measured_admission else 1.0
        workers = max(1, view.active) * rate
        mine = (self.share_key(req), self.priority(req, float("inf"), solo_s))
        backlog = view.backlog()
        ahead = [work for prio, work, _ in backlog if prio <= mine]
        wait = sum(ahead) / workers
        if wait > slack:
            return (
                f"SLO_REJECTED: needs {solo_s:.3f}s of work plus ~{wait:.3f}s of queue (the work ahead draining at "
                f"{rate:.2f}x its profiled rate), {req.deadline_s - now:.3f}s left before its deadline"
            )
        # it must not make an admitted request late: in the fluid limit (all work spread over all
        # workers) the requests after it finish no earlier than the work up to them / workers
        # (only its own class: a lower class yields to it by design)
        total = sum(ahead) + solo_s
        for prio, work, deadline in backlog[len(ahead) :]:
            if prio[0][0] != mine[0][0]:
                break
            total += work
            if deadline is not None and total / workers > deadline - now >= (total - solo_s) / workers:
                return f"SLO_REJECTED: admitting it ({solo_s:.3f}s of work) would make admitted requests miss their deadlines"
        return None

    def _batch_size(self, cost: CostModel, info: ClassInfo, most: int) -> int:
        """The smallest batch up to ``most`` whose time per item is within 2% of the best: a
        larger batch only delays its members when it saves no time per item (a compute-bound
        call costs as much batched as one at a time)."""
        if most <= 1 or not self.batch_sizing:
            return most
        key = (info.op, info.mode, info.model, info.px, most)
        n = self._sizes.get(key)
        if n is None:
            per = [cost.exec_s(info.op, info.mode, info.model, b, info.px) / b for b in range(1, most + 1)]
            n = self._sizes[key] = next(b for b, t in enumerate(per, 1) if t <= min(per) * 1.02)
        return n

    def plan(self, view):
        if not view.eligible:
            return []
        queues = view.queues
        keys = list(queues)
        limits = {k: view.batch_limits(view.classes[k].op) for k in keys}
        # latency mode while there are enough workers that may take work now (calm ones) to give
        # every ready class its small batches, each on its own worker; throughput mode packs larger
        # batches when there are not (two slots of one worker are no parallelism)
        latency_mode = self.adaptive and sum(math.ceil(len(queues[k]) / limits[k][0]) for k in keys) <= len(view.calm & view.eligible)
        if self.evictions and getattr(view.cost, "memory_bytes", None):  # what _eviction_s reads
            wanted: dict[str | None, int] = {}
            for k in keys:
                m = view.classes[k].model
                wanted[m] = wanted.get(m, 0) + len(queues[k])
            self._wanted = wanted
        plan = []
        self._waiting = set()
        slots = _Slots(view)
        reserved: dict[int, float] = {}
        top = view.top_class()
        urgent = view.kept_urgent() if self.urgent_s > 0 else None
        kept: dict[int, set[int]] = {}  # rank -> workers kept from it (the same for every key of that rank)
        # batches go in the order of their first nodes across every class: a class whose head is
        # first does not also place its later nodes before another class's earlier ones
        heads = []
        for i, key in enumerate(keys):
            order = queues[key].ordered()
            heads.append((next(order), i, key, order))
        heapq.heapify(heads)
        state: dict[int, tuple] = {}  # class index -> (unplaced, limit, below, kept workers)
        while heads and slots.any():
            place, i, key, order = heapq.heappop(heads)
            info = view.classes[key]
            if i in state:
                pending, limit, below, kept_from = state[i]
            else:
                pending = len(queues[key])
                limit, below, kept_from = self._class_limits(view, place[0][0], limits[key], latency_mode, top, kept)
            slots.keep = 1 if below else 0
            slots.kept = kept_from
            if urgent:  # nor, for a node after it, the worker an urgent request is running on
                mine = {w for w, p in urgent.items() if p < place[:2]}
                if mine:
                    slots.kept = slots.kept | mine
            if below and sum(1 for w in view.idle if w not in slots.taken) <= top[1]:
                continue
            n = self._batch_size(view.cost, info, min(pending, limit))
            if info.pin is not None:
                wid = info.pin if slots.has(info.pin) else None
            else:
                wid = self._choose(view, key, info, n, slots, reserved)
            if wid is None:
                continue
            plan.append(Assignment(wid, key, n))
            slots.take(wid)
            pending -= n
            state[i] = (pending, limit, below, kept_from)
            if pending:
                nxt = None
                for _ in range(n):
                    nxt = next(order, None)
                if nxt is not None:
                    heapq.heappush(heads, (nxt, i, key, order))
        if self.prefetch and slots.any() and view.idle:
            plan += self._prefetches(view, slots)
        return plan

    @staticmethod
    def _class_limits(view, rank, limits: tuple[int, int], latency_mode: bool, top, kept: dict) -> tuple[int, bool, set[int]]:
        """(batch limit, whether a higher class runs, workers kept from it) for a class whose
        first node is of priority class ``rank``. While a higher class has requests running, a
        lower class takes only idle workers (leaving each a slot), one small batch each, and not
        the last idle workers, one per running higher-class request: a higher-class node finds a
        free worker, or waits behind at most one short call; and not the workers a running
        higher-class request just used: its next call would otherwise wait there behind a
        lower-class one, step after step. ``kept``: rank -> those workers, filled as needed."""
        below = top is not None and rank > top[0]
        if not below:
            return limits[0] if latency_mode else limits[1], False, _NONE
        if rank not in kept:
            kept[rank] = view.kept_for(rank)
        return limits[0], True, kept[rank]


POLICIES = {
    "default": lambda: MicroServingPolicy("default"),
    "fcfs": lambda: MicroServingPolicy("fcfs", ordering="fcfs", admission=False),
    "random": lambda: MicroServingPolicy("random", placement="random"),
    "bundle": lambda: _bundle(),
}


def _bundle() -> SchedulingPolicy:
    from legodiffusion.core.bundle import BundlePolicy  # it builds on MicroServingPolicy

    return BundlePolicy()


def make_policy(name: str) -> SchedulingPolicy:
    try:
        return POLICIES[name]()
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; choose one of {sorted(POLICIES)}") from None
