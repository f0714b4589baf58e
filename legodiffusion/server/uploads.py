"""Uploaded images (``POST /v1/uploads``, ComfyUI's ``/upload/image``), kept within
:class:`~legodiffusion.server.store.Retention`'s caps."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from legodiffusion.server.images import decode
from legodiffusion.server.store import Evicted, Retention


@dataclass
class _Upload:
    image: Any  # a decoded RGB (or RGBA) PIL image
    nbytes: int
    added_s: float


class UploadStore:
    """Uploaded images by name (an upload id, or a ComfyUI file name), oldest dropped first beyond
    the byte budget or TTL."""

    def __init__(self, retention: Retention, on_evict: Evicted) -> None:
        self.retention, self.on_evict = retention, on_evict
        self.images: OrderedDict[str, _Upload] = OrderedDict()
        self.bytes_held = 0

    def decode(self, data: bytes, what: str, path: str, alpha: bool = False) -> Any:
        """``data`` decoded (:func:`legodiffusion.server.images.decode`) within this server's
        ``max_upload_pixels`` and ``max_upload_bytes``, sized from its header first; every image a
        request carries is decoded so, kept or not. Changes nothing: run it off the event loop."""
        r = self.retention
        return decode(data, what, path, r.max_upload_pixels, r.max_upload_bytes, alpha)

    def put(self, name: str, data: bytes, alpha: bool = False) -> None:
        """Decode ``data`` and keep it as ``name``; with ``alpha``, RGBA where it has transparency
        (ComfyUI reads masks from an image's alpha channel), else RGB."""
        image = self.decode(data, repr(name), "image", alpha)
        if alpha and image.getextrema()[3] == (255, 255):  # opaque: its alpha says nothing
            image = image.convert("RGB")
        self.keep(name, image)

    def keep(self, name: str, image: Any) -> None:
        """Keep a decoded RGB (or RGBA) image as ``name`` (replacing one of that name)."""
        w, h = image.size
        nbytes = w * h * len(image.getbands())
        self._drop(name)
        self.images[name] = _Upload(image, nbytes, self.retention.clock())
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
