"""What the HTTP routers share: the engine, metrics, limits and stores of one server, reached
through :func:`state` (a FastAPI dependency), and the admission of a request's runs."""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass, field

from fastapi import Request

from legodiffusion.config import TenantSpec
from legodiffusion.runtime.engine import Engine
from legodiffusion.runtime.runs import RunResult
from legodiffusion.server.errors import ApiError
from legodiffusion.server.history import History
from legodiffusion.server.limits import Limits
from legodiffusion.server.metrics import Metrics
from legodiffusion.server.store import TERMINAL, Retention, RunRecord, RunStore, WorkflowStore, encode
from legodiffusion.server.tenants import DEFAULT, Tenants, tenant_of
from legodiffusion.server.timeline import Timeline
from legodiffusion.server.uploads import UploadStore

__all__ = ["TERMINAL", "RunRecord", "ServerState", "state", "tenant_of", "wait_for"]
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
        self.tenants = Tenants()

    def tenant_usage(self) -> dict[str, dict]:
        """Per-tenant usage (:meth:`Tenants.usage`), with the profiled node seconds the scheduler
        dispatched for each (``work_s``)."""
        usage = self.tenants.usage()
        for name, work_s in self.engine.coordinator.fair.work_by_tenant().items():
            if name in usage:
                usage[name]["work_s"] = work_s
        return usage

    def on_dispatch(self, d, c) -> None:
        """A dispatch finished (the engine's ``on_dispatch_done``): metrics and tenant usage."""
        self.metrics.on_dispatch(d, c)
        self.tenants.on_dispatch(d, c)

    def model_object(self, workflow: str) -> dict:
        """A workflow as OpenAI describes a model (``created``: when it was registered, in Unix seconds)."""
        created = self.workflows.created_s.get(workflow, self.started_s)
        return {"id": workflow, "object": "model", "created": created, "owned_by": "legodiffusion"}

    async def submit(self, workflow: str, runs: list[dict], slo_s: float | None, tenant: TenantSpec = DEFAULT) -> list[RunRecord]:
        """Admit a request's runs (one set of inputs each) together or not at all, deciding before
        any is queued: each run is expanded, checked and costed off the event loop (a huge
        expansion stalls nothing), then the room for all of them is checked, in runs and in
        seconds of profiled work; a full queue answers 429 with ``Retry-After``, before expanding
        anything when it is full already. A request with a deadline that admission cannot meet
        is answered ``rejected`` (``SLO_REJECTED``) rather than 429, and nothing of it is queued.

        ``tenant``: who sent it (:func:`tenant_of`): its cap on runs in flight and its rate limit
        are checked with the queue's room (429 naming the tenant), its deadline default applies
        when ``slo_s`` is None, and its class and weight order its runs against other tenants'."""
        engine, limits = self.engine, self.limits
        if workflow not in engine.workflows:
            raise ApiError(404, "unknown_workflow", f"unknown workflow {workflow!r}; registered: {sorted(engine.workflows)}", "workflow")
        for inputs in runs:
            limits.check_inputs(inputs)
        slo_s = slo_s if slo_s is not None else tenant.slo_s
        self._check_tenant(tenant, len(runs))
        if slo_s is None:  # full already: refused without expanding anything
            limits.check_room(
                len(runs), len(engine.coordinator.requests), engine.queued_work_s(), 0.0, engine.live_workers(), engine.drain_factor()
            )
        bounds = limits.bounds()
        prepared = await asyncio.to_thread(
            lambda: [engine.prepare(workflow, inputs, slo_s, bounds, tenant.name, tenant.priority, tenant.weight) for inputs in runs]
        )
        self._check_tenant(tenant, len(runs))  # again: others may have been admitted meanwhile
        refusal = next((r for r in map(engine.slo_refusal, prepared) if r is not None), None)
        if refusal is None:
            ahead_s = sum(p.cost.work_s for p in prepared[:-1])  # its own runs queue ahead of its last
            limits.check_room(
                len(runs), len(engine.coordinator.requests), engine.queued_work_s(), ahead_s, engine.live_workers(), engine.drain_factor()
            )
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
        self.tenants.admitted(tenant, len(submitted), [run.request_id for run in submitted if not run.future.done()])
        recs = [self.runs.add(workflow, run) for run in submitted]  # numbered only once admitted
        for rec in recs:
            log.info("run submitted", extra={"run_id": rec.id, "workflow": workflow, "tenant": tenant.name})
            if rec.run.future.done():  # refused at once: the answer says so, not "queued"
                await self._keep(rec, slo_s, tenant, rec.run.future.result())
            else:
                rec.run.future.add_done_callback(functools.partial(self.finished, rec, slo_s, tenant))
        return recs

    def _check_tenant(self, tenant: TenantSpec, n: int) -> None:
        requests = self.engine.coordinator.requests

        def work_s() -> float:
            return sum(r.remaining_s for r in requests.values() if r.req.tenant == tenant.name)

        self.tenants.check(tenant, n, work_s, self.engine.live_workers() * self.engine.drain_factor())

    def finished(self, rec: RunRecord, slo_s: float | None, tenant: TenantSpec, fut: asyncio.Future) -> None:
        self.tenants.ended(rec.run.request_id)
        task = asyncio.get_running_loop().create_task(self._keep(rec, slo_s, tenant, fut.result()))
        self._keeping.add(task)  # held until done: the loop keeps only weak references
        task.add_done_callback(self._keeping.discard)

    async def _keep(self, rec: RunRecord, slo_s: float | None, tenant: TenantSpec, result: RunResult) -> None:
        st = self
        result, pngs = await asyncio.get_running_loop().run_in_executor(None, encode, result)
        st.metrics.requests.labels(rec.workflow, result.status).inc()
        st.tenants.finished(tenant, result.status, slo_s, result.latency_s)
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
        st.history.add(rec.workflow, result.status, result.latency_s, slo_s, st.runs.now())
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
