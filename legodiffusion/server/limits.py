"""Request limits, each named in the error that enforces it.

A request's cost is bounded on its expanded graph (:class:`RequestBounds`, checked by
``Engine.prepare``); these limits add what the server owns: bodies, prompts, run counts, and the
queue, bounded in seconds of profiled work as well as in runs. A refusal for a full queue (429)
or an engine without workers (503) says when to come back, in ``Retry-After`` and in the error.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from legodiffusion.core.images import image_size, is_image, mask_mismatch
from legodiffusion.server.errors import ApiError, retry_later, runs_drain_s
from legodiffusion.workflow.bounds import RequestBounds

_B = RequestBounds


@dataclass
class Limits:
    max_body_bytes: int = 32 * 2**20
    """Largest request body."""
    max_pixels: int = _B.max_pixels
    """Largest height x width reaching a node (whatever the workflow calls its size inputs)."""
    max_side: int = _B.max_side
    """Largest height or width reaching a node."""
    max_steps: int = _B.max_steps
    """Largest value reaching a node's ``steps`` port."""
    max_nodes: int = _B.max_nodes
    """Most nodes a request may expand to; checked before it is expanded."""
    max_unprofiled_pixels: int = _B.max_unprofiled_pixels
    """Largest height x width for a model call not profiled at that size or larger."""
    max_request_work_s: float = _B.max_request_work_s
    """Most profiled work (seconds) one run may be, where its models are profiled."""
    max_tensor_bytes: int = _B.max_tensor_bytes
    """Largest tensor one node of a run may make."""
    max_n: int = 8
    """Most runs one request may ask for: OpenAI ``n``, ComfyUI ``batch_size`` (each is one run,
    and all of a request's runs are admitted together or not at all)."""
    max_prompt_chars: int = 4000
    """Longest prompt or negative prompt."""
    max_queued: int = 1000
    """Most runs in flight; a request whose runs do not all fit gets 429 (retryable), whole."""
    max_queue_s: float = 30.0
    """Longest queue, in seconds: the profiled work in flight not yet done (plus a multi-run
    request's own runs ahead of its last) over the live workers, draining at the rate the engine
    measured while saturated (as SLO admission assumes), which is how long a request without a
    deadline waits, must stay within this; beyond, 429 with ``Retry-After``. A request on an idle
    server is admitted whatever its size (``max_request_work_s`` bounds that)."""
    retry_unavailable_s: int = 5
    """``Retry-After`` of a 503 while the engine is starting or has no live worker."""

    def bounds(self) -> RequestBounds:
        """The bounds ``Engine.prepare`` checks each run against."""
        return RequestBounds(**{f.name: getattr(self, f.name) for f in fields(RequestBounds)})

    def check_count(self, n: int, name: str, path: str) -> None:
        """A request's run count ``n`` (its field ``name`` at ``path``): at least 1, at most ``max_n``."""
        if n < 1:
            raise ApiError(400, "invalid_request", f"{name} must be at least 1, got {n}", path)
        if n > self.max_n:
            raise ApiError(400, "limit_exceeded", f"{name}={n} exceeds max_n={self.max_n}", path)

    def check_room(self, n: int, queued: int, queued_work_s: float, own_ahead_s: float, workers: int, drain_factor: float = 1.0) -> None:
        """Room for all ``n`` runs of one request beside the ``queued`` runs in flight, which hold
        ``queued_work_s`` of profiled work not yet done, spread over ``workers`` live workers that
        each complete ``drain_factor`` seconds of profiled work per second (the engine's measured
        drain rate, :class:`~legodiffusion.core.drain.DrainRate`; 1.0 is the profile).
        ``own_ahead_s``: the request's own work queued ahead of its last run (0 for one run, or
        before its runs are costed). The expected wait of its last run is the work ahead of it
        over that capacity; a request on an idle server is admitted whatever its size (that is
        bounded by ``max_request_work_s``)."""
        if workers < 1:
            raise ApiError(503, "unavailable", "no live worker to run it", None, retryable=True, retry_after_s=self.retry_unavailable_s)
        if queued + n > self.max_queued:
            raise retry_later(  # runs leave the queue as they finish, until n fit
                f"{queued} runs in flight and {n} runs asked for: max_queued={self.max_queued}",
                runs_drain_s(queued + n - self.max_queued, queued_work_s, workers * drain_factor, queued),
                "inputs",
            )
        wait_s = (queued_work_s + own_ahead_s) / (workers * drain_factor)
        if wait_s > self.max_queue_s:
            raise retry_later(
                f"{queued_work_s:.1f}s of profiled work in flight over {workers} worker(s) draining at {drain_factor:.2f}x "
                f"the profile: ~{wait_s:.1f}s of waiting, max_queue_s={self.max_queue_s:g}",
                wait_s - self.max_queue_s,
                "inputs",
            )

    def check_inputs(self, inputs: dict) -> None:
        """Prompts within ``max_prompt_chars``; input images within ``max_pixels`` and
        ``max_side`` (413), since an edit is made at its image's size unless the request says
        otherwise; a ``mask`` the size of its ``image`` (400). Sizes, steps and the rest are
        bounded on the expanded graph, whatever the workflow calls them."""
        for key in ("prompt", "negative_prompt"):
            text = inputs.get(key)
            if isinstance(text, str) and len(text) > self.max_prompt_chars:
                raise ApiError(
                    400,
                    "limit_exceeded",
                    f"{key} of {len(text)} characters exceeds max_prompt_chars={self.max_prompt_chars}",
                    f"inputs.{key}",
                )
        for key, value in inputs.items():
            if not is_image(value):
                continue
            w, h = image_size(value)
            if max(w, h) > self.max_side:
                raise ApiError(413, "limit_exceeded", f"{key} is {w}x{h}: a side beyond max_side={self.max_side}", f"inputs.{key}")
            if w * h > self.max_pixels:
                raise ApiError(413, "limit_exceeded", f"{key} is {w}x{h}, beyond max_pixels={self.max_pixels}", f"inputs.{key}")
        mismatch = mask_mismatch(inputs.get("image"), inputs.get("mask"))
        if mismatch is not None:
            raise ApiError(400, "size_mismatch", mismatch, "inputs.mask")
