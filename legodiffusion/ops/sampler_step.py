"""Guidance combine and the sampler update: cheap glue that runs where the latents are."""

from __future__ import annotations

from legodiffusion.ops import sampling
from legodiffusion.ops.base import Item, Operator, Port, Signature

_COMMON = {"latents": Port("latent"), "sampler": Port("sampler")}
_OUT = {"latents": "latent", "sampler": "sampler"}


class SamplerStep(Operator):
    name = "sampler_step"
    doc = "Combine the guidance branches (guided mode) and advance the sampler by one step."
    light = True
    modes = {
        "guided": Signature(
            inputs={
                **_COMMON,
                "noise_cond": Port("noise"),
                "noise_uncond": Port("noise"),
                "guidance_scale": Port("float"),
            },
            outputs=_OUT,
        ),
        "unguided": Signature(inputs={**_COMMON, "noise": Port("noise")}, outputs=_OUT),
    }

    def run(self, model, mode: str, items: list[Item]):
        out = []
        for it in items:
            args = it.inputs
            state = args["sampler"]
            if mode == "guided":
                uncond, cond = args["noise_uncond"], args["noise_cond"]
                noise = uncond + float(args["guidance_scale"]) * (cond - uncond)
            else:
                noise = args["noise"]
            latents = sampling.step(state, noise, args["latents"])
            out.append({"latents": latents, "sampler": state.advanced()})
        return out
