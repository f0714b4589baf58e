"""The reporting side of the :class:`~legodiffusion.runtime.engine.Engine`: a worker's completion
arrives on the event loop (:meth:`Completions._on_completion`), is noted on its requests' runs
(steps, step-cache skips, LoRA and approximate-cache notes), handed to the coordinator, and the
coordinator's actions are carried out: progress callbacks, finished runs resolved with their
outputs read back to the host, values freed, new dispatches sent. None of it raises: a failure
fails the requests it concerns with the reason, never the engine."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from legodiffusion.core.coordinator import INVARIANT
from legodiffusion.core.messages import Actions, Completion, Dispatch
from legodiffusion.runtime.runs import Run, RunResult


class Completions:
    """Mixin of :class:`~legodiffusion.runtime.engine.Engine`. It uses the engine's state
    (``coordinator``, ``cost``, ``plane``, ``workers``, ``supervisor``, ``_runs``, ``_sent``, ``_awaited``,
    ``_stops_asked``, ``_loop``, ``log``, the ``on_dispatch_done`` / ``on_dispatch_sent``
    observers) and methods (``_now``, ``_report``, ``lose_worker``, ``_stop_orphaned``)."""

    def _completion_from_thread(self, c: Completion) -> None:
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._on_completion, c)

    def _lost_from_thread(self, worker: int) -> None:
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self.lose_worker, worker)

    def _on_completion(self, c: Completion) -> None:
        """A dispatch reported. Never raises: a failing observer hook is logged; should the
        coordinator fail on it, the requests of that dispatch fail with the reason."""
        for peer in c.lost_peers:  # learn of the death first, so this result counts as orphaned
            self.lose_worker(peer)
        d = self._sent.pop(c.dispatch_id, None)
        if self._awaited:
            self._report(c.dispatch_id, c)  # (an awaiter resumes after the coordinator has taken it in)
        self.supervisor.done(c.dispatch_id, self._now())
        self._stops_asked.discard(c.dispatch_id)
        if d is not None:
            try:
                self._note(d, c)
                if self.on_dispatch_done is not None:
                    self.on_dispatch_done(d, c)
            except Exception:  # accounting and observers only: the result still counts
                self.log.exception("noting the completion of dispatch %d failed", c.dispatch_id)
        rec = self.coordinator.inflight.get(c.dispatch_id)
        try:
            actions = self.coordinator.on_complete(c, self._now())
        except Exception as exc:
            self.log.exception("handling the completion of dispatch %d failed", c.dispatch_id)
            concerned = {it.request_id for it in rec.dispatch.items} if rec is not None else set()
            self._fail_runs(concerned, f"internal error handling a completion: {type(exc).__name__}: {exc}")
            return
        self._apply(actions)

    def _note(self, d: Dispatch, c: Completion) -> None:
        """Count sampling steps and the denoiser calls a step cache skipped, and record per
        request the step from which its LoRA patch set was active and what it took from and gave
        to the approximate cache."""
        for item, res in zip(d.items, c.results):
            notes = res.notes
            run = self._runs.get(item.request_id)
            if run is not None and res.error is None:
                if d.op == "sampler_step":
                    run.step_nodes.add(item.node)
                run.started = run.started or not d.light
                if notes and "step_cache_skipped" in notes:
                    run.cached_nodes[item.node] = notes["step_cache_skipped"]
                    run.notes["step_cache_calls"] = len(run.cached_nodes)
                    run.notes["step_cache_skipped"] = sum(run.cached_nodes.values())
                if notes:
                    _note_approx(run.notes, notes)
            if run is None or not notes or notes.get("step") is None:
                continue
            if notes.get("lora_active"):
                prev = run.notes.get("lora_active_from_step")
                run.notes["lora_active_from_step"] = notes["step"] if prev is None else min(prev, notes["step"])

    def _apply(self, actions: Actions) -> None:
        """Carry out the coordinator's actions. Never raises: should that fail, the requests they
        concern fail with the reason (and it is logged)."""
        try:
            self._carry_out(actions)
        except Exception as exc:
            self.log.exception("carrying out the coordinator's actions failed")
            concerned = {o.request_id for o in actions.finished} | {it.request_id for d in actions.dispatches for it in d.items}
            self._fail_runs(concerned, f"internal error: {type(exc).__name__}: {exc}")

    def _carry_out(self, actions: Actions) -> None:
        now = self._now()
        for rid in actions.progressed:
            self.supervisor.progressed(rid, now)
            run = self._runs.get(rid)
            if run is not None:
                run.nodes_done += 1
                if run.on_progress is not None:
                    try:
                        run.on_progress(run)
                    except Exception:  # a caller's callback must not stop the engine
                        self.log.exception("progress callback of request %d failed", rid)
        for outcome in actions.finished:
            run = self._runs.pop(outcome.request_id, None)
            self.supervisor.ended(outcome.request_id)
            if run is None:
                continue
            outputs, status, error = {}, outcome.status, outcome.error
            if error is not None and error.startswith(INVARIANT):
                self.log.error("request %d failed: %s", outcome.request_id, error)
            if outcome.outputs:
                try:
                    outputs = {name: _to_host(self.plane.get(ref, ref.worker)) for name, ref in outcome.outputs.items()}
                except Exception as exc:  # its holder died after reporting: the request fails, the engine goes on
                    outputs, status, error = {}, "failed", f"reading the outputs: {type(exc).__name__}: {exc}"
            self._resolve(run, status, outputs, error, outcome.node)
        for release, ids in ((self.plane.free, actions.frees), (self.plane.abandon, actions.abandoned)):
            if ids:
                try:
                    release(ids)
                except Exception:  # values left in memory, or a reader waiting to its limit: logged, the rest goes on
                    self.log.exception("%s of %d value(s) failed", release.__name__, len(ids))
        if actions.finished:
            self._stop_orphaned()
        for d in actions.dispatches:
            self._sent[d.id] = d
            record = self.coordinator.inflight.get(d.id)
            est = record.reserved_s if record is not None else 0.0
            if not d.items:  # a prefetch may be the component's first read from disk, which its reservation leaves out
                est += self.cost.disk_load_s(d.model, d.component)
            self.supervisor.sent(d, est, now)
            self.plane.note_dispatch(d)
            if self.on_dispatch_sent is not None:
                self.on_dispatch_sent(d)
            try:
                self.workers[d.worker].submit(d)
            except Exception:  # the worker cannot take work: lost, and its work redone elsewhere
                self.log.exception("sending dispatch %d to worker %d failed", d.id, d.worker)
                asyncio.get_running_loop().call_soon(self.lose_worker, d.worker)

    def _resolve(self, run: Run, status: str, outputs: dict, error: str | None, node: str | None = None) -> None:
        result = RunResult(
            run.request_id, run.workflow, status, outputs, error, node, time.perf_counter() - run.submitted_s, run.nodes_total, run.notes
        )
        if not run.future.done():
            run.future.set_result(result)

    def _fail_runs(self, request_ids, reason: str) -> None:
        """End these requests as failed with ``reason``, through the coordinator where it can
        (releasing what they hold), else directly: none is left waiting."""
        for rid in sorted(request_ids):
            try:
                self._carry_out(self.coordinator.fail(rid, reason, self._now()))
            except Exception:
                self.log.exception("failing request %d cleanly failed too", rid)
            run = self._runs.pop(rid, None)
            if run is not None:
                self._resolve(run, "failed", {}, reason)


def _note_approx(record: dict, notes: dict) -> None:
    """Into a run's notes: whether it started from a cached state (``approx_cache``: from which
    step, of which earlier request, how similar its prompt was; the first answer stands, as the
    coordinator acts on it), and the steps whose states it saved (``approx_cache_saved``)."""
    if "approx" in notes and "approx_cache" not in record:
        n = notes["approx"]
        used = {"used": bool(n["skipped"])}
        if n["skipped"]:
            used.update(from_step=n["skipped"], of_steps=n["steps"], from_request=n["from_request"], similarity=round(n["similarity"], 6))
        record["approx_cache"] = used
    if "approx_saved" in notes:
        record.setdefault("approx_cache_saved", []).append(notes["approx_saved"]["step"])


def _to_host(value: Any) -> Any:
    return value.cpu() if hasattr(value, "cpu") else value
