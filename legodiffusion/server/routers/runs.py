"""The native runs API: submit, poll, cancel, and follow a run's progress as Server-Sent Events."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, Field

from legodiffusion.server import images
from legodiffusion.server.dashboard import RunTimeline, run_timeline
from legodiffusion.server.errors import ApiError
from legodiffusion.server.state import TERMINAL, ServerState, state, tenant_of, wait_for

router = APIRouter()
CANCEL_ANSWER_S = 5.0  # how long a cancel waits for the run's record to say it ended


class RunBody(BaseModel):
    workflow: str = Field(description="a registered workflow id or name")
    inputs: dict[str, Any] = Field(
        default_factory=dict,
        description="the workflow's inputs; an image-typed one (image, mask, control_image...) as a base64 PNG, JPEG or WebP "
        "image, a data: URL of one, or an upload id (POST /v1/uploads)",
    )
    slo_s: float | None = Field(default=None, gt=0, description="deadline in seconds; admission may reject")
    wait: bool = Field(default=False, strict=True, description="block until the run ends and return its images (a JSON boolean)")


@router.post("/v1/runs")
async def create_run(body: RunBody, request: Request, st: ServerState = Depends(state)):
    inputs = await images.resolve(st, body.workflow, body.inputs)
    (rec,) = await st.submit(body.workflow, [inputs], body.slo_s, tenant_of(request))
    if body.wait:
        await wait_for(st, request, [rec])
        return rec.to_json()
    return rec.to_json(images=False)


@router.get("/v1/runs/{run_id}")
async def get_run(run_id: str, st: ServerState = Depends(state)):
    return st.runs.get(run_id).to_json()


@router.get("/v1/runs/{run_id}/timeline", response_model=RunTimeline)
async def get_timeline(run_id: str, st: ServerState = Depends(state)):
    """Where the run's nodes ran: one span per dispatch (worker, operator, sent, start, end, the
    requests batched with it), so far while it runs; kept as long as the run's record."""
    return run_timeline(st, st.runs.get(run_id))


@router.get("/v1/runs/{run_id}/images/{index}", response_class=Response, responses={200: {"content": {"image/png": {}}}})
async def get_image(run_id: str, index: int, st: ServerState = Depends(state)):
    """One image of a finished run, as PNG."""
    rec = st.runs.get(run_id)
    if not 0 <= index < len(rec.pngs):
        raise ApiError(404, "unknown_image", f"run {run_id!r} has {len(rec.pngs)} image(s); no index {index}", "index")
    return Response(rec.pngs[index], media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})


@router.post("/v1/runs/{run_id}/cancel")
async def cancel_run(run_id: str, st: ServerState = Depends(state)):
    rec = st.runs.get(run_id)
    st.cancel([rec])
    with contextlib.suppress(asyncio.TimeoutError):  # a cancelled run ends at once; its record as soon as it is kept
        await asyncio.wait_for(rec.ended.wait(), CANCEL_ANSWER_S)
    return rec.to_json(images=False)


@router.get("/v1/runs/{run_id}/events")
async def run_events(run_id: str, st: ServerState = Depends(state)):
    """Server-Sent Events: progress (nodes done / total) until the run ends, then its result. A
    subscriber leaving does not cancel the run."""
    rec = st.runs.get(run_id)

    async def stream():
        last = None
        while rec.status not in TERMINAL:
            queued = not rec.run.started
            ahead = st.runs.queued_before(rec) if queued else 0
            now = (rec.run.nodes_done, ahead)
            if now != last:
                last = now
                body = rec.to_json(images=False)
                body["queue_position"] = ahead
                yield f"event: progress\ndata: {json.dumps(body)}\n\n"
            await asyncio.sleep(0.05)
        yield f"event: {rec.status}\ndata: {json.dumps(rec.to_json())}\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream")
