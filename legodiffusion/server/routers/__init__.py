"""One FastAPI router per resource, over the shared :class:`~legodiffusion.server.state.ServerState`."""

from legodiffusion.server.routers import comfy, dashboard, openai, ops, runs, uploads, workflows

ROUTERS = (ops.router, runs.router, uploads.router, workflows.router, openai.router, comfy.router, dashboard.router)
