"""Uploads: an image sent once and named by id in any number of runs (``inputs.image``,
``inputs.mask``, ...), kept within the server's retention of uploads."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, File, UploadFile

from legodiffusion.server.images import new_upload_id
from legodiffusion.server.state import ServerState, state

router = APIRouter()


@router.post("/v1/uploads")
async def create_upload(file: UploadFile = File(..., description="a PNG, JPEG or WebP image"), st: ServerState = Depends(state)):
    """Keep an image (decoded once, here) and answer its id, which a run's image-typed input
    takes in place of the image until the upload expires (``ttl_s``, or the byte budget)."""
    image = await asyncio.to_thread(st.uploads.decode, await file.read(), repr(file.filename or "file"), "file")
    upload_id = new_upload_id()
    st.uploads.keep(upload_id, image)
    return {"id": upload_id, "width": image.width, "height": image.height, "expires_in_s": st.retention.ttl_s}
