"""ComfyUI samplers and latent upscales mapped onto our sampling inputs.

**denoise and start_at_step as strength.** ComfyUI's ``KSampler`` with ``steps`` N and
``denoise`` d < 1 builds a schedule of int(N / d) steps and runs its last N; ``KSamplerAdvanced``
runs steps ``start_at_step`` .. N-1 of an N-step schedule. Diffusers' image-to-image runs the last
``kept`` steps of a ``steps``-step schedule, ``kept`` rounded from ``steps x strength`` as each
family's pipeline rounds it. We map both onto the same schedule length and the same number of
steps run (``steps`` = int(N / d), ``kept`` = N; or ``steps`` = N, ``kept`` = N - start), with the
strength that rounds to exactly ``kept`` in the model's family. The schedule's sigmas (diffusers'
timestep spacing, not ComfyUI's ``normal`` scheduler) and the noise (diffusers' generator draws)
still differ from ComfyUI's, so the images are not numerically ComfyUI's.

What cannot be mapped is refused naming the node: ``end_at_step`` < ``steps`` (latents left
noisy, for another sampler or a forced last jump), ``add_noise`` disabled, denoise outside (0, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from legodiffusion.ops.sampling import STRENGTH_ROUNDS, kept_steps
from legodiffusion.server.comfy_graph import ComfyError

SAMPLERS = {"euler": "euler", "euler_ancestral": "euler_ancestral", "ddim": "ddim", "dpmpp_2m": "dpmpp_2m"}
KARRAS = {"euler": "euler_karras", "dpmpp_2m": "dpmpp_2m_karras"}
SCHEDULERS = {"normal", "simple", "ddim_uniform", "karras"}
#: LatentUpscale(By)'s methods we run (interpolate's modes of the same names); ComfyUI's bislerp is not one
UPSCALE_METHODS = ("nearest-exact", "bilinear", "area", "bicubic")
#: ComfyUI's KSampler runs the whole schedule above this denoise
FULL_DENOISE = 0.9999


@dataclass(frozen=True)
class Sampling:
    """One KSampler / KSamplerAdvanced node, read."""

    node: str
    class_type: str
    seed: int
    steps: int  # the schedule's length, our ``steps``
    kept: int  # how many of its last steps run (== steps: from pure noise)
    cfg: float
    sampler: str
    args: dict  # its inputs, for the links

    @property
    def full(self) -> bool:
        return self.kept == self.steps

    def strength(self, family: str | None) -> float:
        """The strength whose edit of ``steps`` runs exactly ``kept`` steps in ``family``'s rounding."""
        return strength_for(self.steps, self.kept, STRENGTH_ROUNDS.get(family or "sd", "kept"))


def strength_for(steps: int, kept: int, rounds: str) -> float:
    """A strength in (0, 1] whose edit of ``steps`` steps runs exactly ``kept`` of them, rounded as
    ``rounds``: kept / steps, or a float next to it where steps x (kept / steps) lands beside kept
    in floating point (the pipelines round that product down)."""
    lo = hi = kept / steps
    for _ in range(4):
        for candidate in (lo, hi):
            if 0 < candidate <= 1 and kept_steps(steps, candidate, rounds) == kept:
                return candidate
        lo, hi = math.nextafter(lo, 0.0), math.nextafter(hi, 2.0)
    raise ValueError(f"no strength runs {kept} of {steps} steps")  # none found for any steps <= 1000 (checked)


def read_sampler(prompt: dict, nid: str) -> Sampling:
    """The sampler, schedule and steps of a KSampler or KSamplerAdvanced node."""
    node = prompt[nid]
    ct, args = node["class_type"], node.get("inputs", {})
    sampler = SAMPLERS.get(args.get("sampler_name"))
    if sampler is None:
        raise ComfyError(nid, ct, f"sampler {args.get('sampler_name')!r} is not supported; supported: {sorted(SAMPLERS)}")
    if args.get("scheduler", "normal") not in SCHEDULERS:
        raise ComfyError(nid, ct, f"scheduler {args.get('scheduler')!r} is not supported; supported: {sorted(SCHEDULERS)}")
    if args.get("scheduler") == "karras":
        sampler = KARRAS.get(args.get("sampler_name"))
        if sampler is None:
            raise ComfyError(nid, ct, f"scheduler karras is supported with {sorted(KARRAS)}, not {args.get('sampler_name')!r}")
    n = int(args.get("steps", 20))
    if n < 1:
        raise ComfyError(nid, ct, f"steps must be at least 1, got {n}")
    if ct == "KSampler":
        seed, denoise = args.get("seed", 0), float(args.get("denoise", 1.0))
        if not 0 < denoise <= 1:
            raise ComfyError(nid, ct, f"denoise must be in (0, 1], got {denoise}")
        steps, kept = (n, n) if denoise > FULL_DENOISE else (int(n / denoise), n)  # ComfyUI's KSampler.set_steps
    else:
        seed, start, end = args.get("noise_seed", 0), int(args.get("start_at_step", 0)), int(args.get("end_at_step", 10000))
        if args.get("add_noise", "enable") != "enable":
            raise ComfyError(nid, ct, "add_noise=disable (latents another sampler left noisy) is not supported")
        if end < n:
            raise ComfyError(nid, ct, f"end_at_step {end} < steps {n} stops with noise left (for another sampler to finish): not supported")
        if not 0 <= start < n:
            raise ComfyError(nid, ct, f"start_at_step must be within 0-{n - 1} (a step must run), got {start}")
        steps, kept = n, n - start
    return Sampling(nid, ct, int(seed), steps, kept, float(args.get("cfg", 7.0)), sampler, args)


def read_upscale(prompt: dict, nid: str, width: int, height: int) -> tuple[float, str]:
    """(scale, interpolation) of a LatentUpscale / LatentUpscaleBy node over latents of ``width`` x
    ``height`` pixels. LatentUpscale's size becomes one factor for both sides, so it must keep the
    aspect ratio (our second stage scales both sides alike)."""
    node = prompt[nid]
    ct, args = node["class_type"], node.get("inputs", {})
    method = args.get("upscale_method", "nearest-exact")
    if method not in UPSCALE_METHODS:
        raise ComfyError(nid, ct, f"upscale_method {method!r} is not supported; supported: {list(UPSCALE_METHODS)}")
    if ct == "LatentUpscaleBy":
        return float(args.get("scale_by", 1.5)), method
    to_w, to_h = int(args.get("width", 512)), int(args.get("height", 512))
    if to_w <= 0 and to_h <= 0:
        raise ComfyError(nid, ct, f"width or height must be given, got {to_w}x{to_h}")
    scale = to_w / width if to_w > 0 else to_h / height
    if to_w > 0 and to_h > 0 and not math.isclose(to_h / height, scale, rel_tol=1e-9):
        raise ComfyError(
            nid, ct, f"{width}x{height} to {to_w}x{to_h} changes the aspect ratio; the hires stage scales both sides by one factor"
        )
    return scale, method


def same_stage(first: Sampling, second: Sampling, **values: tuple[Any, Any]) -> None:
    """Refuse a hires pair whose samplers differ where our hires workflow has one value for both."""
    pairs = {"cfg": (first.cfg, second.cfg), "sampler": (first.sampler, second.sampler), **values}
    for name, (a, b) in pairs.items():
        if a != b:
            raise ComfyError(
                second.node,
                second.class_type,
                f"{name} {b!r} differs from the first sampler's (node {first.node}: {a!r}); a hires fix samples both stages with one {name}",
            )
