"""Images in requests: bytes (an upload, a form's file, a base64 string) decoded into RGB images
once their header shows them within the limits, and the image-typed inputs of a run resolved.

Every image a request carries is decoded here, so every entry point (``POST /v1/uploads``,
``/v1/runs``, ``/v1/images/edits``, ComfyUI's ``/upload/image``) refuses the same things: what is
not a PNG, JPEG or WebP image (400 ``invalid_image``), and an image whose header claims more
pixels than the server decodes (413, before a pixel is decoded: a small file may claim a huge image).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import secrets
import warnings
from typing import Any

from legodiffusion.server.errors import ApiError

FORMATS = ("PNG", "JPEG", "WEBP")
"""The image formats a request may carry (Pillow's names)."""
UPLOAD_PREFIX = "upload-"
"""Upload ids (``POST /v1/uploads``) start with this, which no base64 PNG, JPEG or WebP does."""


def new_upload_id() -> str:
    """Unguessable: an upload is any tenant's to use by its id."""
    return UPLOAD_PREFIX + secrets.token_hex(16)


def decode(data: bytes, what: str, path: str, max_pixels: int, max_bytes: int, alpha: bool = False) -> Any:
    """``data`` as a decoded PIL image, RGB (RGBA with ``alpha``); ``what`` names it in errors and
    ``path`` is the request field at fault. Refused by its header alone when it is beyond
    ``max_pixels`` (width x height) or would decode beyond ``max_bytes`` (3 bytes a pixel, 4 with alpha)."""
    from PIL import Image

    try:
        with warnings.catch_warnings():  # Pillow's bomb warning: the limit below is ours
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=FORMATS)  # reads the header only
    except Image.DecompressionBombError:
        raise ApiError(413, "limit_exceeded", f"{what} is too large an image to decode", path) from None
    except Exception:
        raise ApiError(400, "invalid_image", f"{what} is not a PNG, JPEG or WebP image", path) from None
    w, h = image.size
    if w * h > max_pixels:
        raise ApiError(413, "limit_exceeded", f"{what} is {w}x{h}, beyond max_upload_pixels={max_pixels}", path)
    nbytes = w * h * (4 if alpha else 3)
    if nbytes > max_bytes:
        raise ApiError(413, "limit_exceeded", f"{what} decodes to {nbytes} bytes, beyond max_upload_bytes={max_bytes}", path)
    try:
        return image.convert("RGBA" if alpha else "RGB")
    except Exception:  # a header that reads and pixels that do not (truncated, corrupt)
        raise ApiError(400, "invalid_image", f"{what} is not a PNG, JPEG or WebP image", path) from None


def from_base64(text: str, path: str) -> bytes:
    """The bytes of a base64 string, optionally a ``data:`` URL (``data:image/png;base64,...``)."""
    if text.startswith("data:"):
        header, sep, text = text.partition(",")
        if not sep or not header.endswith(";base64"):
            raise ApiError(400, "invalid_image", f"{path}: a data: URL must be base64 (data:image/png;base64,...)", path)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise ApiError(
            400,
            "invalid_image",
            f"{path} must be a base64 PNG, JPEG or WebP image (or a data: URL of one) or an upload id (POST /v1/uploads); got {shown!r}",
            path,
        ) from None


def openai_mask(mask: Any, path: str = "mask") -> Any:
    """An OpenAI edit mask (an RGBA image; alpha 0, fully transparent, marks the area to edit) in
    our convention: an RGB image, white where to repaint and black where to keep."""
    from PIL import Image

    if mask.mode != "RGBA" or mask.getchannel("A").getextrema()[0] != 0:
        raise ApiError(400, "invalid_image", "mask must have transparent areas (alpha 0), which mark where to edit", path)
    repaint = mask.getchannel("A").point(lambda a: 255 if a == 0 else 0)
    return Image.merge("RGB", (repaint, repaint, repaint))


async def resolve(st, workflow: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """``inputs`` with each image-typed input of ``workflow`` given as a string (an upload id, a
    base64 image or a data: URL of one) replaced by its decoded image. Other values go on as they
    are: an unknown workflow or a wrong type is the engine's to refuse."""
    expander = st.engine.workflows.get(workflow)
    if expander is None:
        return inputs
    out, encoded = dict(inputs), {}
    for name, spec in expander.spec.inputs.items():
        value = inputs.get(name)
        if spec.type != "image" or not isinstance(value, str):
            continue
        if value.startswith(UPLOAD_PREFIX):
            out[name] = st.uploads.get(value)
            if out[name] is None:
                raise ApiError(400, "unknown_upload", f"inputs.{name}: no upload {value!r} (never uploaded, or expired)", f"inputs.{name}")
        else:
            encoded[name] = value
    if encoded:

        def decode_all() -> dict[str, Any]:
            paths = {name: f"inputs.{name}" for name in encoded}
            return {name: st.uploads.decode(from_base64(text, paths[name]), paths[name], paths[name]) for name, text in encoded.items()}

        out.update(await asyncio.to_thread(decode_all))  # a large image takes a while: off the event loop
    return out
