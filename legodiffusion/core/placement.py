"""Where calls and replicas go, the placement half of
:class:`~legodiffusion.core.policy.MicroServingPolicy`: which workers are worth costing for a batch
(:meth:`Placement._candidates`), the cheapest of them counting queue, transfers, loads, LoRA
attaches and what the call evicts (:meth:`Placement._choose`, :meth:`Placement._eviction_s`), and
the replicas idle workers load ahead of demand (:meth:`Placement._prefetches`)."""

from __future__ import annotations

import bisect
import heapq
import itertools
import math

from legodiffusion.core.view import ClassInfo, Prefetch, SchedulerView

_NONE: frozenset = frozenset()


class _Slots:
    """Free slots during one plan: the coordinator's counts minus what this plan has taken."""

    def __init__(self, view: SchedulerView) -> None:
        self.view = view
        self.taken: dict[int, int] = {}
        self.left = view.free_slots
        self.keep = 0  # slots each worker (of more than one) keeps free from what is placed now
        self.kept: set[int] = set()  # workers nothing may be placed on now

    def has(self, wid: int) -> bool:
        if wid not in self.view.eligible or wid in self.kept:
            return False
        if not self.taken and not self.keep:
            return True
        w = self.view.workers[wid]
        return w.slots - w.inflight - self.taken.get(wid, 0) > min(self.keep, w.slots - 1)

    def take(self, wid: int) -> None:
        self.taken[wid] = self.taken.get(wid, 0) + 1
        self.left -= 1

    def any(self) -> bool:
        return self.left > 0


class Placement:
    """Mixed into :class:`~legodiffusion.core.policy.MicroServingPolicy`, whose switches
    (``placement``, ``evictions``, ``partition``, ``isolate_workflows``, ``target_utilisation``)
    and per-plan state (``_spin``, ``_wanted``, ``_waiting``, ``_rng``) it reads and keeps."""

    def _allowed(self, model: str | None, scope: str | None, wid: int) -> bool:
        """Whether a static partition lets ``wid`` run calls of ``model`` (of workflow ``scope``)."""
        if self.partition is None or wid >= len(self.partition):
            return True
        owner = scope if self.isolate_workflows else model
        return owner is None or owner in self.partition[wid]

    def _candidates(self, view, info: ClassInfo, slots: _Slots, comp, where: dict[int, int], calm: set[int]) -> list[int]:
        """Workers worth costing: the emptiest idle ones, those holding the inputs and those
        holding the model; O(candidates), not O(workers). Busy workers (reserved queue over the
        threshold) are skipped so work waits centrally where it can still batch and move, except
        a busy holder when every calm candidate would have to load the model. ``calm``: the
        eligible calm workers (not empty)."""

        def usable(w: int) -> bool:
            return slots.has(w) and self._allowed(info.model, info.scope, w)

        picked = []
        idle = view.idle  # sorted: start where the last search left off, so work spreads
        start = bisect.bisect_left(idle, self._spin)
        for w in itertools.chain(idle[start:], idle[:start]):
            if usable(w):
                picked.append(w)
                if len(picked) == 2:
                    self._spin = w + 1
                    break
        if self.partition is not None and not picked:  # the idle ones may all belong to others
            picked += [w for w in sorted(calm) if usable(w)][:2]
        picked += [w for w in where if w in calm and usable(w)]
        # the eligible holders, without building that set (every worker may hold a popular model)
        holders = view.holders.get(comp, _NONE) if comp is not None else _NONE
        eligible = view.eligible
        held = bool(holders) and not holders.isdisjoint(eligible)
        if held:
            idle_held = view.idle_set & eligible & holders
            if idle_held:  # an idle holder costs only its execution
                picked += [w for w in sorted(idle_held)[:4] if usable(w)]
            else:  # calm is within the eligible
                picked += heapq.nsmallest(3, (w for w in holders & calm if usable(w)), key=lambda w: (view.workers[w].reserved_s, w))
        ready = list(dict.fromkeys(picked))
        if held and ready and not any(w in holders and w in eligible for w in ready):
            busy = itertools.islice((w for w in (holders & eligible) - calm if usable(w)), 16)  # a sample bounds the cost
            ready += heapq.nsmallest(2, busy, key=lambda w: (view.workers[w].reserved_s, w))
        return ready

    def _choose(self, view, key, info: ClassInfo, n: int, slots: _Slots, reserved: dict[int, float]) -> int | None:
        calm = view.calm & view.eligible
        if not calm:
            return None  # no worker may take it now: its inputs' places do not matter
        comp = (info.model, info.component, info.scope) if info.component else None
        where = view.locality(key, n)
        candidates = self._candidates(view, info, slots, comp, where, calm)
        if not candidates:
            return None
        if len(candidates) == 1 and not slots.keep and (comp is None or comp in view.workers[candidates[0]].resident or not self.evictions):
            return candidates[0]  # nothing to weigh: not even a load against waiting for a holder
        if self.placement == "random":
            return self._rng.choice(sorted(candidates))
        cost = view.cost
        exec_s = cost.exec_s(info.op, info.mode, info.model, n, info.px)
        load_s = cost.load_s(info.model, info.component) if info.component else 0.0
        patch_s = getattr(cost, "lora_load_s", 0.0)
        total_bytes = sum(where.values())
        evicts = self.evictions and bool(getattr(cost, "memory_bytes", None))  # what _eviction_s needs
        best, best_cost = -1, math.inf
        for wid in candidates:
            w = view.workers[wid]
            c = reserved.get(wid, w.reserved_s) + exec_s
            if comp is not None:
                if comp not in w.resident:
                    c += load_s
                if info.patches:
                    c += patch_s * sum(1 for name in info.patches if comp + (name,) not in w.patches)
                if evicts:
                    evict_s = self._eviction_s(view, w, comp, info, n)
                    if evict_s > 0 and slots.keep:
                        continue  # a lower class evicts nothing while a higher class runs (it would reload)
                    c += evict_s
            missing = total_bytes - where.get(wid, 0)
            if missing > 0:
                c += cost.transfer_s(missing)
            if c < best_cost or (c == best_cost and wid < best):
                best, best_cost = wid, c
        if best < 0:
            return None
        if (
            self.evictions
            and comp is not None
            and comp not in view.workers[best].resident
            and self._holder_free_s(view, comp, reserved) + exec_s <= best_cost
        ):
            self._waiting.add(comp)  # and a worker left idle may load a replica meanwhile
            return None  # a holder, once free, finishes it sooner than a load here: wait for it
        reserved[best] = best_cost
        return best

    def _holder_free_s(self, view, comp: tuple, reserved: dict[int, float]) -> float:
        """When the first live worker holding ``comp`` has worked off its queue (inf: none)."""
        held = view.holders.get(comp, _NONE)
        if not held:
            return math.inf
        sample = held if len(held) <= 16 else itertools.islice(held, 16)  # a sample bounds the cost
        return min(
            (reserved.get(w, view.workers[w].reserved_s) for w in sample if view.workers[w].alive and not view.workers[w].draining),
            default=math.inf,
        )

    def _eviction_s(self, view, w, comp: tuple, info: ClassInfo | None, n: int, replicas: dict | None = None) -> float:
        """What running a call of ``comp`` on ``w`` destroys: when it (if not resident) and the
        call's activations do not fit beside what ``w`` holds (against the cost model's device
        memory), the components it must drop, cheapest first, each costing its reload time times
        the chance it is needed soon (queued work for its model: 1 when no other worker holds it,
        0.3 when one does; 0.05 with nothing queued). With ``replicas`` (a prefetch: component ->
        replicas demand wants), a component that has no more holders than that is not taken."""
        budget = getattr(view.cost, "memory_bytes", None)
        if not budget or not self.evictions:
            return 0.0
        cost = view.cost
        act = getattr(cost, "activation_bytes", None)
        need = w.used_bytes + (act(info.op, info.mode, info.model, n, info.px) if act and info else 0) - budget
        if comp not in w.resident:
            need += cost.weight_bytes(comp[0], comp[1])
        if need <= 0:
            return 0.0
        victims = []
        for other in w.resident:
            if other == comp:
                continue
            if replicas is not None and replicas.get(other, 0) >= len(view.holders.get(other, _NONE)):
                p = math.inf  # a prefetch does not take a replica that demand still needs
            elif self._wanted.get(other[0]):
                p = 0.3 if len(view.holders.get(other, _NONE)) > 1 else 1.0
            else:
                p = 0.05
            nbytes = max(1, cost.weight_bytes(other[0], other[1]))
            value = p * cost.load_s(other[0], other[1]) if p != math.inf else math.inf
            victims.append((value / nbytes, nbytes, value))
        victims.sort()
        penalty = 0.0
        for _, nbytes, value in victims:
            if need <= 0:
                break
            need -= nbytes
            penalty += value
        return penalty

    def _prefetches(self, view, slots: _Slots) -> list[Prefetch]:
        """Replicas ahead of demand: each worker this plan leaves idle may load the component
        whose wanted replicas (recent demand / target utilisation) most exceed its holders, where
        that evicts less than the load costs and nothing demand still needs. Only where the cost
        model knows the device memory (``memory_bytes``): without it, what a load evicts cannot
        be counted."""
        if not getattr(view.cost, "memory_bytes", None):
            return []
        free = [w for w in view.idle if slots.has(w) and w not in slots.taken]
        if not free:
            return []
        replicas = {comp: math.ceil(rate / self.target_utilisation) for comp, rate in view.demand().items()}
        for comp in self._waiting:  # work is waiting for its holders now: one replica more
            replicas[comp] = max(replicas.get(comp, 0), len(view.holders.get(comp, _NONE)) + 1)
        short = sorted(
            ((len(view.holders.get(c, _NONE)) / max(n, 1), c) for c, n in replicas.items() if n > len(view.holders.get(c, _NONE))),
            key=lambda x: (x[0], -view.cost.load_s(x[1][0], x[1][1]), x[1]),
        )
        out = []
        for _, comp in short:
            if not free:
                break
            allowed = [w for w in free if self._allowed(comp[0], comp[2], w)]
            if not allowed:
                continue
            load_s = view.cost.load_s(comp[0], comp[1])
            penalty, wid = min((self._eviction_s(view, view.workers[w], comp, None, 0, replicas), w) for w in allowed)
            if penalty >= load_s:
                continue
            out.append(Prefetch(wid, comp))
            free.remove(wid)
            slots.take(wid)
        return out
