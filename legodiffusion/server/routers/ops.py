"""Operations: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from legodiffusion.server.state import ServerState, state

router = APIRouter()


@router.get("/healthz")
async def healthz():
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request):
    return {"status": "ready" if hasattr(request.app.state, "server") else "starting"}


@router.get("/metrics")
async def metrics(st: ServerState = Depends(state)):
    st.metrics.held(st.runs, st.uploads, st.workflows)
    return Response(st.metrics.render(st.engine), media_type="text/plain; version=0.0.4")
