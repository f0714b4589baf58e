"""ComfyUI's prompt API: queue a prompt, upload an image, read the history and the images."""

from __future__ import annotations

import io
import json
import time

from fastapi import APIRouter, Depends, File, Form, UploadFile
from fastapi.responses import Response

from legodiffusion.runtime.images import to_png
from legodiffusion.server.comfy import ComfyError, parse
from legodiffusion.server.errors import ApiError, error_body
from legodiffusion.server.state import TERMINAL, ServerState, state

router = APIRouter()


@router.post("/prompt")
async def comfy_prompt(body: dict, st: ServerState = Depends(state)):
    try:
        job = parse(body.get("prompt"), set(st.engine.catalog.names()))
        try:
            st.limits.check_count(job.batch, "batch_size", f"prompt.{job.batch_node}.inputs.batch_size")
        except ApiError as exc:
            raise ComfyError(job.batch_node, "EmptyLatentImage", exc.message, code=exc.code, path=exc.path) from None
        if job.controlnets and job.workflow not in st.engine.workflows:  # a ControlNet variant, made once
            from legodiffusion.workflow.catalog import sd_txt2img

            st.engine.add_workflow(sd_txt2img(job.model, name=job.workflow, controlnets=tuple(job.controlnets)))
            st.workflow_created_s[job.workflow] = int(time.time())
        if job.workflow not in st.engine.workflows:
            raise ComfyError(None, None, f"no built-in workflow {job.workflow!r} for that checkpoint")
        for i, name in enumerate(job.images):
            if name not in st.uploads:
                raise ComfyError(None, "LoadImage", f"image {name!r} was not uploaded (POST /upload/image)")
            job.inputs["control_image" + (f"_{i}" if i else "")] = st.uploads[name]
    except ComfyError as exc:
        return Response(
            json.dumps({**error_body(exc.code, exc.message, exc.path), "node_errors": exc.node_errors()}),
            status_code=400,
            media_type="application/json",
        )
    runs = st.submit(job.workflow, [{**job.inputs, "seed": job.inputs["seed"] + i} for i in range(job.batch)], None)
    st.counter += 1
    prompt_id = f"prompt-{st.counter}"
    st.comfy_jobs[prompt_id] = (job, [r.id for r in runs])
    return {"prompt_id": prompt_id, "number": st.counter, "node_errors": {}}


@router.post("/upload/image")
async def comfy_upload(
    image: UploadFile = File(...), subfolder: str = Form(""), type: str = Form("input"), st: ServerState = Depends(state)
):
    from PIL import Image

    data = await image.read()
    try:
        st.uploads[image.filename] = Image.open(io.BytesIO(data)).convert("RGB")
    except Exception:
        raise ApiError(400, "invalid_image", f"{image.filename!r} is not an image", "image") from None
    return {"name": image.filename, "subfolder": subfolder, "type": type}


@router.get("/history/{prompt_id}")
async def comfy_history(prompt_id: str, st: ServerState = Depends(state)):
    if prompt_id not in st.comfy_jobs:
        return {}
    job, run_ids = st.comfy_jobs[prompt_id]
    recs = [st.runs[r] for r in run_ids]
    if any(r.status not in TERMINAL for r in recs):
        return {}
    ok = all(r.status == "succeeded" for r in recs)
    images = [
        {"filename": f"{prompt_id}_{i:05d}.png", "subfolder": "", "type": "output"} for i, r in enumerate(recs) if r.status == "succeeded"
    ]
    return {
        prompt_id: {
            "prompt": [],
            "outputs": {job.output_node: {"images": images}},
            "status": {"status_str": "success" if ok else "error", "completed": ok, "messages": []},
        }
    }


@router.get("/view")
async def comfy_view(filename: str, subfolder: str = "", type: str = "output", st: ServerState = Depends(state)):
    prompt_id, _, index = filename.removesuffix(".png").rpartition("_")
    if prompt_id not in st.comfy_jobs or not index.isdigit() or int(index) >= len(st.comfy_jobs[prompt_id][1]):
        raise ApiError(404, "not_found", f"no image {filename!r}", "filename")
    rec = st.runs[st.comfy_jobs[prompt_id][1][int(index)]]
    if rec.result is None or not rec.result.ok:
        raise ApiError(404, "not_found", f"image {filename!r} is not ready", "filename")
    return Response(to_png(rec.result.outputs["image"])[0], media_type="image/png")
