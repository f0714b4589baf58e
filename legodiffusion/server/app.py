"""The HTTP server: a native v1 workflow API, OpenAI-compatible images and models endpoints and
ComfyUI's prompt API, over the embedded engine. Each resource is a router in
:mod:`legodiffusion.server.routers`; what they share is a :class:`ServerState` on ``app.state``."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI

from legodiffusion.config import EngineConfig
from legodiffusion.runtime.engine import Engine
from legodiffusion.server.errors import install
from legodiffusion.server.guard import Guard
from legodiffusion.server.limits import Limits
from legodiffusion.server.metrics import Metrics
from legodiffusion.server.routers import ROUTERS
from legodiffusion.server.state import ServerState
from legodiffusion.server.store import Retention
from legodiffusion.server.timeline import Timeline, chain


def create_app(
    models: dict[str, str],
    config: EngineConfig | None = None,
    workflows: list | None = None,
    api_keys: set[str] | None = None,
    limits: Limits | None = None,
    retention: Retention | None = None,
    cancel_on_disconnect: bool = True,
) -> FastAPI:
    """``api_keys``: when given, every endpoint but the health checks needs ``Authorization: Bearer KEY``.
    ``retention``: what the server keeps of finished runs, uploads and registered workflows.
    ``cancel_on_disconnect``: a request that waits for its runs (native ``wait``, OpenAI images)
    cancels them when its client goes away."""
    limits = limits or Limits()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine = Engine(models, config or EngineConfig())
        for spec in workflows or []:
            engine.add_workflow(spec)
        metrics, timeline = Metrics(), Timeline()
        engine.on_dispatch_sent = timeline.sent
        engine.on_dispatch_done = chain(metrics.on_dispatch, timeline.done)
        await engine.start()
        app.state.server = ServerState(engine, metrics, limits, retention or Retention(), cancel_on_disconnect, timeline)
        try:
            yield
        finally:
            await engine.stop()

    app = FastAPI(title="legodiffusion", version="0.1.0", lifespan=lifespan)

    app.add_middleware(Guard, api_keys=api_keys, max_body_bytes=limits.max_body_bytes)
    install(app)  # after the guard, so its last-resort handler wraps the guard too
    for router in ROUTERS:
        app.include_router(router)
    return app
