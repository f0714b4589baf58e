"""Recovery from a lost worker, the part of the :class:`~legodiffusion.core.coordinator.Coordinator`
that redoes work from lineage: which in-flight items are orphaned, which values are gone, and
which nodes must run again (producers of gone inputs, readers of dropped deferred values)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from legodiffusion.core.graph import FROM_NODE
from legodiffusion.core.messages import FAILED, Actions

if TYPE_CHECKING:
    from legodiffusion.core.coordinator import _Live


class Lineage:
    """Mixed into the coordinator, whose state (requests, in-flight dispatches, the worker pool,
    orphans) it reads and changes."""

    def on_worker_lost(self, worker: int, now: float) -> Actions:
        """A worker died: its in-flight nodes and the tensors it held are gone. Every affected
        request re-runs, from lineage, only the nodes whose outputs are needed and gone (a reader
        of a deferred input the lost worker was producing runs again with its producer); one that
        no live worker can serve fails with that reason."""
        actions = Actions()
        if not self.pool.lose(worker):
            return actions
        redo: dict[int, set[int]] = {}
        for did in [d for d, rec in self.inflight.items() if rec.dispatch.worker == worker]:
            for item in self.inflight.pop(did).dispatch.items:
                # whatever it still writes is dropped: an orphan's too, whose result will now never
                # report to free it (output ids are never reused: a redo gets fresh ones)
                actions.abandoned.extend(item.output_ids.values())
                if self._orphans.settle((did, item.request_id, item.node)):
                    continue  # already redone elsewhere
                redo.setdefault(item.request_id, set()).add(item.node)
        for live in list(self.requests.values()):
            lost = [k for k, ref in live.refs.items() if ref.worker == worker]
            if not lost and live.req.id not in redo and live.pin != worker:
                continue
            if not any(x.alive for x in self.workers):
                self._end(live, FAILED, actions, error="no live worker can run this request")
            else:
                self._recover(live, lost, redo.get(live.req.id, set()), actions, worker)
                self.stats.recoveries += 1
        self._dispatch(actions)
        return self._finish(actions)

    def _recover(self, live: _Live, lost: list, inflight_lost: set[int], actions: Actions, worker: int) -> None:
        """Redo what ``live`` lost with ``worker``: its values there (``lost``, keys of its refs)
        and its nodes that were running there (``inflight_lost``)."""
        lost_ids = self._forget(live, lost, actions, worker)
        rerun = set(inflight_lost) | {node for node, port in lost if live.uses.get((node, port), 0) > 0}
        self._to_redo(live, rerun, lost_ids, actions)
        self._unfinish(live, rerun)
        self._requeue(live)

    def _forget(self, live: _Live, lost: list, actions: Actions, worker: int) -> set[int]:
        """Drop the request's values the lost worker held or was to write; returns their ids."""
        lost_ids = {live.refs[k].id for k in lost}
        unwritten = {tid for tid in live.pending if live.making.get(tid) == worker}  # deferred, never to come
        live.pending -= unwritten  # (abandoned with the lost dispatch's outputs: its readers wake and are redone)
        lost_ids |= unwritten
        gone = {}
        for k in lost:  # (an output a pass-through handed on is one value under several keys)
            ref = live.refs.pop(k)
            gone[ref.id] = ref
            live.holders.pop(ref.id, None)
        actions.frees.extend(gone.values())
        return lost_ids

    def _to_redo(self, live: _Live, rerun: set[int], lost_ids: set[int], actions: Actions) -> None:
        """Grow ``rerun`` until it is closed: items running elsewhere on a lost value, the producers
        of the gone inputs of every node to redo, and the readers of deferred values whose producer
        is redone (``lost_ids`` grows with those values)."""
        tmpl = live.req.template
        while True:
            for did, rec in self.inflight.items():  # running elsewhere on a lost input: it will fail, redo it
                for it in rec.dispatch.items:
                    if it.request_id == live.req.id and any(r.id in lost_ids for r in it.refs.values()):
                        self._orphans.add(did, it)
                        rerun.add(it.node)
            work = list(rerun)
            while work:  # lineage: a node to redo needs its inputs; redo the producers of gone ones
                node = work.pop()
                for inp in tmpl.nodes[node].inputs:
                    if (
                        inp.kind == FROM_NODE
                        and (inp.node, inp.name) not in live.refs
                        and inp.node in live.finished
                        and inp.node not in rerun
                    ):
                        rerun.add(inp.node)
                        work.append(inp.node)
            # a producer redone while its first run still goes on elsewhere: that run's deferred
            # outputs are dropped, so their readers are redone too (until nothing more is found)
            stale = {tid for (n, _), tid in live.out_ids.items() if n in rerun and tid in live.pending}
            if not stale:
                return
            live.pending -= stale
            actions.abandoned.extend(sorted(stale))
            lost_ids |= stale

    def _unfinish(self, live: _Live, rerun: set[int]) -> None:
        """The nodes to redo count as not done: their work is owed again, their outputs unnamed."""
        tmpl = live.req.template
        for node in rerun:
            if node in live.finished:
                live.finished.discard(node)
                live.done -= 1
                live.remaining_s += live.costs[node]
                self.work_s += live.costs[node]
                live.priority = self.policy.priority(live, live.seq, live.remaining_s)
            for port in tmpl.out_ports[node]:
                live.out_ids.pop((node, port), None)
        # every value is read once more by each reader still to finish: counted afresh, since a
        # reader redone may read a value that is itself being re-made (not in ``refs`` now)
        live.uses = tmpl.uses_after(live.finished)

    def _requeue(self, live: _Live) -> None:
        """Count every unfinished node's inputs afresh and queue those ready (not those still
        running elsewhere); a pin on a dead worker goes."""
        tmpl = live.req.template
        running = {
            it.node
            for did, rec in self.inflight.items()
            for it in rec.dispatch.items
            if it.request_id == live.req.id and (did, it.request_id, it.node) not in self._orphans
        }
        live.queued.clear()
        if live.pin is not None and not self.workers[live.pin].alive:
            self.workers[live.pin].pinned -= 1
            live.pin = None
        for node in range(len(tmpl.nodes)):
            if node in live.finished:
                continue
            producers = {inp.node for inp in tmpl.nodes[node].inputs if inp.kind == FROM_NODE and not inp.deferred}
            deferred = {inp.node for inp in tmpl.nodes[node].inputs if inp.kind == FROM_NODE and inp.deferred}
            live.indegree[node] = sum(1 for p in producers if p not in live.finished)
            live.dwait[node] = sum(1 for p in deferred if p not in live.finished and p not in running)
            if live.indegree[node] == 0 and live.dwait[node] == 0 and node not in running:
                self._make_ready(live, node)
