"""OpenAI-compatible images and models endpoints; a model is a registered workflow."""

from __future__ import annotations

import base64
import time
from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from legodiffusion.server.errors import ApiError
from legodiffusion.server.state import ServerState, state, tenant_of, wait_for

router = APIRouter()


class ImagesBody(BaseModel):
    model: str
    prompt: str
    n: int = Field(default=1, ge=1)
    size: str | None = None
    response_format: str = "b64_json"
    seed: int | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    negative_prompt: str | None = None


@router.get("/v1/models")
async def openai_models(st: ServerState = Depends(state)):
    """OpenAI-compatible: the workflows a client may pass as ``model`` to /v1/images/generations."""
    return {"object": "list", "data": [st.model_object(name) for name in sorted(st.engine.workflows)]}


@router.get("/v1/models/{model_id:path}")
async def openai_model(model_id: str, st: ServerState = Depends(state)):
    if model_id not in st.engine.workflows:
        raise ApiError(404, "unknown_model", f"no workflow {model_id!r}; GET /v1/models lists them", "model")
    return st.model_object(model_id)


@router.post("/v1/images/generations")
async def openai_images(body: ImagesBody, request: Request, st: ServerState = Depends(state)):
    """OpenAI-compatible: ``model`` is a registered workflow id or name."""
    st.limits.check_count(body.n, "n", "n")
    if body.response_format != "b64_json":
        raise ApiError(400, "unsupported_response_format", "only response_format=b64_json is supported", "response_format")
    inputs: dict[str, Any] = {"prompt": body.prompt}
    if body.size:
        try:
            w, h = (int(x) for x in body.size.lower().split("x"))
        except ValueError:
            raise ApiError(400, "invalid_size", f"size must be WIDTHxHEIGHT, got {body.size!r}", "size") from None
        inputs.update(width=w, height=h)
    for key in ("steps", "guidance_scale", "negative_prompt"):
        if getattr(body, key) is not None:
            inputs[key] = getattr(body, key)
    base_seed = body.seed or 0
    recs = await st.submit(body.model, [{**inputs, "seed": base_seed + i} for i in range(body.n)], None, tenant_of(request))
    await wait_for(st, request, recs)
    failed = [r for r in recs if r.status != "succeeded"]
    if failed:
        error = failed[0].result
        raise ApiError(422 if error.status == "failed" else 429, "generation_failed", error.error or error.status, error.node)
    data = [{"b64_json": base64.b64encode(r.pngs[0]).decode()} for r in recs]
    return {"created": int(time.time()), "data": data}
