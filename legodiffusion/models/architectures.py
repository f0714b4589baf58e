"""Full-size architectures without weights: the published configs of SD 1.5, SDXL, SD3/3.5, Flux and
their ControlNets, and what they weigh.

The configs are data (``data/architectures.json``), each module with the Hugging Face repo and file
its values come from. Components are this project's units of residency: ``denoiser``,
``text_encoder`` (all of a family's text encoders together), ``vae`` and ``controlnet``.
Parameter counts and weight bytes are computed on the meta device, so nothing is allocated;
:func:`build` makes a component at full size with random weights on a real device, for profiling.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import json
import warnings
from dataclasses import dataclass
from functools import cache
from importlib import resources
from types import MappingProxyType
from typing import Any, NamedTuple

import torch

from legodiffusion.models.components import Denoiser, TextEncoders, component_bytes
from legodiffusion.models.precision import check_name, torch_dtype

#: the sim file's weights come in this precision (the serving dtype of every reference figure)
SIM_DTYPE = torch.bfloat16
#: tokens per prompt of the offline tokenizers ``build`` pairs with the text encoders
CLIP_TOKENS, T5_TOKENS = 77, 512


class ModuleSpec(NamedTuple):
    """One module of a component: where the pipeline keeps it, its class and its published config."""

    subfolder: str
    library: str
    class_name: str
    config: MappingProxyType
    source: str


@dataclass(frozen=True)
class ArchitectureSpec:
    """A full-size architecture: its family, the repo it describes and its components' modules."""

    name: str
    title: str
    family: str
    repo: str
    components: MappingProxyType  # component -> tuple[ModuleSpec, ...]
    force_zeros_for_empty_prompt: bool = False
    base: str | None = None  # ControlNets: the architecture they steer
    scheduler: ModuleSpec | None = None  # base models: the scheduler their pipeline ships with


def _scheduler(entry: dict | None) -> ModuleSpec | None:
    if entry is None:
        return None
    return ModuleSpec("scheduler", "diffusers", entry["class"], MappingProxyType(entry["config"]), entry["source"])


def _load() -> dict[str, ArchitectureSpec]:
    data = json.loads(resources.files("legodiffusion.models").joinpath("data/architectures.json").read_text())
    out = {}
    for name, a in data["architectures"].items():
        components = {
            comp: tuple(ModuleSpec(m["subfolder"], m["library"], m["class"], MappingProxyType(m["config"]), m["source"]) for m in modules)
            for comp, modules in a["components"].items()
        }
        out[name] = ArchitectureSpec(
            name,
            a["title"],
            a["family"],
            a["repo"],
            MappingProxyType(components),
            bool(a.get("force_zeros_for_empty_prompt", False)),
            a.get("base"),
            _scheduler(a.get("scheduler")),
        )
    return out


#: name -> architecture; ``ARCHITECTURES[name].components[component]`` lists its modules
ARCHITECTURES: dict[str, ArchitectureSpec] = _load()


def architecture(name: str) -> ArchitectureSpec:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise KeyError(f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}") from None


def module_specs(name: str, component: str) -> tuple[ModuleSpec, ...]:
    arch = architecture(name)
    try:
        return arch.components[component]
    except KeyError:
        raise KeyError(f"architecture {name!r} has no component {component!r}; it has: {', '.join(arch.components)}") from None


def dtype_of(dtype: str | torch.dtype) -> torch.dtype:
    """A torch dtype, or one named as precision names them (``bf16``, ``fp16``, ``fp32``)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    check_name(dtype)
    if dtype == "auto":
        raise ValueError("a full-size architecture is built in one dtype: bf16, fp16 or fp32, not auto")
    return torch_dtype(dtype)


@contextlib.contextmanager
def _quiet():
    """diffusers warns on every ``.to(dtype)`` that a from_pretrained would keep some modules in fp32
    (these modules never come from a checkpoint), and on its own use of a deprecated import in
    FluxControlNetModel."""
    from diffusers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        logging.set_verbosity(level)


def _instantiate(spec: ModuleSpec) -> torch.nn.Module:
    """The module with its class's own initialisation, on the current default device."""
    cls = getattr(importlib.import_module(spec.library), spec.class_name)
    config = copy.deepcopy(dict(spec.config))
    module = cls.from_config(config) if spec.library == "diffusers" else cls(cls.config_class(**config))
    return module.eval().requires_grad_(False)


def _modules(name: str, component: str, device: torch.device | str, dtype: torch.dtype) -> list[torch.nn.Module]:
    specs = module_specs(name, component)
    with _quiet(), torch.device(device):
        return [_instantiate(spec).to(dtype) for spec in specs]


@cache
def _meta_counts(name: str, component: str, dtype: torch.dtype) -> tuple[int, int]:
    """(parameters, bytes of parameters and buffers) of the component built on the meta device."""
    modules = _modules(name, component, "meta", dtype)
    params = sum(p.numel() for m in modules for p in m.parameters())
    return params, sum(component_bytes(m) for m in modules)


def parameter_count(name: str, component: str) -> int:
    """Parameters of the component (tied weights once); buffers are not parameters, though
    :func:`weight_bytes` counts them (SD3's positional-embedding table is a buffer)."""
    return _meta_counts(name, component, SIM_DTYPE)[0]


def weight_bytes(name: str, component: str, dtype: str | torch.dtype = SIM_DTYPE) -> int:
    """Bytes of the component's parameters and buffers in ``dtype``, counted as
    :func:`~legodiffusion.models.components.component_bytes` counts a loaded component: floating
    tensors take the dtype's size, other buffers keep theirs."""
    return _meta_counts(name, component, dtype_of(dtype))[1]


def tokenizer_for(spec: ModuleSpec):
    """The offline tokenizer paired with a text encoder (there is no hub to fetch the real one)."""
    from legodiffusion.models.tiny import tiny_clip_tokenizer, tiny_t5_tokenizer

    # The offline tokenizers' ids are few, all below the real vocabularies: every id indexes the full table.
    return tiny_t5_tokenizer(T5_TOKENS) if spec.class_name.startswith("T5") else tiny_clip_tokenizer(CLIP_TOKENS)


def vae_scale_factor(name: str) -> int:
    """Pixels per latent along a side: the VAE's, or the base architecture's for a ControlNet."""
    arch = architecture(architecture(name).base or name)
    (vae,) = module_specs(arch.name, "vae")
    return 2 ** (len(vae.config["block_out_channels"]) - 1)


def build(name: str, component: str, device: str | torch.device = "cpu", dtype: str | torch.dtype = torch.float32, seed: int = 0) -> Any:
    """The component at full size with random weights on ``device``, as the loaders return it:
    :class:`TextEncoders` (with offline tokenizers), :class:`Denoiser`, or the module itself (VAE,
    ControlNet). Weights come from each class's own initialisation, seeded by ``seed``; the module is
    made in fp32 and then cast, so its fp32 size must fit on the device."""
    arch = architecture(name)
    torch.manual_seed(seed)
    modules = _modules(name, component, device, dtype_of(dtype))
    specs = module_specs(name, component)
    if component == "text_encoder":
        joint = arch.components["denoiser"][0].config.get("joint_attention_dim", 0) if arch.family == "sd3" else 0
        pairs = [(tokenizer_for(spec), module) for spec, module in zip(specs, modules, strict=True)]
        return TextEncoders(arch.family, pairs, arch.force_zeros_for_empty_prompt, joint)
    if component == "denoiser":
        return Denoiser(arch.family, modules[0], vae_scale_factor(name))
    return modules[0]


def table(dtype: str | torch.dtype = SIM_DTYPE, names: list[str] | None = None) -> list[dict]:
    """One row per (architecture, component): parameters and weight bytes in ``dtype``."""
    rows = []
    for name in names or list(ARCHITECTURES):
        for component in architecture(name).components:
            rows.append(
                {
                    "architecture": name,
                    "component": component,
                    "parameters": parameter_count(name, component),
                    "bytes": weight_bytes(name, component, dtype),
                }
            )
    return rows


#: the sim file's entry that names how its weight figures are made
SIM_SOURCE_KEY = "architectures"
SIM_SOURCE = (
    "computed on the meta device by `legodiffusion architectures --write-sim legodiffusion/sim/data/h100.json`: "
    "exact bf16 bytes of the parameters and buffers of the published diffusers/transformers configs in "
    "legodiffusion/models/data/architectures.json, which names the Hugging Face repo and file of each; "
    "weights_from names the architecture of each model"
)


def rewrite_sim_weights(data: dict, weights_from: dict[str, str] | None = None) -> dict:
    """The reference-profile data with each model's ``weights_bytes`` recomputed from its
    architecture: the one ``weights_from`` (model -> architecture) gives, else the one the model's
    own ``weights_from`` entry names; models with neither keep what they have. A base model also
    has a ``config`` component, which weighs nothing."""
    out = copy.deepcopy(data)
    out["sources"][SIM_SOURCE_KEY] = SIM_SOURCE
    for model, entry in out["models"].items():
        name = (weights_from or {}).get(model) or entry.get("weights_from", {}).get("architecture")
        if name is None:
            continue
        components = architecture(name).components
        weights: dict = {comp: weight_bytes(name, comp, SIM_DTYPE) for comp in components}
        if "denoiser" in components:
            weights["config"] = 0
        entry["weights_bytes"] = {**weights, "source": SIM_SOURCE_KEY}
        entry["weights_from"] = {"architecture": name, "source": SIM_SOURCE_KEY}
    return out
