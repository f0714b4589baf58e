"""One denoiser call: one guidance branch of one sampling step, for every family.

UNet families (SD, SDXL) scale the latents for the sampler's step; SDXL adds pooled and time-id
conditioning; SD3 calls its MMDiT; Flux packs its latents into 2x2 patches, adds the distilled
guidance embedding and unpacks the prediction (a permutation, so the sampler update is unchanged).
"""

from __future__ import annotations

from legodiffusion.ops import examples, family_flux2, family_qwenimage, family_zimage, sampling
from legodiffusion.ops.base import GUIDANCE_MAX, PATCH_PORTS, BadValue, Item, Operator, Port, Signature
from legodiffusion.ops.controlnet import LazyResiduals, summed
from legodiffusion.ops.controlnet_sd3 import block_residuals
from legodiffusion.ops.lazy import lazy_module
from legodiffusion.ops.sdxl_cond import added_cond
from legodiffusion.ops.step_cache import cached_call

torch = lazy_module("torch")

#: deferred residual inputs of the ``controlnet`` mode, summed in this order
CONTROL_PORTS = ("control_0", "control_1", "control_2")


def _cat(embs: list[dict], key: str) -> torch.Tensor:
    return torch.cat([e[key] for e in embs])


def _timesteps(items: list[Item]) -> tuple[list, list]:
    scheds, ts = [], []
    for it in items:
        state = it.inputs["sampler"]
        sched = sampling.scheduler_at(state)
        scheds.append(sched)
        ts.append(sched.timesteps[state.step_index])
    return scheds, ts


def _unet(model, items, xs, embs, ts, extra):
    scheds = extra
    xs = [s.scale_model_input(x, t) for s, x, t in zip(scheds, xs, ts)]
    if "masked_latents" in items[0].inputs:  # 9-channel inpainting UNets read the mask and the masked image beside the latents
        xs = [torch.cat([x, it.inputs["mask"].to(x.dtype), it.inputs["masked_latents"].to(x.dtype)], dim=1) for x, it in zip(xs, items)]
    tvec = [t.reshape(1).expand(x.shape[0]) for t, x in zip(ts, xs)]
    if len({t.dtype for t in tvec}) > 1:  # samplers disagree (int vs float timesteps)
        tvec = [t.float() for t in tvec]
    f = model.vae_scale_factor
    added = added_cond(embs, [(x.shape[-2] * f, x.shape[-1] * f) for x in xs], xs[0].device)  # SDXL
    residuals = [[it.inputs[p] for p in CONTROL_PORTS if it.inputs.get(p) is not None] for it in items]
    down = mid = None
    if any(residuals):
        down = LazyResiduals(residuals)
        mid = down.mid()
    return model.module(
        torch.cat(xs),
        torch.cat(tvec),
        encoder_hidden_states=_cat(embs, "prompt_embeds"),
        added_cond_kwargs=added,
        down_block_additional_residuals=down,
        mid_block_additional_residual=mid,
        return_dict=False,
    )[0]


def _mmdit(model, items, xs, embs, ts, extra):
    tvec = torch.cat([t.reshape(1).expand(x.shape[0]) for t, x in zip(ts, xs)])
    residuals = [[it.inputs[p] for p in CONTROL_PORTS if it.inputs.get(p) is not None] for it in items]
    # read eagerly: the transformer needs their count before its first block
    blocks = block_residuals([summed(r) for r in residuals]) if any(residuals) else None
    return model.module(
        hidden_states=torch.cat(xs),
        timestep=tvec,
        encoder_hidden_states=_cat(embs, "prompt_embeds"),
        pooled_projections=_cat(embs, "pooled"),
        block_controlnet_hidden_states=blocks,
        return_dict=False,
    )[0]


def pack(x: torch.Tensor) -> torch.Tensor:
    """Flux's 2x2 patch packing: (B, C, H, W) -> (B, H/2 * W/2, 4C)."""
    b, c, h, w = x.shape
    return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def _unpack(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    b, _, c4 = x.shape
    return x.view(b, h // 2, w // 2, c4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c4 // 4, h, w)


def _image_ids(h: int, w: int, device, dtype) -> torch.Tensor:
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] = ids[..., 1] + torch.arange(h // 2)[:, None]
    ids[..., 2] = ids[..., 2] + torch.arange(w // 2)[None, :]
    return ids.reshape(-1, 3).to(device=device, dtype=dtype)


def flux_inputs(items: list[Item], x: torch.Tensor, guidance_embeds: bool) -> dict:
    """The keyword arguments FluxPipeline passes to its transformer (and its ControlNets)."""
    _, ts = _timesteps(items)
    _, _, h, w = x.shape
    sizes = [it.inputs["latents"].shape[0] for it in items]
    tvec = torch.cat([t.reshape(1).expand(n) for t, n in zip(ts, sizes)]).to(x.dtype)
    guidance = None
    if guidance_embeds:
        guidance = torch.cat(
            [torch.full([n], float(it.inputs.get("guidance") or 0.0), dtype=torch.float32) for it, n in zip(items, sizes)]
        ).to(x.device)
    embs = [it.inputs["embedding"] for it in items]
    return {
        "hidden_states": pack(x),
        "timestep": tvec / 1000,
        "guidance": guidance,
        "pooled_projections": _cat(embs, "pooled").to(x.dtype),
        "encoder_hidden_states": _cat(embs, "prompt_embeds").to(x.dtype),
        "txt_ids": embs[0]["text_ids"][0],
        "img_ids": _image_ids(h, w, x.device, x.dtype),
    }


def _flux(model, items, xs, embs, ts, extra):
    x = torch.cat(xs)
    _, _, h, w = x.shape
    kwargs = flux_inputs(items, x, model.module.config.guidance_embeds)
    residuals = [[it.inputs[p] for p in CONTROL_PORTS if it.inputs.get(p) is not None] for it in items]
    if any(residuals):  # read eagerly: the transformer needs their count before its first block
        per_item = [summed(r) for r in residuals]
        for prefix, arg in (("block_", "controlnet_block_samples"), ("single_", "controlnet_single_block_samples")):
            keys = sorted(k for k in per_item[0] if k.startswith(prefix))
            kwargs[arg] = [torch.cat([p[k] for p in per_item]) for k in keys] or None
        kwargs["controlnet_blocks_repeat"] = False
    out = model.module(**kwargs, return_dict=False)[0]
    return _unpack(out, h, w)


_CALLS = {
    "sd": _unet,
    "sdxl": _unet,
    "sd3": _mmdit,
    "flux": _flux,
    "flux2": family_flux2.denoise,
    "zimage": family_zimage.denoise_call,
    "qwenimage": family_qwenimage.denoise,
}


_BASE = {
    "latents": Port("latent"),
    "sampler": Port("sampler"),
    "embedding": Port("embedding"),
    "guidance": Port("float", optional=True, doc="Flux dev: distilled guidance scale", ge=0, le=GUIDANCE_MAX),
    "cache": Port("cache", optional=True, doc="this branch's step cache state (ops/step_cache.py); null: every block runs"),
    **PATCH_PORTS,
}
_OUT = {"noise": "noise", "cache": "cache"}


class Denoise(Operator):
    name = "denoise"
    doc = "Predict noise (or flow) for the sampler's current step with the family's base model."
    component = "denoiser"
    concat_batch = True
    modes = {
        "default": Signature(inputs=_BASE, outputs=_OUT),
        "controlnet": Signature(
            inputs={
                **_BASE,
                "control_0": Port("residual", deferred=True, doc="first ControlNet's residuals"),
                "control_1": Port("residual", optional=True, deferred=True),
                "control_2": Port("residual", optional=True, deferred=True),
            },
            outputs=_OUT,
        ),
        "inpaint": Signature(
            inputs={
                **_BASE,
                "mask": Port("mask", doc="the latent-size mask (prepare_mask)"),
                "masked_latents": Port("latent", doc="the masked image, encoded"),
            },
            outputs={"noise": "noise"},
        ),
        "cfg_batch": family_zimage.CFG_BATCH,
    }

    def check(self, mode, values, cfg):
        if mode == "inpaint" and cfg is not None and cfg.family not in ("sd", "sdxl"):
            raise BadValue("mask", f"inpainting denoisers that read the mask are UNets (SD, SDXL), not {cfg.family}")
        if mode == "cfg_batch":
            family_zimage.check_cfg_batch(cfg)

    def run(self, model, mode: str, items: list[Item]):
        scheds, ts = _timesteps(items)
        if mode == "cfg_batch":
            return family_zimage.run_cfg_batch(model, items, scheds, ts)
        dtype = model.module.dtype  # a no-op where inputs already have it, as in the pipelines
        xs = [it.inputs["latents"].to(dtype) for it in items]
        embs = [{k: v.to(dtype) for k, v in it.inputs["embedding"].items()} for it in items]
        with torch.inference_mode(), cached_call(model, [it.inputs.get("cache") for it in items], [x.shape[0] for x in xs]) as call:
            noise = _CALLS[model.family](call.model, items, xs, embs, ts, scheds)
        return [{"noise": n, **out} for n, out in zip(torch.split(noise, [x.shape[0] for x in xs]), call.outputs())]

    def example_items(self, cfg, mode, batch, size, device):
        items = []
        for _ in range(batch):
            x = examples.latents(cfg, size, device)
            args = {"latents": x, "sampler": examples.sampler_state(cfg), "embedding": examples.embedding(cfg, device), "guidance": 3.5}
            if mode == "inpaint":
                args.update(mask=torch.ones_like(x[:, :1]), masked_latents=torch.randn_like(x))
            if mode == "cfg_batch":
                args.update(negative_embedding=examples.embedding(cfg, device), guidance_scale=5.0)
            items.append(Item(args))
        return items
