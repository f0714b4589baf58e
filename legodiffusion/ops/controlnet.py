"""ControlNet as its own nodes: prepare the control image once, then one ControlNet call per
guidance branch per step, whose residuals the base model reads as *deferred* inputs."""

from __future__ import annotations

from legodiffusion.ops import examples, sampling
from legodiffusion.ops.base import CONTROL_SCALE_MAX, GUIDANCE_MAX, SEED_PORT, Item, Operator, Port, Signature, resolve
from legodiffusion.ops.controlnet_sd3 import example_control, run_sd3
from legodiffusion.ops.latents import check_size, size_factor
from legodiffusion.ops.lazy import lazy_module
from legodiffusion.ops.sdxl_cond import added_cond

torch = lazy_module("torch")
image_processor = lazy_module("diffusers.image_processor")


class PrepareControlImage(Operator):
    name = "prepare_control_image"
    doc = "Resize a control image to the generation size and scale it to [0, 1], as diffusers' ControlNet pipelines do."
    component = "config"
    light = True
    modes = {
        "default": Signature(
            inputs={"image": Port("image"), "height": Port("int", optional=True, ge=1), "width": Port("int", optional=True, ge=1)},
            outputs={"control": "control"},
        )
    }

    def check(self, mode, values, cfg):
        if cfg is not None:
            check_size(values.get("height"), values.get("width"), size_factor(cfg.family, cfg.vae_scale_factor), cfg.family)

    def run(self, model, mode: str, items: list[Item]):
        proc = image_processor.VaeImageProcessor(vae_scale_factor=model.vae_scale_factor, do_convert_rgb=True, do_normalize=False)
        out = []
        for it in items:
            self.check(mode, it.inputs, model)
            h = model.default_size if it.inputs.get("height") is None else it.inputs["height"]
            w = model.default_size if it.inputs.get("width") is None else it.inputs["width"]
            out.append({"control": proc.preprocess(it.inputs["image"], height=h, width=w).to(dtype=torch.float32).contiguous()})
        return out

    def example_items(self, cfg, mode, batch, size, device):
        return [Item({"image": torch.rand(1, 3, size, size), "height": size, "width": size}) for _ in range(batch)]


class EncodeControlImage(Operator):
    name = "encode_control_image"
    doc = (
        "Flux ControlNets read the control image as VAE latents: preprocess, encode, sample with the "
        "request's generator (seeded with `seed`, or continued from `rng`) and pass the generator on, "
        "exactly as FluxControlNetPipeline draws from it before the initial noise."
    )
    component = "vae"
    modes = {
        "default": Signature(
            inputs={
                "image": Port("image"),
                "seed": SEED_PORT,
                "rng": Port("rng", optional=True),
                "height": Port("int", optional=True, ge=1),
                "width": Port("int", optional=True, ge=1),
            },
            outputs={"control": "control", "rng": "rng"},
        )
    }

    def check(self, mode, values, cfg):
        if cfg is not None:  # twice the VAE's factor, as run() preprocesses (Flux packs 2x2 patches)
            check_size(values.get("height"), values.get("width"), cfg.vae_scale_factor * 2, cfg.family)

    def run(self, model, mode: str, items: list[Item]):
        factor = 2 ** (len(model.config.block_out_channels) - 1)
        proc = image_processor.VaeImageProcessor(vae_scale_factor=factor * 2)
        out = []
        for it in items:
            check_size(it.inputs.get("height"), it.inputs.get("width"), factor * 2, "flux")
            generator = sampling.request_generator(it.inputs)
            h = 128 * factor if it.inputs.get("height") is None else it.inputs["height"]
            w = 128 * factor if it.inputs.get("width") is None else it.inputs["width"]
            # contiguous as the pipeline's repeat_interleave leaves it: a channels-last input takes
            # other convolution kernels, whose rounding differs in bf16
            image = proc.preprocess(it.inputs["image"], height=h, width=w).contiguous().to(device=model.device, dtype=model.dtype)
            with torch.inference_mode():
                latents = model.encode(image).latent_dist.sample(generator)
            latents = (latents - model.config.shift_factor) * model.config.scaling_factor
            out.append({"control": latents, "rng": generator.get_state()})
        return out

    def example_items(self, cfg, mode, batch, size, device):
        return [Item({"image": torch.rand(1, 3, size, size), "seed": i, "height": size, "width": size}) for i in range(batch)]


class ControlNet(Operator):
    name = "controlnet"
    doc = "Residuals of one ControlNet for one guidance branch of one step, scaled by `scale`."
    component = "controlnet"
    concat_batch = True
    modes = {
        "default": Signature(
            inputs={
                "latents": Port("latent"),
                "sampler": Port("sampler"),
                "embedding": Port("embedding"),
                "control": Port("control"),
                "scale": Port("float", optional=True, doc="conditioning scale (default 1.0)", ge=0, le=CONTROL_SCALE_MAX),
                "guidance": Port("float", optional=True, doc="Flux dev: distilled guidance scale", ge=0, le=GUIDANCE_MAX),
                "guess_mode": Port("bool", optional=True, doc="SD/SDXL: scale the residuals from 0.1 (first) to 1 (mid), as in guess mode"),
                "patch_embed": Port("control", optional=True, doc="SD3: the base's patch embedding, for ControlNets without one (8b)"),
            },
            outputs={"residual": "residual"},
        )
    }

    def run(self, model, mode: str, items: list[Item]):
        if type(model).__name__.startswith("Flux"):
            return self._run_flux(model, items)
        if type(model).__name__.startswith("SD3"):
            return run_sd3(model, items)
        xs, ts, embs, conds = [], [], [], []
        for it in items:
            state = it.inputs["sampler"]
            sched = sampling.scheduler_at(state)
            t = sched.timesteps[state.step_index]
            xs.append(sched.scale_model_input(it.inputs["latents"].to(model.dtype), t))
            ts.append(t.reshape(1))
            embs.append({k: v.to(model.dtype) for k, v in it.inputs["embedding"].items()})
            conds.append(it.inputs["control"].to(xs[-1].device, model.dtype))
        if len({t.dtype for t in ts}) > 1:
            ts = [t.float() for t in ts]
        # SDXL: the time ids of the generated size, which the control image was resized to
        added = added_cond(embs, [tuple(c.shape[-2:]) for c in conds], xs[0].device)
        with torch.inference_mode():
            # scale 1.0 inside, each item's own scale after: x * 1.0 * s == x * s exactly
            down, mid = model(
                torch.cat(xs),
                torch.cat(ts),
                encoder_hidden_states=torch.cat([e["prompt_embeds"] for e in embs]),
                controlnet_cond=torch.cat(conds),
                conditioning_scale=1.0,
                guess_mode=False,
                added_cond_kwargs=added,
                return_dict=False,
            )
        out = []
        for i, it in enumerate(items):
            scales = _scales(it.inputs, len(down) + 1, mid.device)
            res = {f"down_{j:02d}": d[i : i + 1] * s for j, (d, s) in enumerate(zip(down, scales))}
            res["mid"] = mid[i : i + 1] * scales[-1]
            out.append({"residual": res})
        return out

    def _run_flux(self, model, items: list[Item]):
        from legodiffusion.ops.denoise import flux_inputs, pack

        x = torch.cat([it.inputs["latents"] for it in items]).to(model.dtype)
        control = torch.cat([it.inputs["control"].to(x.device, model.dtype) for it in items])
        kwargs = flux_inputs(items, x, model.config.guidance_embeds)
        with torch.inference_mode():
            blocks, singles = model(controlnet_cond=pack(control), conditioning_scale=1.0, return_dict=False, **kwargs)
        out = []
        for i, it in enumerate(items):
            s = float(it.inputs.get("scale") if it.inputs.get("scale") is not None else 1.0)
            res = {f"block_{j:02d}": b[i : i + 1] * s for j, b in enumerate(blocks or [])}
            res.update({f"single_{j:02d}": b[i : i + 1] * s for j, b in enumerate(singles or [])})
            out.append({"residual": res})
        return out

    def example_items(self, cfg, mode, batch, size, device):
        return [
            Item(
                {
                    "latents": examples.latents(cfg, size, device),
                    "sampler": examples.sampler_state(cfg),
                    "embedding": examples.embedding(cfg, device),
                    # Flux and SD3 ControlNets read VAE latents of the control image, SD ones its pixels
                    "control": _example_control(cfg, size, device),
                }
            )
            for _ in range(batch)
        ]


def _example_control(cfg, size: int, device: str):
    if cfg.family == "flux":
        return examples.latents(cfg, size, device)
    return example_control(cfg, size, device) if cfg.family == "sd3" else torch.rand(1, 3, size, size)


def _scales(inputs: dict, count: int, device) -> list:
    """The factor of each of a UNet ControlNet's ``count`` residuals (down blocks, then mid): its
    conditioning scale, in guess mode times 0.1 (first) rising to 1 (mid) as ControlNetModel scales them."""
    s = float(inputs.get("scale") if inputs.get("scale") is not None else 1.0)
    if not inputs.get("guess_mode"):
        return [s] * count
    return list(torch.logspace(-1, 0, count, device=device) * s)


def summed(residuals: list) -> dict:
    """One item's residual inputs resolved and summed in port order (as the Multi-ControlNet
    models do)."""
    total = None
    for r in residuals:
        r = resolve(r)
        total = dict(r) if total is None else {k: total[k] + r[k] for k in total}
    return total


class LazyResiduals:
    """ControlNet residuals handed to a UNet before they exist: the UNet reads the down-block
    residuals only after its own down blocks and the mid residual after its mid block, so it
    computes that far while the ControlNets run elsewhere, and blocks only there."""

    def __init__(self, per_item: list[list]) -> None:
        self._per_item = per_item  # for each batch item, its residual inputs (Deferred or dict)
        self._summed = None

    def _load(self):
        if self._summed is None:
            items = [summed(residuals) for residuals in self._per_item]
            keys = sorted(k for k in items[0] if k.startswith("down_"))
            self._summed = ([torch.cat([it[k] for it in items]) for k in keys], torch.cat([it["mid"] for it in items]))
        return self._summed

    def __iter__(self):
        return iter(self._load()[0])

    def __len__(self) -> int:
        return len(self._load()[0])

    def mid(self) -> _LazyMid:
        return _LazyMid(self)


class _LazyMid:
    def __init__(self, parent: LazyResiduals) -> None:
        self._parent = parent

    def __radd__(self, other):
        return other + self._parent._load()[1]
