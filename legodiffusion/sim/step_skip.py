"""Step caching in simulation: a denoiser call of a request that opted in skips all but its first
block with a probability drawn per call and per sample (as the live cache decides per sample,
``ops/block_cache.py``), and then costs only that first block; a batch runs the first block for
every sample and the rest for those that compute. Both the share of calls skipped and the first
block's share of a call are per base model: a workflow's skips follow its model and step count.

The figures (``fbcache``), per model of the reference file:

* ``flux-dev`` (28 steps): diffusers' ParaAttention guide reports First Block Cache at its default
  threshold for FLUX (0.08) making FLUX.1-dev 2x faster at 28 steps
  (huggingface.co/docs/diffusers/optimization/para_attn). FLUX.1-dev has 19 double-stream and 38
  single-stream blocks, a double block about twice a single one's work, so the first block is about
  1/38 of the call. A 2x speed-up means a share s of calls skipped with (1 - s) + s/38 = 1/2,
  s ~ 0.51, an average over a request's calls (its first call, which has nothing cached, included).
* ``sd3.5-large`` (38 MMDiT blocks) and ``sd3-medium`` (24): no published First Block Cache figure
  was found; the same share of calls as FLUX.1-dev at the same threshold and a similar step count
  (28) is *assumed*, with the first block 1/38 and 1/24 of a call.
* ``flux-schnell`` and ``sd3.5-large-turbo`` (4 distilled steps) and models not listed: no skips.
  A few-step schedule changes the latents a lot from one step to the next and its first call (never
  skipped) is a quarter of the work; no published speed-up was found, so none is assumed, and their
  requests do not opt in.

The coordinator is not told in advance which calls skip: its estimates stay the full calls'.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

MODELS = ("fbcache",)
#: the request input a step-cached request carries (diffusers' default threshold for FLUX)
REQUEST_INPUT = '{"kind": "first_block", "threshold": 0.08}'


@dataclass(frozen=True)
class Share:
    """How one base model's denoiser calls skip."""

    skip: float  # share of a request's denoiser calls that skip all but the first block
    head: float  # what a skipped call costs, relative to a full one (the first block's share)
    source: str


@dataclass(frozen=True)
class StepCacheModel:
    shares: Mapping[str, Share]  # base model -> its share; models not listed never skip
    seed: int = 0
    _none: Share = field(default=Share(0.0, 1.0, "not step cached"), repr=False)

    def share(self, model: str | None) -> Share:
        return self.shares.get(model, self._none)

    def caches(self, model: str | None) -> bool:
        """Whether requests on ``model`` opt in (it has calls to skip)."""
        return self.share(model).skip > 0

    def skips(self, request: int, node: int, model: str | None) -> bool:
        """Whether call ``node`` of ``request`` skips: the same whatever order events come in."""
        return random.Random(self.seed * 1_000_003 + request * 65_537 + node).random() < self.share(model).skip

    def batch_s(self, full_s, n: int, computing: int, model: str | None) -> float:
        """A batch of ``n`` samples on ``model`` of which ``computing`` run every block: the first
        block for all, the rest for those (``full_s(k)``: a full call of ``k`` samples)."""
        head = self.share(model).head
        first = head * full_s(n)
        return first + (1.0 - head) * full_s(computing) if computing else first


def _two_x(head: float) -> float:
    """The share of calls skipped that halves a request's denoiser time when a skipped call costs ``head``."""
    return 0.5 / (1 - head)


def fbcache() -> StepCacheModel:
    cited = "First Block Cache at 0.08: 2x on FLUX.1-dev, 28 steps (diffusers ParaAttention guide)"
    assumed = "assumed as FLUX.1-dev's share at the same threshold (no published figure)"
    return StepCacheModel(
        MappingProxyType(
            {
                "flux-dev": Share(_two_x(1 / 38), 1 / 38, cited),
                "sd3.5-large": Share(_two_x(1 / 38), 1 / 38, f"{assumed}; first of 38 blocks"),
                "sd3-medium": Share(_two_x(1 / 38), 1 / 24, f"{assumed}; first of 24 blocks"),
            }
        )
    )


def make_step_cache_model(name: str | None) -> StepCacheModel | None:
    if name in (None, "off"):
        return None
    if name == "fbcache":
        return fbcache()
    raise ValueError(f"unknown step cache model {name!r}; choose one of {MODELS} or off")
