"""Requests an approximate-cache hit shortens, the part of the
:class:`~legodiffusion.core.coordinator.Coordinator` that handles them: a lookup's answer (a hit of
``k`` steps makes the last ``k`` iterations of the loop it starts pass-through, and takes their
work off the request), and the pass-through nodes themselves, which run nowhere: each is recorded
at once, its outputs the same values as its inputs of that name, so one value may be held by
several outputs and is freed when the last lets go (:mod:`legodiffusion.core.approx`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from legodiffusion.core.graph import FROM_NODE
from legodiffusion.core.messages import RUNNING, Actions, TensorRef

if TYPE_CHECKING:
    from legodiffusion.core.coordinator import _Live


class Shortening:
    """Mixed into the coordinator, whose state (requests, in-flight dispatches, statistics, the
    approximate-cache index) it reads and changes."""

    def _release(self, live: _Live, ref: TensorRef, actions: Actions) -> None:
        """An output holding ``ref`` has no reader left: free its value unless another still holds it."""
        held = live.holders.pop(ref.id, 1) - 1
        if held > 1:
            live.holders[ref.id] = held
        elif held == 0:
            actions.frees.append(ref)

    def _pass_ready(self, actions: Actions) -> None:
        while self._passing:
            live, node = self._passing.pop()
            if live.status == RUNNING and node not in live.finished:
                self._pass(live, node, actions)
                self._woken = True  # what it readied may be dispatched in this round

    def _pass(self, live: _Live, node: int, actions: Actions) -> None:
        """A node past the end of a shortened schedule (:meth:`_approx_noted`) runs nowhere: it
        finishes at once, each output the same value as its input of that name (the latents and
        sampler state a sampler step hands on; none for a denoiser's noise, which only the next
        passed step reads)."""
        tmpl = live.req.template
        outputs = {}
        for inp in tmpl.nodes[node].inputs:
            if inp.kind == FROM_NODE and inp.port in tmpl.out_ports[node] and (inp.node, inp.name) in live.refs:
                outputs[inp.port] = live.refs[(inp.node, inp.name)]
        for consumer in tmpl.deferred_consumers[node]:  # a reader of it as a deferred input may start (and pass) too
            live.dwait[consumer] -= 1
            if live.dwait[consumer] == 0 and live.indegree[consumer] == 0:
                self._make_ready(live, consumer)
        self.stats.passed += 1
        self._record(live, node, outputs, actions, passed=True)

    def _approx_noted(self, live: _Live, node: int, notes: dict) -> None:
        """An approximate-cache node reported: a state saved (the index learns it), or a lookup's
        answer. A hit of ``k`` steps makes the last ``k`` iterations of the loop the lookup starts
        pass-through (:meth:`_pass`), and the request that much shorter: its remaining work, its
        whole work (its ordering) and the queue's work lose what those nodes would have cost."""
        if "approx_saved" in notes:
            self.approx.saved(notes["approx_saved"])
        note = notes.get("approx")
        if note is None:
            return
        if node in live.approx:  # a re-run after a loss: pinned to the first answer, nothing changes
            return
        live.approx[node] = note
        self.approx.looked_up(live.req.workflow, note["skipped"], note["steps"])
        iterations = live.req.template.skips.get(node, ())
        k = min(int(note["skipped"]), len(iterations))
        if k <= 0:
            return
        skipped = {n for it in iterations[len(iterations) - k :] for n in it}
        started = skipped & (
            live.finished
            | live.queued
            | {it.node for r in self.inflight.values() for it in r.dispatch.items if it.request_id == live.req.id}
        )
        if started:
            self._violation(
                live.req.id, f"nodes {sorted(started)} past the end of the shortened schedule started before the lookup answered"
            )
            return
        live.passthrough |= skipped
        live.costs = list(live.costs)  # its own from now on (the template's are shared)
        saved = 0.0
        for n in skipped:
            saved += live.costs[n]
            live.costs[n] = 0.0
        live.remaining_s -= saved
        live.solo_s -= saved
        self.work_s -= saved
        self.stats.work_by_workflow[live.req.workflow] -= saved
        live.priority = self.policy.priority(live, live.seq, live.remaining_s)
