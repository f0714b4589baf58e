"""What the dashboard shows, as typed JSON (so ``/openapi.json`` documents it): one
:class:`Snapshot` of the cluster (workers, queues, batches in flight, latency and deadline
attainment per workflow, usage per tenant, recent runs) and a run's :class:`RunTimeline`."""

from __future__ import annotations

import asyncio
import itertools
import time

from pydantic import BaseModel, Field

from legodiffusion.server.metrics import queue_depths
from legodiffusion.server.state import ServerState
from legodiffusion.server.store import RunRecord

RECENT_RUNS = 12


class WorkerRow(BaseModel):
    worker: int
    device: str
    state: str = Field(description="live, joining, draining or lost")
    resident: list[str] = Field(description="model/component[@scope] held in memory")
    used_bytes: int = Field(description="weight bytes resident on its device")
    budget_bytes: int | None = Field(description="the most it may hold; None: unlimited")
    busy_s: float = Field(description="seconds spent running calls")
    dispatches: int
    loads: int
    evictions: int
    call: dict | None = Field(description="the call it runs now: op, model, running_s, limit_s, stuck, queued behind it")


class BatchRow(BaseModel):
    dispatch: int
    worker: int
    op: str
    model: str | None
    nodes: int = Field(description="nodes batched in the call")
    requests: list[int] = Field(description="engine request ids in the batch")


class PointRow(BaseModel):
    t_s: float = Field(description="when the run ended, Unix seconds")
    latency_s: float
    status: str
    met: bool | None = Field(description="finished within its deadline; None without one")


class WorkflowSeries(BaseModel):
    points: list[PointRow] = Field(description="its last runs, oldest first (bounded)")
    runs: int
    succeeded: int
    p50_s: float | None
    p95_s: float | None
    slo_runs: int = Field(description="runs with a deadline")
    slo_attainment: float | None = Field(description="share of those that met it")


class TenantUsage(BaseModel):
    priority: int = Field(description="priority class rank (0 = high)")
    weight: float
    in_flight: int = Field(description="runs admitted and not ended")
    requests: dict[str, int] = Field(description="ended runs by status")
    refused: dict[str, int] = Field(description="429s by reason")
    gpu_s: float = Field(description="measured seconds of its nodes' calls (a batch's split over its items)")
    work_s: float = Field(default=0.0, description="profiled node seconds the scheduler dispatched for it")
    slo_met: int
    slo_total: int


class RunRow(BaseModel):
    id: str
    workflow: str
    status: str
    created: float
    latency_s: float | None
    images: list[str] = Field(description="URLs of its PNG images")
    timeline: str = Field(description="URL of its node timeline")


class Snapshot(BaseModel):
    time_s: float = Field(description="Unix seconds")
    status: str = Field(description="ready, warming (a preload under way) or degraded (as /readyz)")
    requests: dict[str, int] = Field(description="finished requests by status, as legodiffusion_requests_total counts them")
    requests_in_flight: int
    workers: list[WorkerRow]
    queues: dict[str, int] = Field(description="ready nodes waiting centrally, by operator")
    batches: list[BatchRow] = Field(description="dispatches sent to workers and not reported")
    workflows: dict[str, WorkflowSeries]
    tenants: dict[str, TenantUsage] = Field(description="usage per tenant ('default' when the server has no tenants)")
    runs: list[RunRow] = Field(description="the most recent runs, newest first")


class SpanRow(BaseModel):
    worker: int
    op: str
    model: str | None
    sent_s: float = Field(description="seconds after the run was admitted")
    start_s: float
    end_s: float
    batch: int = Field(description="nodes in the dispatch, of this run and others")
    requests: list[int]
    ok: bool
    nodes: int = Field(description="nodes of this run in the dispatch")
    work_s: float = Field(description="this run's share of the dispatch's run time")


class RunTimeline(BaseModel):
    run: str
    workflow: str
    status: str
    request_id: int | None
    latency_s: float | None
    spans: list[SpanRow] = Field(description="one per dispatch that ran a node of the run, in the order they ended")


async def snapshot(st: ServerState) -> Snapshot:
    engine = st.engine
    health = engine.health()
    workers = list(engine.workers)
    stats = await asyncio.to_thread(lambda: [w.stats() for w in workers])  # a Ray worker's is a remote call
    rows = []
    for h, s in zip(health["workers"], stats):
        rows.append(
            WorkerRow(
                worker=h["worker"],
                device=s.device,
                state=h["state"],
                resident=sorted(s.resident),
                used_bytes=s.used_bytes,
                budget_bytes=s.budget_bytes,
                busy_s=round(s.busy_s, 4),
                dispatches=s.dispatches,
                loads=s.loads,
                evictions=s.evictions,
                call=h.get("call"),
            )
        )
    batches = [
        BatchRow(
            dispatch=d.id, worker=d.worker, op=d.op, model=d.model, nodes=len(d.items), requests=sorted({it.request_id for it in d.items})
        )
        for d in engine.in_flight()
    ]
    return Snapshot(
        time_s=round(time.time(), 3),
        status=health["status"],
        requests=finished_by_status(st),
        requests_in_flight=len(engine.coordinator.requests),
        workers=rows,
        queues=queue_depths(engine),
        batches=batches,
        workflows=st.history.workflows_json(),
        tenants=st.tenant_usage(),
        runs=[run_row(rec) for rec in itertools.islice(reversed(st.runs.records.values()), RECENT_RUNS)],
    )


def finished_by_status(st: ServerState) -> dict[str, int]:
    """The metrics' request counter summed over workflows: the dashboard and ``/metrics`` agree."""
    out: dict[str, int] = {}
    for metric in st.metrics.requests.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                status = sample.labels["status"]
                out[status] = out.get(status, 0) + int(sample.value)
    return out


def run_row(rec: RunRecord) -> RunRow:
    body = rec.to_json(images=False)
    return RunRow(
        id=rec.id,
        workflow=rec.workflow,
        status=body["status"],
        created=rec.created_s,
        latency_s=body.get("latency_s"),
        images=[f"/v1/runs/{rec.id}/images/{i}" for i in range(len(rec.pngs))],
        timeline=f"/v1/runs/{rec.id}/timeline",
    )


def run_timeline(st: ServerState, rec: RunRecord) -> RunTimeline:
    """A run's spans: so far while in flight, all of them once it ended."""
    if rec.run is not None:
        request_id, spans = rec.run.request_id, st.timeline.spans(rec.run.request_id)
    else:
        request_id, spans = (rec.result.request_id if rec.result else None), rec.spans
    body = rec.to_json(images=False)
    return RunTimeline(
        run=rec.id,
        workflow=rec.workflow,
        status=body["status"],
        request_id=request_id,
        latency_s=body.get("latency_s"),
        spans=[SpanRow(**s.to_json()) for s in spans],
    )
