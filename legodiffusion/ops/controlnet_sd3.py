"""SD3 ControlNets as StableDiffusion3ControlNetPipeline runs them.

The pipeline VAE-encodes the control image (both guidance halves in one batch, so each half gets
its own noise draw) from torch's *global* generator; here that draw comes from a generator of its
own, seeded with the request's seed (and continued by the next ControlNet's encode, as the global
one is), so a request is reproducible and equals the pipeline run right after
``torch.manual_seed(seed)``. Whether the latents are shifted by the VAE's shift factor, which
pooled projection and which text the ControlNet reads, depend on the ControlNet's config
(InstantX's zero pooled projection and no shift; SD3.5's 8b ControlNets read no text), so the
control value carries the raw sample and the VAE's factors and the ControlNet node applies them.

SD3.5-large's 8b ControlNets have no patch embedding of their own: the pipeline lends them the
base transformer's (``SD3ControlNetModel._get_pos_embed_from_transformer``). Here the base hands
it over as a value: :class:`SD3PatchEmbedding` runs once per request on the base's denoiser and
gives its projection and the positional embedding cropped to the request's size, which the
ControlNet node applies. So each model stays one resident copy, the ControlNet is never changed,
and a ControlNet shared by two bases reads each request's own base.
"""

from __future__ import annotations

from legodiffusion.ops import examples, sampling
from legodiffusion.ops.base import GUIDANCE_MAX, SEED_PORT, Item, Operator, Port, Signature
from legodiffusion.ops.lazy import lazy_module

torch = lazy_module("torch")
image_processor = lazy_module("diffusers.image_processor")


class EncodeSD3ControlImage(Operator):
    name = "encode_sd3_control"
    doc = (
        "SD3 ControlNets read the control image as VAE latents: preprocess to the size of `latents`, encode (twice, one per "
        "guidance half, when guidance_scale > 1) and sample with a generator seeded with `seed` (or continued from `rng`)."
    )
    component = "vae"
    modes = {
        "default": Signature(
            inputs={
                "image": Port("image"),
                "latents": Port("latent", doc="the initial latents: the control image is resized to their size"),
                "seed": SEED_PORT,
                "rng": Port("rng", optional=True, doc="continue the generator an earlier ControlNet's encode drew from"),
                "guidance_scale": Port("float", optional=True, ge=0, le=GUIDANCE_MAX, doc="> 1: classifier-free guidance"),
            },
            outputs={"control": "control", "control_uncond": "control", "rng": "rng"},
        )
    }

    def run(self, model, mode: str, items: list[Item]):
        factor = 2 ** (len(model.config.block_out_channels) - 1)
        proc = image_processor.VaeImageProcessor(vae_scale_factor=factor)
        out = []
        for it in items:
            generator = sampling.request_generator(it.inputs)
            h, w = (n * factor for n in it.inputs["latents"].shape[-2:])
            # contiguous as the pipeline's repeat_interleave leaves it: a channels-last input takes
            # other convolution kernels, whose rounding differs in bf16
            image = proc.preprocess(it.inputs["image"], height=h, width=w).contiguous().to(device=model.device, dtype=model.dtype)
            guided = (it.inputs.get("guidance_scale") or 0.0) > 1
            if guided:  # as the pipeline's prepare_image: [uncond, cond] halves, one draw for both
                image = torch.cat([image] * 2)
            with torch.inference_mode():
                sample = model.encode(image).latent_dist.sample(generator)
            factors = {"shift_factor": float(model.config.shift_factor or 0.0), "scaling_factor": float(model.config.scaling_factor)}
            control = {"latents": sample[-1:], **factors}
            uncond = {"latents": sample[:1], **factors} if guided else control
            out.append({"control": control, "control_uncond": uncond, "rng": generator.get_state()})
        return out

    def example_items(self, cfg, mode, batch, size, device):
        return [
            Item({"image": torch.rand(1, 3, size, size), "latents": examples.latents(cfg, size, device), "seed": i, "guidance_scale": 7.0})
            for i in range(batch)
        ]


class SD3PatchEmbedding(Operator):
    name = "sd3_patch_embedding"
    doc = (
        "The base transformer's patch embedding for SD3 ControlNets without one (SD3.5-large's 8b ones): its projection "
        "and its positional embedding cropped to the size of `latents`, as the pipeline lends them."
    )
    component = "denoiser"
    modes = {
        "default": Signature(
            inputs={"latents": Port("latent", doc="the initial latents: the positional embedding is cropped to their size")},
            outputs={"patch_embed": "control"},
        )
    }

    def run(self, model, mode: str, items: list[Item]):
        embed = model.module.pos_embed
        if not embed.pos_embed_max_size or embed.norm is not None or not embed.flatten:
            # every SD3 transformer crops a sincos grid; patch_embedded() applies only that form
            raise ValueError("sd3_patch_embedding: the base transformer's pos_embed is not SD3's cropped sincos patch embedding")
        out = []
        for it in items:
            with torch.inference_mode():
                pos = embed.cropped_pos_embed(*it.inputs["latents"].shape[-2:])
            out.append({"patch_embed": {"weight": embed.proj.weight, "bias": embed.proj.bias, "pos": pos}})
        return out

    def example_items(self, cfg, mode, batch, size, device):
        return [Item({"latents": examples.latents(cfg, size, device)}) for _ in range(batch)]


def patch_embedded(x, lent: dict):
    """``x`` (B, C, H, W) through the base's patch embedding ``lent`` (:class:`SD3PatchEmbedding`'s
    output), in ``x``'s dtype as ``PatchEmbed.forward`` runs it once the pipeline has cast the lent
    module to the ControlNet's dtype."""
    weight, bias, pos = (lent[k].to(x.device, x.dtype) for k in ("weight", "bias", "pos"))
    hidden = torch.nn.functional.conv2d(x, weight, bias, stride=weight.shape[-2:]).flatten(2).transpose(1, 2)
    return (hidden + pos).to(hidden.dtype)


def control_latents(model, control: dict):
    """The latents an SD3 ControlNet reads, scaled as the pipeline does: InstantX ControlNets
    (``force_zeros_for_pooled_projection``) were trained without the VAE's shift."""
    shift = 0 if model.config.force_zeros_for_pooled_projection else control["shift_factor"]
    return (control["latents"] - shift) * control["scaling_factor"]


def run_sd3(model, items: list[Item]) -> list[dict]:
    """One ``SD3ControlNetModel`` call for a batch of ControlNet nodes, each item's residuals
    scaled by its own ``scale`` after (``x * 1.0 * s == x * s`` exactly)."""
    xs, ts, embs, pooled, conds = [], [], [], [], []
    for it in items:
        state = it.inputs["sampler"]
        x = it.inputs["latents"].to(model.dtype)
        if model.pos_embed is None:  # an 8b ControlNet reads the latents through its base's patch embedding
            if it.inputs.get("patch_embed") is None:
                raise ValueError("patch_embed: this SD3 ControlNet has no pos_embed of its own; wire the base's sd3_patch_embedding to it")
            x = patch_embedded(x, it.inputs["patch_embed"])
        xs.append(x)
        ts.append(sampling.scheduler_at(state).timesteps[state.step_index].reshape(1).expand(x.shape[0]))
        emb = it.inputs["embedding"]
        embs.append(emb["prompt_embeds"].to(model.dtype))
        pooled.append(emb["pooled"].to(model.dtype))
        conds.append(control_latents(model, it.inputs["control"]).to(x.device, model.dtype))
    pooled = torch.cat(pooled)
    if model.config.force_zeros_for_pooled_projection:
        pooled = torch.zeros_like(pooled)
    # SD3.5's 8b ControlNets have no context embedder and take no text
    text = torch.cat(embs) if model.config.joint_attention_dim is not None else None
    with torch.inference_mode():
        (blocks,) = model(
            hidden_states=torch.cat(xs),
            timestep=torch.cat(ts),
            encoder_hidden_states=text,
            pooled_projections=pooled,
            controlnet_cond=torch.cat(conds),
            conditioning_scale=1.0,
            return_dict=False,
        )
    out = []
    for i, it in enumerate(items):
        s = float(it.inputs.get("scale") if it.inputs.get("scale") is not None else 1.0)
        out.append({"residual": {f"block_{j:02d}": b[i : i + 1] * s for j, b in enumerate(blocks)}})
    return out


def block_residuals(per_item: list[dict]) -> list:
    """The transformer's ``block_controlnet_hidden_states`` from each batch item's summed residuals."""
    keys = sorted(k for k in per_item[0] if k.startswith("block_"))
    return [torch.cat([p[k] for p in per_item]) for k in keys]


def example_control(cfg, size: int, device: str) -> dict:
    return {"latents": examples.latents(cfg, size, device), "shift_factor": 0.0, "scaling_factor": 1.0}
