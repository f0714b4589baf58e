"""The built-in operators and the default registry."""

from legodiffusion.ops.approx import ApproxInsert, ApproxLookup
from legodiffusion.ops.base import Item, Operator, OperatorRegistry, Port, Signature
from legodiffusion.ops.controlnet import ControlNet, EncodeControlImage, PrepareControlImage
from legodiffusion.ops.controlnet_sd3 import EncodeSD3ControlImage, SD3PatchEmbedding
from legodiffusion.ops.denoise import Denoise
from legodiffusion.ops.edit import PrepareImage, VaeEncode
from legodiffusion.ops.inpaint import ApplyOverlay, InpaintBlend, PrepareMask, SamplerRng
from legodiffusion.ops.latents import InitLatents
from legodiffusion.ops.noop import Noop
from legodiffusion.ops.sampler_step import SamplerStep
from legodiffusion.ops.step_cache import InitStepCache
from legodiffusion.ops.text import EncodePrompt, FormatText
from legodiffusion.ops.upscale import UpscaleLatents
from legodiffusion.ops.vae import VaeDecode

BUILTIN_OPERATORS = (
    EncodePrompt,
    FormatText,
    InitLatents,
    Denoise,
    InitStepCache,
    PrepareControlImage,
    EncodeControlImage,
    EncodeSD3ControlImage,
    SD3PatchEmbedding,
    ControlNet,
    SamplerStep,
    VaeDecode,
    PrepareImage,
    VaeEncode,
    PrepareMask,
    InpaintBlend,
    SamplerRng,
    ApplyOverlay,
    UpscaleLatents,
    Noop,
    ApproxLookup,
    ApproxInsert,
)


def default_registry() -> OperatorRegistry:
    registry = OperatorRegistry()
    for op in BUILTIN_OPERATORS:
        registry.add(op)
    return registry


__all__ = ["Item", "Operator", "OperatorRegistry", "Port", "Signature", "default_registry", "BUILTIN_OPERATORS"]
