"""Guidance combine and the sampler update: cheap glue that runs where the latents are."""

from __future__ import annotations

from legodiffusion.ops import examples, family_qwenimage, family_zimage, sampling
from legodiffusion.ops.base import GUIDANCE_MAX, Item, Operator, Port, Signature
from legodiffusion.ops.lazy import lazy_module

torch = lazy_module("torch")

_COMMON = {"latents": Port("latent"), "sampler": Port("sampler")}
_OUT = {"latents": "latent", "sampler": "sampler"}


def _cfg(cond, uncond, scale: float):
    return uncond + scale * (cond - uncond)


#: guided modes: how each combines the two predictions (Qwen-Image's true CFG keeps the conditional norm)
_COMBINE = {"guided": _cfg, "true_cfg": family_qwenimage.true_cfg}
_GUIDED_INPUTS = {
    **_COMMON,
    "noise_cond": Port("noise"),
    "noise_uncond": Port("noise"),
    "guidance_scale": Port("float", ge=0, le=GUIDANCE_MAX, doc="classifier-free guidance scale"),
}


class SamplerStep(Operator):
    name = "sampler_step"
    doc = (
        "Combine the guidance branches (guided: classifier-free guidance; true_cfg: Qwen-Image's, rescaled to the "
        "conditional prediction's norm) and advance the sampler by one step."
    )
    light = True
    modes = {
        "guided": Signature(inputs=_GUIDED_INPUTS, outputs=_OUT),
        "true_cfg": Signature(inputs=_GUIDED_INPUTS, outputs=_OUT),
        "unguided": Signature(inputs={**_COMMON, "noise": Port("noise")}, outputs=_OUT),
        "zimage_guided": family_zimage.GUIDED,
    }

    def run(self, model, mode: str, items: list[Item]):
        out = []
        for it in items:
            args = it.inputs
            state = args["sampler"]
            if mode == "zimage_guided":
                noise = family_zimage.combine(args)
            elif mode in _COMBINE:
                noise = _COMBINE[mode](args["noise_cond"], args["noise_uncond"], float(args["guidance_scale"]))
            else:
                noise = args["noise"]
            latents, next_state = sampling.step(state, noise, args["latents"])
            out.append({"latents": latents, "sampler": next_state})
        return out

    def example_items(self, cfg, mode, batch, size, device):
        items = []
        for _ in range(batch):
            x = examples.latents(cfg, size, device)
            args = {"latents": x, "sampler": examples.sampler_state(cfg)}
            if mode in _COMBINE or mode == "zimage_guided":
                args.update(noise_cond=torch.randn_like(x), noise_uncond=torch.randn_like(x), guidance_scale=7.5)
            else:
                args.update(noise=torch.randn_like(x))
            items.append(Item(args))
        return items
