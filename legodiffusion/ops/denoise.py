"""One denoiser (UNet) call: one guidance branch of one sampling step."""

from __future__ import annotations

import torch

from legodiffusion.ops import examples, sampling
from legodiffusion.ops.base import Item, Operator, Port, Signature


class Denoise(Operator):
    name = "denoise"
    doc = "Scale the latents for the sampler's current step and predict noise with the UNet."
    component = "unet"
    concat_batch = True
    modes = {
        "default": Signature(
            inputs={"latents": Port("latent"), "sampler": Port("sampler"), "embedding": Port("embedding")},
            outputs={"noise": "noise"},
        )
    }

    def run(self, model, mode: str, items: list[Item]):
        xs, ts, embs = [], [], []
        for it in items:
            state = it.inputs["sampler"]
            sched = sampling.scheduler_at(state)
            t = sched.timesteps[state.step_index]
            latents = it.inputs["latents"]
            xs.append(sched.scale_model_input(latents, t))
            ts.append(t.reshape(1).expand(latents.shape[0]))
            embs.append(it.inputs["embedding"])
        if len({t.dtype for t in ts}) > 1:  # samplers disagree (int vs float timesteps)
            ts = [t.float() for t in ts]
        with torch.inference_mode():
            noise = model(torch.cat(xs), torch.cat(ts), encoder_hidden_states=torch.cat(embs), return_dict=False)[0]
        sizes = [x.shape[0] for x in xs]
        return [{"noise": n} for n in torch.split(noise, sizes)]

    def example_items(self, cfg, mode, batch, size, device):
        return [
            Item(
                {
                    "latents": examples.latents(cfg, size, device),
                    "sampler": examples.sampler_state(cfg),
                    "embedding": examples.embedding(cfg, device),
                }
            )
            for _ in range(batch)
        ]
