"""The live dashboard: a plain HTML page and its script (``server/static``, no build step), fed by
a JSON snapshot of the cluster and a Server-Sent Events stream of snapshots."""

from __future__ import annotations

import asyncio
from importlib.resources import files

from fastapi import APIRouter, Depends, Query
from fastapi.responses import HTMLResponse, Response, StreamingResponse

from legodiffusion.server.dashboard import Snapshot, snapshot
from legodiffusion.server.errors import ApiError
from legodiffusion.server.state import ServerState, state

router = APIRouter()
STATIC = files("legodiffusion.server") / "static"
ASSETS = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}
STREAM_S = 30.0
"""How long one events stream lasts; the browser reconnects at once (``retry``). Bounded so that an
open dashboard never holds up the server's graceful shutdown for longer."""


@router.get("/dashboard", include_in_schema=False)
async def dashboard_page():
    return HTMLResponse((STATIC / "dashboard.html").read_text())


@router.get("/dashboard/{asset}", include_in_schema=False)
async def dashboard_asset(asset: str):
    if asset not in ASSETS:
        raise ApiError(404, "not_found", f"no dashboard asset {asset!r}", "asset")
    return Response((STATIC / asset).read_text(), media_type=ASSETS[asset])


@router.get("/v1/dashboard", response_model=Snapshot)
async def dashboard_snapshot(st: ServerState = Depends(state)):
    """The cluster now: workers (resident models, memory, the call each runs), queues per operator,
    batches in flight, latency and deadline attainment per workflow, usage per tenant, recent runs."""
    return await snapshot(st)


@router.get(
    "/v1/dashboard/events",
    response_class=StreamingResponse,
    responses={200: {"description": "`event: snapshot` every `interval_s`, its data a Snapshot", "content": {"text/event-stream": {}}}},
)
async def dashboard_events(interval_s: float = Query(1.0, ge=0.2, le=10.0), st: ServerState = Depends(state)):
    """Server-Sent Events: a :class:`Snapshot` every ``interval_s`` seconds. Each stream ends after
    30 s with ``retry`` set, and browsers reconnect at once."""

    async def stream():
        yield "retry: 500\n\n"
        for _ in range(max(1, int(STREAM_S / interval_s))):
            body = (await snapshot(st)).model_dump_json()
            yield f"event: snapshot\ndata: {body}\n\n"
            await asyncio.sleep(interval_s)

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
