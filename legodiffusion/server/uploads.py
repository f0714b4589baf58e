"""ComfyUI ``LoadImage`` inputs, kept within :class:`~legodiffusion.server.store.Retention`'s caps.

An image is kept as RGB, or RGBA where it has transparency: ComfyUI reads masks from the alpha
channel (``LoadImage``'s MASK, ``LoadImageMask``)."""

from __future__ import annotations

import io
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from legodiffusion.server.errors import ApiError
from legodiffusion.server.store import Evicted, Retention


@dataclass
class _Upload:
    image: Any  # a decoded RGB (or RGBA) PIL image
    nbytes: int
    added_s: float


class UploadStore:
    """ComfyUI ``LoadImage`` inputs by file name, oldest dropped first beyond the byte budget or TTL."""

    def __init__(self, retention: Retention, on_evict: Evicted) -> None:
        self.retention, self.on_evict = retention, on_evict
        self.images: OrderedDict[str, _Upload] = OrderedDict()
        self.bytes_held = 0

    def put(self, name: str, data: bytes) -> None:
        """Decode ``data`` and keep it as ``name``, once its header shows it within the limits: a
        small file may claim a huge image, so the size is read before any pixel is decoded."""
        from PIL import Image

        r = self.retention
        try:
            with warnings.catch_warnings():  # Pillow's bomb warning: the limit below is ours
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = Image.open(io.BytesIO(data))  # reads the header only
        except Image.DecompressionBombError:
            raise ApiError(413, "limit_exceeded", f"{name!r} is too large an image to decode", "image") from None
        except Exception:
            raise ApiError(400, "invalid_image", f"{name!r} is not an image", "image") from None
        w, h = image.size
        if w * h > r.max_upload_pixels:
            raise ApiError(413, "limit_exceeded", f"{name!r} is {w}x{h}, beyond max_upload_pixels={r.max_upload_pixels}", "image")
        mode = "RGBA" if "A" in image.getbands() or "transparency" in image.info else "RGB"
        nbytes = w * h * len(mode)
        if nbytes > r.max_upload_bytes:
            raise ApiError(
                413, "limit_exceeded", f"{name!r} decodes to {nbytes} bytes, beyond max_upload_bytes={r.max_upload_bytes}", "image"
            )
        try:
            rgb = image.convert(mode)
        except Exception:
            raise ApiError(400, "invalid_image", f"{name!r} is not an image", "image") from None
        self._drop(name)
        self.images[name] = _Upload(rgb, nbytes, r.clock())
        self.bytes_held += nbytes
        self.prune()

    def get(self, name: str) -> Any | None:
        self.prune()
        upload = self.images.get(name)
        return None if upload is None else upload.image

    def prune(self) -> None:
        r = self.retention
        expiry = r.clock() - r.ttl_s
        while self.images and next(iter(self.images.values())).added_s <= expiry:
            self._drop(next(iter(self.images)), "ttl")
        while self.images and self.bytes_held > r.max_upload_bytes:
            self._drop(next(iter(self.images)), "bytes")

    def _drop(self, name: str, reason: str | None = None) -> None:
        upload = self.images.pop(name, None)
        if upload is not None:
            self.bytes_held -= upload.nbytes
            if reason:
                self.on_evict("uploads", reason)
