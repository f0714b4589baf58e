"""Inpainting glue, as diffusers' inpainting pipelines do it around their models.

``prepare_mask`` preprocesses the image and its mask (binarised, resized to the latent size) and
masks the image; ``inpaint_blend`` puts the known region back after each sampler step (denoisers
that read only latents: 4- and 16-channel); ``sampler_rng`` gives the sampler the request's
generator once everything before the loop has drawn from it; ``apply_overlay`` pastes a result
generated around the mask (``padding_mask_crop``) back onto the input image.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from legodiffusion.core.images import image_size, mask_mismatch
from legodiffusion.ops import examples, sampling
from legodiffusion.ops.base import BadValue, Item, Operator, Port, Signature
from legodiffusion.ops.edit import SIZE_PORTS
from legodiffusion.ops.latents import check_size, size_factor
from legodiffusion.ops.lazy import lazy_module

torch = lazy_module("torch")
image_processor = lazy_module("diffusers.image_processor")

_PAD = Port(
    "int",
    optional=True,
    ge=0,
    doc="generate only around the mask: its bounding box grown by this many pixels (to the generation's aspect), pasted back",
)


def _processors(cfg):
    factor = size_factor(cfg.family, cfg.vae_scale_factor)
    image = image_processor.VaeImageProcessor(vae_scale_factor=factor)
    mask = image_processor.VaeImageProcessor(vae_scale_factor=factor, do_normalize=False, do_binarize=True, do_convert_grayscale=True)
    return factor, image, mask


def _crop(cfg, image, mask, args) -> tuple[tuple[int, int, int, int] | None, int | None, int | None]:
    """The pipelines' crop of ``image`` around ``mask`` (None without ``padding_mask_crop``) and the
    generation size it is taken for (the image's own, rounded down to the size factor, where not given)."""
    height, width, pad = args.get("height"), args.get("width"), args.get("padding_mask_crop")
    if pad is None:
        return None, height, width
    factor, _, mask_proc = _processors(cfg)
    w, h = image_size(image)
    height = h - h % factor if height is None else height
    width = w - w % factor if width is None else width
    return mask_proc.get_crop_region(mask, width, height, pad=pad), height, width


class PrepareMask(Operator):
    name = "prepare_mask"
    doc = (
        "Preprocess an inpainting image and mask as the family's inpainting pipeline does: the image to [-1, 1], the mask "
        "grayscale and binarised (white repaints), the masked image (the image where the mask is black) and the mask resized "
        "to the latent size; with `padding_mask_crop`, both cropped around the mask first."
    )
    component = "config"
    light = True
    sized_by = "image"
    modes = {
        "default": Signature(
            inputs={
                "image": Port("image"),
                "mask": Port("image", doc="white repaints, black keeps"),
                **SIZE_PORTS,
                "padding_mask_crop": _PAD,
            },
            outputs={"pixels": "pixels", "masked_pixels": "pixels", "mask": "mask"},
        )
    }

    def check(self, mode, values, cfg):
        if cfg is not None:
            check_size(values.get("height"), values.get("width"), size_factor(cfg.family, cfg.vae_scale_factor), cfg.family)
        image, mask = values.get("image"), values.get("mask")
        if image is None or mask is None:
            return
        mismatch = mask_mismatch(image, mask)
        if mismatch is not None:
            raise BadValue("mask", mismatch)
        if values.get("padding_mask_crop") is not None:
            if hasattr(image, "shape") or hasattr(mask, "shape"):
                raise BadValue("padding_mask_crop", "padding_mask_crop needs the image and the mask as PIL images, as the pipelines do")
            if not mask.convert("L").getbbox():
                raise BadValue("mask", "mask is all black: padding_mask_crop has no region to crop around")

    def run(self, model, mode: str, items: list[Item]):
        factor, image_proc, mask_proc = _processors(model)
        out = []
        for it in items:
            self.check(mode, it.inputs, model)
            crop, height, width = _crop(model, it.inputs["image"], it.inputs["mask"], it.inputs)
            resize = "default" if crop is None else "fill"
            pixels = image_proc.preprocess(it.inputs["image"], height=height, width=width, crops_coords=crop, resize_mode=resize)
            pixels = pixels.to(torch.float32)
            h, w = pixels.shape[-2:]
            condition = mask_proc.preprocess(it.inputs["mask"], height=h, width=w, resize_mode=resize, crops_coords=crop)
            f = model.vae_scale_factor
            # nearest, to the latent size: what the denoiser reads beside the latents, and blends with
            mask = torch.nn.functional.interpolate(condition, size=(h // f, w // f)).to(model.dtype)
            out.append({"pixels": pixels.contiguous(), "masked_pixels": pixels * (condition < 0.5), "mask": mask})
        return out

    def example_items(self, cfg, mode, batch, size, device):
        mask = torch.zeros(1, 1, size, size)
        mask[..., size // 4 : size // 2, :] = 1
        return [Item({"image": torch.rand(1, 3, size, size), "mask": mask, "height": size, "width": size}) for _ in range(batch)]


class InpaintBlend(Operator):
    name = "inpaint_blend"
    doc = (
        "After a sampler step, keep the known region: the image's latents noised to the step the sampler has reached "
        "(not noised after the last) where the mask is black, the step's latents where it is white."
    )
    light = True
    modes = {
        "default": Signature(
            inputs={
                "latents": Port("latent", doc="the step's result"),
                "sampler": Port("sampler", doc="the sampler after the step: its step is the next one"),
                "image_latents": Port("latent"),
                "noise": Port("noise", doc="the noise the start was drawn with"),
                "mask": Port("mask"),
            },
            outputs={"latents": "latent"},
        )
    }

    def run(self, model, mode: str, items: list[Item]):
        out = []
        for it in items:
            args = it.inputs
            latents, state = args["latents"], args["sampler"]
            known = args["image_latents"].to(latents.dtype)
            if not state.done:
                known = sampling.add_noise(state, known, args["noise"])
            mask = args["mask"].to(latents.dtype)
            out.append({"latents": (1 - mask) * known + mask * latents})
        return out

    def example_items(self, cfg, mode, batch, size, device):
        items = []
        for _ in range(batch):
            x = examples.latents(cfg, size, device)
            mask = (torch.rand(1, 1, *x.shape[-2:], device=device) > 0.5).to(x.dtype)
            state = replace(examples.sampler_state(cfg), step_index=1)
            items.append(
                Item({"latents": x, "sampler": state, "image_latents": torch.randn_like(x), "noise": torch.randn_like(x), "mask": mask})
            )
        return items


class SamplerRng(Operator):
    name = "sampler_rng"
    doc = (
        "Hand the sampler the request's generator as it stands (`rng`), for samplers that draw every step: the pipelines "
        "give the scheduler their generator after the masked image's encoding drew from it."
    )
    light = True
    modes = {"default": Signature(inputs={"sampler": Port("sampler"), "rng": Port("rng")}, outputs={"sampler": "sampler"})}

    def run(self, model, mode: str, items: list[Item]):
        out = []
        for it in items:
            state = it.inputs["sampler"]
            if state.sampler in sampling.STOCHASTIC:
                generator = torch.Generator("cpu")
                generator.set_state(it.inputs["rng"])
                state = replace(state, rng=sampling.generator_state(generator))
            out.append({"sampler": state})
        return out

    def example_items(self, cfg, mode, batch, size, device):
        return [
            Item({"sampler": examples.sampler_state(cfg), "rng": torch.Generator("cpu").manual_seed(i).get_state()}) for i in range(batch)
        ]


class ApplyOverlay(Operator):
    name = "apply_overlay"
    doc = (
        "With `padding_mask_crop`: paste the image generated around the mask back onto the input image where the mask is "
        "white (8-bit, as the pipelines' PIL output); without it the image passes through."
    )
    component = "config"
    light = True
    modes = {
        "default": Signature(
            inputs={
                "image": Port("image", doc="the decoded result, in [0, 1]"),
                "original": Port("image", doc="the request's input image"),
                "mask": Port("image"),
                **SIZE_PORTS,
                "padding_mask_crop": _PAD,
            },
            outputs={"image": "image"},
        )
    }

    def run(self, model, mode: str, items: list[Item]):
        proc = image_processor.VaeImageProcessor()
        out = []
        for it in items:
            args = it.inputs
            crop, _, _ = _crop(model, args["original"], args["mask"], args)
            if crop is None:
                out.append({"image": args["image"]})
                continue
            pasted = [
                proc.apply_overlay(args["mask"], args["original"], im, crop) for im in proc.numpy_to_pil(proc.pt_to_numpy(args["image"]))
            ]
            out.append({"image": proc.numpy_to_pt(proc.pil_to_numpy(pasted))})
        return out

    def example_items(self, cfg, mode, batch, size, device):
        from PIL import Image

        rgb = Image.fromarray((np.random.default_rng(0).random((size, size, 3)) * 255).astype("uint8"))
        mask = Image.new("L", (size, size))
        mask.paste(255, (size // 4, size // 4, size // 2, size // 2))
        image = torch.rand(1, 3, size, size)
        return [Item({"image": image, "original": rgb, "mask": mask, "padding_mask_crop": 4}) for _ in range(batch)]
