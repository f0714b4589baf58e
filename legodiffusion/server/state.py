"""What the HTTP routers share: the engine, metrics, limits and run records of one server, reached
through :func:`state` (a FastAPI dependency), and the admission of a request's runs."""

from __future__ import annotations

import asyncio
import base64
import functools
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from legodiffusion.runtime.engine import Engine, Run, RunResult
from legodiffusion.runtime.images import to_png
from legodiffusion.server.errors import ApiError
from legodiffusion.server.limits import Limits
from legodiffusion.server.metrics import Metrics

TERMINAL = ("succeeded", "failed", "rejected", "cancelled")
log = logging.getLogger("legodiffusion.server")


@dataclass
class RunRecord:
    id: str
    workflow: str
    created_s: float
    run: Run | None = None
    result: RunResult | None = None
    status: str = "running"

    def to_json(self, images: bool = True) -> dict:
        status = self.status
        if status == "running" and self.run is not None and not self.run.started:
            status = "queued"  # admitted, no model call finished yet
        out: dict[str, Any] = {"id": self.id, "workflow": self.workflow, "status": status, "created": self.created_s}
        if self.run is not None:
            out["progress"] = {"nodes_done": self.run.nodes_done, "nodes_total": self.run.nodes_total, "steps_done": self.run.steps_done}
        if self.result is not None:
            out["latency_s"] = self.result.latency_s
            if self.result.error:
                out["error"] = {
                    "code": "SLO_REJECTED" if self.status == "rejected" else "node_failed",
                    "message": self.result.error,
                    "node": self.result.node,
                }
            if images and self.result.ok and "image" in self.result.outputs:
                out["images"] = [base64.b64encode(p).decode() for p in to_png(self.result.outputs["image"])]
            if self.result.notes:
                out["notes"] = self.result.notes
        return out


@dataclass
class ServerState:
    engine: Engine
    metrics: Metrics
    limits: Limits
    runs: dict[str, RunRecord] = field(default_factory=dict)
    comfy_jobs: dict[str, tuple] = field(default_factory=dict)  # prompt id -> (ComfyJob, run ids)
    uploads: dict[str, Any] = field(default_factory=dict)  # ComfyUI LoadImage inputs, by file name
    counter: int = 0
    started_s: int = field(default_factory=lambda: int(time.time()))
    workflow_created_s: dict[str, int] = field(default_factory=dict)  # those registered after start

    def model_object(self, workflow: str) -> dict:
        """A workflow as OpenAI describes a model (``created``: when it was registered, in Unix seconds)."""
        created = self.workflow_created_s.get(workflow, self.started_s)
        return {"id": workflow, "object": "model", "created": created, "owned_by": "legodiffusion"}

    def submit(self, workflow: str, runs: list[dict], slo_s: float | None) -> list[RunRecord]:
        """Admit a request's runs (one set of inputs each) together or not at all: the limits and the
        room for every run are checked before any is submitted, and should the engine refuse one
        (bad inputs), those already submitted are cancelled at once and none is recorded."""
        st, limits = self, self.limits
        if workflow not in st.engine.workflows:
            raise ApiError(404, "unknown_workflow", f"unknown workflow {workflow!r}; registered: {sorted(st.engine.workflows)}", "workflow")
        for inputs in runs:
            limits.check_inputs(inputs)
        limits.check_room(len(runs), queued=len(st.engine.coordinator.requests))
        recs: list[RunRecord] = []
        try:
            for inputs in runs:
                st.counter += 1
                rec = RunRecord(f"run-{st.counter}", workflow, time.time())
                rec.run = st.engine.submit(workflow, inputs, slo_s=slo_s)
                recs.append(rec)
        except Exception:
            for rec in recs:
                st.engine.cancel(rec.run.request_id)
            raise
        for rec in recs:
            log.info("run submitted", extra={"run_id": rec.id, "workflow": workflow})
            rec.run.future.add_done_callback(functools.partial(self.finished, rec, slo_s))
            st.runs[rec.id] = rec
        return recs

    def finished(self, rec: RunRecord, slo_s: float | None, fut: asyncio.Future) -> None:
        st = self
        rec.result = fut.result()
        rec.status = rec.result.status
        st.metrics.requests.labels(rec.workflow, rec.status).inc()
        log.info(
            "run %s",
            rec.status,
            extra={"run_id": rec.id, "workflow": rec.workflow, "latency_s": round(rec.result.latency_s, 4), "error": rec.result.error},
        )
        if rec.status == "rejected":
            st.metrics.rejections.inc()
        if slo_s is not None:
            st.metrics.slo_total.inc()
            if rec.status == "succeeded" and rec.result.latency_s <= slo_s:
                st.metrics.slo_met.inc()


def state(request: Request) -> ServerState:
    """The server's shared state (a FastAPI dependency); set by the app's lifespan."""
    return request.app.state.server
