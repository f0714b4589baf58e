"""What policies know about time and memory.

Policies read profiles only through :class:`CostModel`. :class:`ProfileCost` answers from measured
profiles (the nearest measured resolution, interpolated in the batch, when the exact point is missing) and falls back to
:class:`DefaultCost` for models that have not been profiled.
"""

from __future__ import annotations

import math
from typing import Protocol


class CostModel(Protocol):
    def exec_s(self, op: str, mode: str, model: str | None, batch: int, px: int | None) -> float:
        """Seconds to run a batch of ``batch`` nodes at ``px`` image pixels (None: native size)."""

    def load_s(self, model: str, component: str) -> float:
        """Seconds to make a component resident on a worker."""

    def transfer_s(self, nbytes: int) -> float:
        """Seconds to pull ``nbytes`` from another worker."""

    def weight_bytes(self, model: str, component: str) -> int: ...

    def profiled_px(self, op: str, mode: str, model: str | None) -> int | None:
        """The largest image pixels this call is measured at (0: measured, at no particular
        size), or None where :meth:`exec_s` of it is a guess."""


# Worker-to-worker fetch: ~60 us fixed, then bandwidth (DiFlow's measured intra-node figures).
FETCH_FIXED_S = 60e-6
FETCH_BYTES_PER_S = 160e9


class DefaultCost:
    """Order-of-magnitude guesses used before anything is profiled."""

    LIGHT_OPS = frozenset(
        {"sampler_step", "init_latents", "init_step_cache", "upscale_latents", "format_text", "noop", "approx_lookup", "approx_insert"}
    )

    def __init__(self, heavy_s: float = 0.01, light_s: float = 2e-4, load_s: float = 0.5) -> None:
        self.heavy_s = heavy_s
        self.light_s = light_s
        self._load_s = load_s

    def exec_s(self, op, mode, model, batch, px) -> float:
        base = self.light_s if op in self.LIGHT_OPS else self.heavy_s
        return base * (1 + 0.5 * (batch - 1))

    def load_s(self, model, component) -> float:
        return self._load_s

    def transfer_s(self, nbytes: int) -> float:
        return 0.0 if nbytes <= 0 else FETCH_FIXED_S + nbytes / FETCH_BYTES_PER_S

    def weight_bytes(self, model, component) -> int:
        return 0

    def profiled_px(self, op: str, mode: str, model: str | None) -> int | None:
        """The largest image pixels this call is measured at (0: measured, at no particular
        size), or None where :meth:`exec_s` of it is a guess."""
        return None


def nearest(points, batch: int, px: int | None):
    """The measured point closest to (batch, px) on log scales, and a batch scale factor for
    batches beyond the largest measured one."""
    best = min(
        points,
        key=lambda p: (
            abs(math.log2(p.batch) - math.log2(batch)) + (abs(math.log2(max(p.px, 1)) - math.log2(max(px, 1))) if px and p.px else 0.0),
            p.batch,
        ),
    )
    scale = batch / best.batch if batch > best.batch else 1.0
    return best, scale


def interpolate(points, batch: int, px: int | None, value) -> float:
    """``value(point)`` at (batch, px): at the measured resolution nearest ``px``, linear in the
    batch between the two measured batches around it (a batch of 3 between measured 2 and 4 is
    not charged as 4), scaled in proportion beyond the largest, and the smallest's value below it.
    Beyond the largest measured resolution it grows in proportion to the pixels (tokens), as the
    simulator's reference model scales resolution, so a request far larger than anything profiled
    is not charged as the largest profiled one (attention grows faster: profile the sizes you
    serve, which the request bounds ask for beyond ``max_unprofiled_pixels``)."""
    best, _ = nearest(points, batch, px)
    if px and best.px and px > best.px and best.px == max(p.px for p in points):
        return _in_batch(points, best, batch, value) * px / best.px
    return _in_batch(points, best, batch, value)


def _in_batch(points, best, batch: int, value) -> float:
    row = sorted((p for p in points if p.px == best.px), key=lambda p: p.batch)
    below = [p for p in row if p.batch <= batch]
    above = [p for p in row if p.batch >= batch]
    if not below:
        return value(above[0])
    lo = below[-1]
    if not above:
        return value(lo) * batch / lo.batch
    hi = above[0]
    if hi.batch == lo.batch:
        return value(lo)
    f = (batch - lo.batch) / (hi.batch - lo.batch)
    return value(lo) + f * (value(hi) - value(lo))
