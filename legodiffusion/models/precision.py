"""Precision per component: the dtype each component's weights, and therefore its outputs, use.

``auto`` follows what the reference pipelines are run with: on CUDA, bf16 for denoisers, text
encoders and ControlNets (DiFlow, the diffusers examples and every public serving benchmark use
bf16 weights); the VAE in bf16 for SD3 and Flux, whose pipelines run it that way, and in fp32 for
SD1.x/SDXL, whose VAEs are marked ``force_upcast`` (they overflow in fp16; 84M parameters, so fp32
costs 0.17 GB more and one decode per image). On a CPU, ``auto`` is fp32 everywhere.

An explicit ``bf16`` / ``fp16`` / ``fp32`` applies to every component, and per-component overrides
win over both. With fp16, SDXL's VAE runs in fp32 as ``StableDiffusionXLPipeline`` upcasts it.
Latents, sampler state and scheduler arithmetic are not chosen here: they take the dtype the
reference pipeline gives them (the latents that of the denoiser; the schedulers upcast where
diffusers does), so a decomposed run equals the pipeline loaded with the same ``torch_dtype``.
"""

from __future__ import annotations

from dataclasses import dataclass

from legodiffusion.ops.lazy import lazy_module

torch = lazy_module("torch")

NAMES = ("auto", "bf16", "fp16", "fp32")
#: the components whose precision can be chosen (``config`` holds no weights: it follows the denoiser)
COMPONENTS = ("denoiser", "text_encoder", "vae", "controlnet")
_TORCH = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
#: families whose VAE stays fp32 under ``auto`` on CUDA (``force_upcast`` VAEs)
_FP32_VAE = frozenset({"sd", "sdxl"})


def check_name(name: str, what: str = "dtype") -> str:
    if name not in NAMES:
        raise ValueError(f"{what} must be one of {', '.join(NAMES)}, got {name!r}")
    return name


def torch_dtype(name: str):
    """The torch dtype of a resolved name (``bf16``, ``fp16`` or ``fp32``)."""
    return getattr(torch, _TORCH[name])


@dataclass(frozen=True)
class Precision:
    """``default`` for every component, ``overrides`` (component -> name) for some."""

    default: str = "auto"
    overrides: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        check_name(self.default)
        for component, name in self.overrides:
            if component not in COMPONENTS:
                raise ValueError(f"no precision for component {component!r}; choose from {', '.join(COMPONENTS)}")
            check_name(name, f"dtype of {component}")

    @classmethod
    def of(cls, default: str = "auto", overrides: dict[str, str] | None = None) -> Precision:
        return cls(default, tuple(sorted((overrides or {}).items())))

    def name(self, component: str, family: str | None, device: str) -> str:
        """The dtype name ``component`` of a ``family`` model gets on ``device``."""
        if component == "config":
            component = "denoiser"
        chosen = dict(self.overrides).get(component, "auto")
        if chosen != "auto":
            return chosen
        if self.default != "auto":
            if component == "vae" and self.default == "fp16" and family == "sdxl":
                return "fp32"
            return self.default
        if not str(device).startswith("cuda"):
            return "fp32"
        return "fp32" if component == "vae" and family in _FP32_VAE else "bf16"

    def dtype(self, component: str, family: str | None, device: str):
        return torch_dtype(self.name(component, family, device))
