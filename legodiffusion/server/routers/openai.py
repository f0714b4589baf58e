"""OpenAI-compatible images and models endpoints; a model is a registered workflow.

``/v1/images/edits`` takes OpenAI's multipart form. Its ``model`` names a workflow that takes an
``image``, or a model (or one of its built-in workflows, ``<model>-txt2img``...), whose
``<model>-img2img`` edits without a mask and ``<model>-inpaint`` with one. OpenAI's mask marks the
area to edit by transparency (alpha 0); it is turned into our convention (white repaints) here.
"""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from pydantic import BaseModel, Field

from legodiffusion.server.errors import ApiError
from legodiffusion.server.images import openai_mask
from legodiffusion.server.state import ServerState, state, tenant_of, wait_for

router = APIRouter()
EDIT_SUFFIXES = ("-txt2img", "-img2img", "-inpaint")
"""The built-in workflows of a model are ``<model><suffix>``."""


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
    _check(st, body.n, body.response_format)
    inputs = {"prompt": body.prompt, **_size(body.size), **_extras(body)}
    return await _answer(st, request, body.model, inputs, body.n, body.seed)


@router.post("/v1/images/edits")
async def openai_edits(
    request: Request,
    model: str = Form(...),
    prompt: str = Form(...),
    image: UploadFile | None = File(None, description="the image to edit (PNG, JPEG or WebP)"),
    image_list: list[UploadFile] | None = File(None, alias="image[]", description="OpenAI's list form of image: exactly one here"),
    mask: UploadFile | None = File(None, description="PNG whose transparent (alpha 0) pixels mark where to edit; the image's size"),
    n: int = Form(1),
    size: str | None = Form(None),
    response_format: str = Form("b64_json"),
    seed: int | None = Form(None),
    steps: int | None = Form(None),
    guidance_scale: float | None = Form(None),
    negative_prompt: str | None = Form(None),
    strength: float | None = Form(None, description="how much to change, 0 < strength <= 1 (default: the workflow's)"),
    st: ServerState = Depends(state),
):
    """OpenAI-compatible image edits: ``<model>-img2img`` without a mask, ``<model>-inpaint`` with
    one (see the module doc); ``strength`` and the generations extras pass on to the workflow."""
    _check(st, n, response_format)
    files = [f for f in [image, *(image_list or [])] if f is not None]
    if len(files) != 1:
        raise ApiError(400, "invalid_request", f"give exactly one image to edit, got {len(files)}", "image")
    workflow = _edit_workflow(st, model, mask is not None)
    data, mask_data = await files[0].read(), await mask.read() if mask is not None else None

    def decode() -> dict[str, Any]:  # off the event loop: a large image takes a while
        out = {"image": st.uploads.decode(data, "image", "image")}
        if mask_data is not None:
            out["mask"] = openai_mask(st.uploads.decode(mask_data, "mask", "mask", alpha=True))
        return out

    extras = {"steps": steps, "guidance_scale": guidance_scale, "negative_prompt": negative_prompt, "strength": strength}
    inputs = {"prompt": prompt, **(await asyncio.to_thread(decode)), **_size(size), **{k: v for k, v in extras.items() if v is not None}}
    return await _answer(st, request, workflow, inputs, n, seed)


def _check(st: ServerState, n: int, response_format: str) -> None:
    """What an images request is refused for before anything of it is read further."""
    st.limits.check_count(n, "n", "n")
    if response_format != "b64_json":
        raise ApiError(400, "unsupported_response_format", "only response_format=b64_json is supported", "response_format")


def _size(size: str | None) -> dict[str, int]:
    if not size:
        return {}
    try:
        w, h = (int(x) for x in size.lower().split("x"))
    except ValueError:
        raise ApiError(400, "invalid_size", f"size must be WIDTHxHEIGHT, got {size!r}", "size") from None
    return {"width": w, "height": h}


def _extras(body: ImagesBody) -> dict[str, Any]:
    return {key: getattr(body, key) for key in ("steps", "guidance_scale", "negative_prompt") if getattr(body, key) is not None}


def _edit_workflow(st: ServerState, model: str, masked: bool) -> str:
    """The workflow an edit of ``model`` runs (see the module doc)."""
    workflows = st.engine.workflows
    named = workflows.get(model)
    if named is not None and "image" in named.spec.inputs and ("mask" in named.spec.inputs) == masked:
        return model
    base = next((model.removesuffix(s) for s in EDIT_SUFFIXES if model.endswith(s)), model)
    if named is None and base == model and model not in st.engine.catalog.names():
        raise ApiError(404, "unknown_model", f"no workflow or model {model!r}; GET /v1/models lists the workflows", "model")
    wanted = f"{base}-inpaint" if masked else f"{base}-img2img"
    if wanted in workflows:
        return wanted
    if masked:
        raise ApiError(
            400,
            "unsupported_mask",
            f"{model!r} has no inpaint workflow ({wanted!r} is not registered): edit without a mask, or name a workflow that takes one",
            "mask",
        )
    raise ApiError(400, "unknown_model", f"{model!r} has no image-to-image workflow ({wanted!r} is not registered)", "model")


async def _answer(st: ServerState, request: Request, workflow: str, inputs: dict[str, Any], n: int, seed: int | None) -> dict:
    """Run ``n`` images of ``workflow`` (seeds ``seed``, ``seed`` + 1, ...) for the request's
    tenant, wait for them (cancelled should the client go away) and answer them as OpenAI does."""
    base_seed = seed or 0
    recs = await st.submit(workflow, [{**inputs, "seed": base_seed + i} for i in range(n)], None, tenant_of(request))
    await wait_for(st, request, recs)
    failed = [r for r in recs if r.status != "succeeded"]
    if failed:
        error = failed[0].result
        raise ApiError(422 if error.status == "failed" else 429, "generation_failed", error.error or error.status, error.node)
    data = [{"b64_json": base64.b64encode(r.pngs[0]).decode()} for r in recs]
    return {"created": int(time.time()), "data": data}
