"""ComfyUI's prompt API: queue a prompt, upload an image, read the history and the images."""

from __future__ import annotations

import json

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import Response

from legodiffusion.models.components import family_of
from legodiffusion.server.catalog import ModelFamilies, controlnet_family, txt2img_for
from legodiffusion.server.comfy import ComfyError, parse
from legodiffusion.server.comfy_images import images_for
from legodiffusion.server.errors import ApiError, error_body
from legodiffusion.server.state import TERMINAL, ServerState, state, tenant_of

router = APIRouter()


@router.post("/prompt")
async def comfy_prompt(body: dict, request: Request, st: ServerState = Depends(state)):
    try:
        job = parse(body.get("prompt"), ModelFamilies(st.engine.catalog))
        try:
            st.limits.check_count(job.batch, "batch_size", f"prompt.{job.batch_node}.inputs.batch_size")
        except ApiError as exc:
            raise ComfyError(job.batch_node, "EmptyLatentImage", exc.message, code=exc.code, path=exc.path) from None
        if job.controlnets and job.workflow not in st.engine.workflows:  # a ControlNet variant, made once, for the checkpoint's family
            folder = st.engine.catalog.folder(job.model)
            family = family_of(folder)
            for name in job.controlnets:
                steers = controlnet_family(st.engine.catalog.folder(name))
                if steers != family:
                    raise ComfyError(None, None, f"ControlNet {name!r} steers {steers or 'no known'} models, not {job.model!r} ({family})")
            st.workflows.register(txt2img_for(folder, job.model, name=job.workflow, controlnets=tuple(job.controlnets)), job.workflow)
        if job.workflow not in st.engine.workflows:
            raise ComfyError(*(job.origin or (None, None)), f"no built-in workflow {job.workflow!r} for that checkpoint ({job.kind})")
        job.inputs.update(images_for(job.images, st.uploads))
    except ComfyError as exc:
        return Response(
            json.dumps({**error_body(exc.code, exc.message, exc.path), "node_errors": exc.node_errors()}),
            status_code=400,
            media_type="application/json",
        )
    runs = await st.submit(job.workflow, [job.inputs_for(i) for i in range(job.batch)], None, tenant_of(request))
    prompt_id, number = st.runs.add_prompt(job, [r.id for r in runs])
    return {"prompt_id": prompt_id, "number": number, "node_errors": {}}


@router.post("/upload/image")
async def comfy_upload(
    image: UploadFile = File(...), subfolder: str = Form(""), type: str = Form("input"), st: ServerState = Depends(state)
):
    st.uploads.put(image.filename, await image.read(), alpha=True)  # masks are read from the alpha channel
    return {"name": image.filename, "subfolder": subfolder, "type": type}


@router.get("/history/{prompt_id}")
async def comfy_history(prompt_id: str, st: ServerState = Depends(state)):
    found = st.runs.prompt(prompt_id)
    if found is None:
        return {}
    job, recs = found
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
    found = st.runs.prompt(prompt_id)
    if found is None or not index.isdigit() or int(index) >= len(found[1]):
        raise ApiError(404, "not_found", f"no image {filename!r}", "filename")
    rec = found[1][int(index)]
    if not rec.pngs:
        raise ApiError(404, "not_found", f"image {filename!r} is not ready", "filename")
    return Response(rec.pngs[0], media_type="image/png")
