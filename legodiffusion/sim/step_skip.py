"""Step caching in simulation: a denoiser call of a request that opted in skips all but its first
block with a probability drawn per call and per sample (as the live cache decides per sample,
``ops/block_cache.py``), and then costs only that first block; a batch runs the first block for
every sample and the rest for those that compute.

The figures (``fbcache``): diffusers' ParaAttention guide reports First Block Cache at its default
threshold for FLUX (0.08) making FLUX.1-dev 2x faster at 28 steps
(huggingface.co/docs/diffusers/optimization/para_attn). The first block's share of a call is taken
from the architecture: FLUX.1-dev has 19 double-stream and 38 single-stream blocks, a double block
about twice a single one's work, so the first block is about 1/38 of the call. A 2x speed-up then
means a share s of calls skipped with (1 - s) + s/38 = 1/2, s ~ 0.51. The same share is assumed
for SD3 (its first block is 1/24 of a 24-block MMDiT: a skipped call costs a little more). The
share is an average over a request's calls (its first call, which has nothing cached, included).
The coordinator is not told in advance which calls skip: its estimates stay the full calls'.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

MODELS = ("fbcache",)
#: the request input a step-cached request carries (diffusers' default threshold for FLUX)
REQUEST_INPUT = '{"kind": "first_block", "threshold": 0.08}'


@dataclass(frozen=True)
class StepCacheModel:
    skip_share: float  # share of a request's denoiser calls that skip all but the first block
    head_share: float  # what a skipped call costs, relative to a full one
    source: str
    seed: int = 0

    def skips(self, request: int, node: int) -> bool:
        """Whether call ``node`` of ``request`` skips: the same whatever order events come in."""
        return random.Random(self.seed * 1_000_003 + request * 65_537 + node).random() < self.skip_share

    def batch_s(self, full_s, n: int, computing: int) -> float:
        """A batch of ``n`` samples of which ``computing`` run every block: the first block for all,
        the rest for those (``full_s(k)``: a full call of ``k`` samples)."""
        head = self.head_share * full_s(n)
        return head + (1.0 - self.head_share) * full_s(computing) if computing else head


def fbcache() -> StepCacheModel:
    head = 1 / 38
    return StepCacheModel(0.5 / (1 - head), head, "First Block Cache at 0.08: 2x on FLUX.1-dev, 28 steps (diffusers ParaAttention guide)")


def make_step_cache_model(name: str | None) -> StepCacheModel | None:
    if name in (None, "off"):
        return None
    if name == "fbcache":
        return fbcache()
    raise ValueError(f"unknown step cache model {name!r}; choose one of {MODELS} or off")
