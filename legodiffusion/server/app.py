"""The HTTP server: a native v1 workflow API, OpenAI-compatible images and models endpoints and
ComfyUI's prompt API, over the embedded engine. Each resource is a router in
:mod:`legodiffusion.server.routers`; what they share is a :class:`ServerState` on ``app.state``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI

from legodiffusion.config import EngineConfig, TenantSpec
from legodiffusion.models.store import ModelCatalog
from legodiffusion.runtime.engine import Engine
from legodiffusion.runtime.preload import components
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
    api_keys: set[str] | dict[str, TenantSpec] | None = None,
    limits: Limits | None = None,
    retention: Retention | None = None,
    cancel_on_disconnect: bool = True,
    preload: list[str] | None = None,
) -> FastAPI:
    """``api_keys``: when given, every endpoint but the health checks needs ``Authorization: Bearer KEY``;
    a dict gives each key's tenant (:func:`legodiffusion.config.tenant_keys` reads the keys file),
    a set puts every key in the default tenant.
    ``retention``: what the server keeps of finished runs, uploads and registered workflows.
    ``cancel_on_disconnect``: a request that waits for its runs (native ``wait``, OpenAI images)
    cancels them when its client goes away.
    ``preload``: model names (``all``: every pipeline model) whose components the workers load
    once the server starts, before any request asks (:mod:`legodiffusion.runtime.preload`);
    ``/readyz`` answers 503 ``warming`` until those loads are done, and requests are taken
    meanwhile. A name that cannot be preloaded raises ValueError here."""
    limits = limits or Limits()
    if preload:
        components(ModelCatalog(models), preload)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine = Engine(models, config or EngineConfig())
        for spec in workflows or []:
            engine.add_workflow(spec)
        metrics, timeline = Metrics(), Timeline()
        await engine.start()
        server = ServerState(engine, metrics, limits, retention or Retention(), cancel_on_disconnect, timeline)
        engine.on_dispatch_sent = timeline.sent
        engine.on_dispatch_done = chain(server.on_dispatch, timeline.done)
        metrics.watch_tenants(server.tenant_usage)
        app.state.server = server
        warming = asyncio.create_task(_preload(engine, preload)) if preload else None
        try:
            yield
        finally:
            if warming is not None:
                warming.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await warming
            await engine.stop()

    app = FastAPI(title="legodiffusion", version="0.1.0", lifespan=lifespan)

    keys = dict.fromkeys(api_keys, TenantSpec()) if isinstance(api_keys, (set, frozenset, list)) else api_keys
    app.add_middleware(Guard, api_keys=keys or None, max_body_bytes=limits.max_body_bytes)
    install(app)  # after the guard, so its last-resort handler wraps the guard too
    for router in ROUTERS:
        app.include_router(router)
    return app


async def _preload(engine: Engine, models: list[str]) -> None:
    """The server's preload, logged; a failure is logged, never raised (the server serves on and
    loads on demand)."""
    log = logging.getLogger("legodiffusion.server")
    try:
        report = await engine.preload(models)
    except Exception:
        log.exception("preloading %s failed", ", ".join(models))
        return
    log.info("preloaded %s in %.1f s: %s", ", ".join(models), report.seconds, report.summary())
