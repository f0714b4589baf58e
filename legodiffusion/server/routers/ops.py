"""Operations: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from legodiffusion.server.state import ServerState, state

router = APIRouter()


@router.get("/healthz")
async def healthz():
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request):
    """Ready when a live worker can take work and no preload is under way (else 503 ``warming``);
    503 ``degraded`` when no live worker can take work; with the per-worker view."""
    if not hasattr(request.app.state, "server"):
        return JSONResponse({"status": "starting"}, status_code=503)
    health = request.app.state.server.engine.health()
    return JSONResponse(health, status_code=200 if health["status"] == "ready" else 503)


@router.get("/metrics")
async def metrics(st: ServerState = Depends(state)):
    st.metrics.held(st.runs, st.uploads, st.workflows)
    return Response(st.metrics.render(st.engine), media_type="text/plain; version=0.0.4")
