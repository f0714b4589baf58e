"""What the HTTP routers share: the engine, metrics, limits and stores of one server, reached
through :func:`state` (a FastAPI dependency), and the admission of a request's runs."""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass, field

from fastapi import Request

from legodiffusion.runtime.engine import Engine, RunResult
from legodiffusion.server.errors import ApiError
from legodiffusion.server.history import DEFAULT_TENANT, History
from legodiffusion.server.limits import Limits
from legodiffusion.server.metrics import Metrics
from legodiffusion.server.store import TERMINAL, Retention, RunRecord, RunStore, WorkflowStore, encode
from legodiffusion.server.timeline import Timeline
from legodiffusion.server.uploads import UploadStore

__all__ = ["TERMINAL", "RunRecord", "ServerState", "state", "wait_for"]
log = logging.getLogger("legodiffusion.server")


@dataclass
class ServerState:
    engine: Engine
    metrics: Metrics
    limits: Limits
    retention: Retention = field(default_factory=Retention)
    cancel_on_disconnect: bool = True
    """Cancel the runs of a request that holds its connection open until they end (native
    ``wait``, OpenAI images) when its client goes away."""
    timeline: Timeline = field(default_factory=Timeline)
    """Where the nodes of the runs in flight ran (fed by the engine's dispatch hooks)."""

    def __post_init__(self) -> None:
        evicted = self.metrics.evicted
        self.runs = RunStore(self.retention, evicted)
        self.uploads = UploadStore(self.retention, evicted)
        self.workflows = WorkflowStore(self.engine, self.retention, evicted)
        self.history = History()
        self.started_s = int(self.retention.clock())
        self._keeping: set[asyncio.Task] = set()

    def model_object(self, workflow: str) -> dict:
        """A workflow as OpenAI describes a model (``created``: when it was registered, in Unix seconds)."""
        created = self.workflows.created_s.get(workflow, self.started_s)
        return {"id": workflow, "object": "model", "created": created, "owned_by": "legodiffusion"}

    async def submit(self, workflow: str, runs: list[dict], slo_s: float | None) -> list[RunRecord]:
        """Admit a request's runs (one set of inputs each) together or not at all, deciding before
        any is queued: each run is expanded, checked and costed off the event loop (a huge
        expansion stalls nothing), then the room for all of them is checked, in runs and in
        seconds of profiled work; a full queue answers 429 with ``Retry-After``, before expanding
        anything when it is full already. A request with a deadline that admission cannot meet
        is answered ``rejected`` (``SLO_REJECTED``) rather than 429, and nothing of it is queued."""
        engine, limits = self.engine, self.limits
        if workflow not in engine.workflows:
            raise ApiError(404, "unknown_workflow", f"unknown workflow {workflow!r}; registered: {sorted(engine.workflows)}", "workflow")
        for inputs in runs:
            limits.check_inputs(inputs)
        if slo_s is None:  # full already: refused without expanding anything
            limits.check_room(len(runs), len(engine.coordinator.requests), engine.queued_work_s(), 0.0, engine.live_workers())
        bounds = limits.bounds()
        prepared = await asyncio.to_thread(lambda: [engine.prepare(workflow, inputs, slo_s, bounds) for inputs in runs])
        refusal = next((r for r in map(engine.slo_refusal, prepared) if r is not None), None)
        if refusal is None:
            ahead_s = sum(p.cost.work_s for p in prepared[:-1])  # its own runs queue ahead of its last
            limits.check_room(len(runs), len(engine.coordinator.requests), engine.queued_work_s(), ahead_s, engine.live_workers())
        submitted = []  # no await from the room check to here: nothing else is admitted between
        try:
            for p in prepared:
                submitted.append(engine.refuse(p, refusal) if refusal is not None else engine.submit_prepared(p))
                self.timeline.open(submitted[-1].request_id)  # before any of its dispatches can report
        except Exception:
            for run in submitted:
                engine.cancel(run.request_id)
                self.timeline.close(run.request_id)
            raise
        self.workflows.touch(workflow)
        recs = [self.runs.add(workflow, run) for run in submitted]  # numbered only once admitted
        for rec in recs:
            log.info("run submitted", extra={"run_id": rec.id, "workflow": workflow})
            if rec.run.future.done():  # refused at once: the answer says so, not "queued"
                await self._keep(rec, slo_s, rec.run.future.result())
            else:
                rec.run.future.add_done_callback(functools.partial(self.finished, rec, slo_s))
        return recs

    def finished(self, rec: RunRecord, slo_s: float | None, fut: asyncio.Future) -> None:
        task = asyncio.get_running_loop().create_task(self._keep(rec, slo_s, fut.result()))
        self._keeping.add(task)  # held until done: the loop keeps only weak references
        task.add_done_callback(self._keeping.discard)

    async def _keep(self, rec: RunRecord, slo_s: float | None, result: RunResult) -> None:
        st = self
        result, pngs = await asyncio.get_running_loop().run_in_executor(None, encode, result)
        st.metrics.requests.labels(rec.workflow, result.status).inc()
        log.info(
            "run %s",
            result.status,
            extra={"run_id": rec.id, "workflow": rec.workflow, "latency_s": round(result.latency_s, 4), "error": result.error},
        )
        if result.status == "rejected":
            st.metrics.rejections.inc()
        if slo_s is not None:
            st.metrics.slo_total.inc()
            if result.status == "succeeded" and result.latency_s <= slo_s:
                st.metrics.slo_met.inc()
        spans = st.timeline.close(result.request_id)
        work_s = sum(s.work_s for s in spans)
        st.history.add(rec.workflow, DEFAULT_TENANT, result.status, result.latency_s, slo_s, work_s, st.runs.now())
        st.runs.finish(rec, result, pngs, spans)

    def cancel(self, recs: list[RunRecord]) -> None:
        """Cancel those of ``recs`` still in flight."""
        for rec in recs:
            if rec.status not in TERMINAL:
                self.engine.cancel(rec.run.request_id)


async def wait_for(st: ServerState, request: Request, recs: list[RunRecord]) -> None:
    """Until every run of ``recs`` has ended; should the client go away first (and
    ``cancel_on_disconnect``), its runs are cancelled and this returns at once."""
    ended = asyncio.gather(*(r.ended.wait() for r in recs))
    if not st.cancel_on_disconnect:
        await ended
        return
    left = asyncio.ensure_future(_disconnect(request))
    try:
        await asyncio.wait((ended, left), return_when=asyncio.FIRST_COMPLETED)
    finally:
        left.cancel()
    if not ended.done():
        log.info("client went away; cancelling its runs", extra={"run_id": ",".join(r.id for r in recs)})
        ended.cancel()
        ended.add_done_callback(_retrieved)
        st.cancel(recs)


def _retrieved(fut: asyncio.Future) -> None:
    """A cancelled gather ends holding CancelledError as its exception; read, it is not logged as
    an error never retrieved."""
    if not fut.cancelled():
        fut.exception()


async def _disconnect(request: Request) -> None:
    """Returns when the client closes its connection (the body has been read by then)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def state(request: Request) -> ServerState:
    """The server's shared state (a FastAPI dependency); set by the app's lifespan (before it,
    503 with ``Retry-After``)."""
    server = getattr(request.app.state, "server", None)
    if server is None:
        raise ApiError(503, "unavailable", "the server is starting", None, retryable=True, retry_after_s=Limits.retry_unavailable_s)
    return server
