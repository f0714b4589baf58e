"""Precision per component: every family in bf16 equals its diffusers pipeline loaded with
``torch_dtype=torch.bfloat16`` and the same seed; ``auto`` resolves as documented; memory is
counted at the real element size."""

import numpy as np
import pytest
import torch

from legodiffusion import EngineConfig
from legodiffusion.models.components import component_bytes, modules_of
from legodiffusion.models.precision import Precision
from legodiffusion.models.store import HostCache, ModelCatalog
from legodiffusion.workflow.catalog import flux_txt2img, sd3_txt2img, sd_txt2img, sdxl_txt2img
from tests.helpers import as_hwc, reference_pipeline, run_requests

FAMILIES = {
    "sd15": (sd_txt2img, "StableDiffusionPipeline", dict(prompt="a cat", negative_prompt="dark", steps=3, guidance_scale=7.5, seed=3)),
    "sdxl": (sdxl_txt2img, "StableDiffusionXLPipeline", dict(prompt="a lighthouse", steps=3, guidance_scale=5.0, seed=3, width=96)),
    "sd3": (
        sd3_txt2img,
        "StableDiffusion3Pipeline",
        dict(prompt="a red fox", negative_prompt="dark", steps=3, guidance_scale=7.0, seed=5, max_sequence_length=32),
    ),
    "flux": (flux_txt2img, "FluxPipeline", dict(prompt="a castle", steps=3, guidance=3.5, seed=2, width=96, max_sequence_length=32)),
}


def _reference_args(args: dict) -> dict:
    ref = dict(args, height=64, width=args.get("width", 64), num_inference_steps=args["steps"])
    del ref["steps"]
    if "guidance" in ref:
        ref["guidance_scale"] = ref.pop("guidance")
    return ref


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_bf16_equals_the_bf16_pipeline(tiny_models, family):
    import diffusers

    workflow, pipeline, args = FAMILIES[family]
    folder = tiny_models[family]
    spec = workflow(family)
    request = dict(args, height=64, width=args.get("width", 64), workflow=spec.name)
    (result,), engine = run_requests(folder, [request], models={family: folder}, workflows=[spec], dtype="bf16")
    assert result.ok, result.error
    got = as_hwc(result.outputs["image"])
    assert got.dtype == np.float32
    ref = reference_pipeline(getattr(diffusers, pipeline), folder, torch_dtype=torch.bfloat16, **_reference_args(args))
    fp32 = reference_pipeline(getattr(diffusers, pipeline), folder, **_reference_args(args))
    assert np.abs(got - ref).max() <= 1e-4
    assert np.abs(got - fp32).max() > 1e-3  # bf16 really ran: it differs from the fp32 image
    assert engine.plane.live_count() == 0


def test_auto_resolves_per_device_family_and_component():
    auto = Precision()
    assert {auto.name(c, "flux", "cpu") for c in ("denoiser", "text_encoder", "vae", "controlnet")} == {"fp32"}
    assert auto.name("denoiser", "sdxl", "cuda:0") == "bf16"
    assert auto.name("text_encoder", "sd3", "cuda:1") == "bf16"
    assert auto.name("vae", "sdxl", "cuda:0") == "fp32"  # force_upcast VAEs stay fp32
    assert auto.name("vae", "sd", "cuda:0") == "fp32"
    assert auto.name("vae", "flux", "cuda:0") == "bf16"
    assert auto.name("config", "flux", "cuda:0") == "bf16"  # latents follow the denoiser
    assert Precision("fp16").name("vae", "sdxl", "cpu") == "fp32"  # as StableDiffusionXLPipeline upcasts
    assert Precision("fp16").name("vae", "sd", "cpu") == "fp16"
    mixed = Precision.of("bf16", {"vae": "fp32", "text_encoder": "auto"})
    assert [mixed.name(c, "flux", "cpu") for c in ("denoiser", "text_encoder", "vae")] == ["bf16", "bf16", "fp32"]
    assert mixed.dtype("vae", "flux", "cpu") is torch.float32


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(dtype="fp8"), "dtype must be one of auto, bf16, fp16, fp32"),
        (dict(component_dtypes={"unet": "bf16"}), "no precision for component 'unet'"),
        (dict(component_dtypes={"vae": "half"}), "dtype of vae must be one of"),
    ],
)
def test_bad_precision_settings_are_refused_clearly(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EngineConfig(device="cpu", **kwargs)


def test_host_copies_and_memory_accounting_use_the_real_element_size(sd15):
    catalog = ModelCatalog({"sd15": sd15})
    full = HostCache(catalog)
    half = HostCache(catalog, Precision.of("bf16", {"vae": "fp32"}))
    for component, size in (("denoiser", 2), ("text_encoder", 2), ("vae", 4)):
        obj, nbytes = half.get("sd15", component)
        ref, ref_bytes = full.get("sd15", component)
        floats = sum(p.numel() for m in modules_of(obj) for p in m.parameters())
        assert nbytes == component_bytes(obj)
        assert nbytes < ref_bytes if size == 2 else nbytes == ref_bytes
        assert nbytes >= floats * size
    assert half.get("sd15", "config")[0].dtype is torch.bfloat16


def test_mixed_precision_runs_and_keeps_each_component_in_its_dtype(tiny_models):
    folder = tiny_models["sdxl"]
    spec = sdxl_txt2img("sdxl")
    request = dict(prompt="a lighthouse", steps=2, guidance_scale=5.0, seed=3, height=64, width=64, workflow=spec.name)
    (result,), engine = run_requests(
        folder, [request], models={"sdxl": folder}, workflows=[spec], dtype="bf16", component_dtypes={"vae": "fp32"}
    )
    assert result.ok, result.error
    resident = engine.backend.workers[0].models
    dtypes = {key[1]: _weights_dtype(resident._objs[key]) for key in resident.keys() if key[1] != "config"}
    assert dtypes == {"text_encoder": torch.bfloat16, "denoiser": torch.bfloat16, "vae": torch.float32}
    image = as_hwc(result.outputs["image"])
    assert np.isfinite(image).all() and 0.0 <= image.min() and image.max() <= 1.0


def _weights_dtype(obj):
    (dtype,) = {p.dtype for m in modules_of(obj) for p in m.parameters()}
    return dtype
