"""The native runs API: submit, poll, cancel, and follow a run's progress as Server-Sent Events."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from legodiffusion.server.errors import ApiError
from legodiffusion.server.state import TERMINAL, RunRecord, ServerState, state

router = APIRouter()


class RunBody(BaseModel):
    workflow: str = Field(description="a registered workflow id or name")
    inputs: dict[str, Any] = Field(default_factory=dict)
    slo_s: float | None = Field(default=None, gt=0, description="deadline in seconds; admission may reject")
    wait: bool = Field(default=False, strict=True, description="block until the run ends and return its images (a JSON boolean)")


def _record(st: ServerState, run_id: str) -> RunRecord:
    rec = st.runs.get(run_id)
    if rec is None:
        raise ApiError(404, "unknown_run", f"no run {run_id!r}", "run_id")
    return rec


@router.post("/v1/runs")
async def create_run(body: RunBody, st: ServerState = Depends(state)):
    (rec,) = st.submit(body.workflow, [body.inputs], body.slo_s)
    if body.wait:
        await asyncio.shield(rec.run.future)
        await asyncio.sleep(0)  # let the done-callback record the result
        return rec.to_json()
    return rec.to_json(images=False)


@router.get("/v1/runs/{run_id}")
async def get_run(run_id: str, st: ServerState = Depends(state)):
    return _record(st, run_id).to_json()


@router.post("/v1/runs/{run_id}/cancel")
async def cancel_run(run_id: str, st: ServerState = Depends(state)):
    rec = _record(st, run_id)
    if rec.status not in TERMINAL:
        st.engine.cancel(rec.run.request_id)
        await asyncio.sleep(0)
    return rec.to_json(images=False)


@router.get("/v1/runs/{run_id}/events")
async def run_events(run_id: str, st: ServerState = Depends(state)):
    """Server-Sent Events: progress (nodes done / total) until the run ends, then its result."""
    rec = _record(st, run_id)

    async def stream():
        last = None
        while rec.status not in TERMINAL:
            queued = not rec.run.started
            ahead = (
                sum(1 for r in st.runs.values() if r.created_s < rec.created_s and r.status == "running" and not r.run.started)
                if queued
                else 0
            )
            now = (rec.run.nodes_done, ahead)
            if now != last:
                last = now
                body = rec.to_json(images=False)
                body["queue_position"] = ahead
                yield f"event: progress\ndata: {json.dumps(body)}\n\n"
            await asyncio.sleep(0.05)
        yield f"event: {rec.status}\ndata: {json.dumps(rec.to_json())}\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream")
