"""The GPU check in one command: equivalence, overhead, measured profiles and load times.

On a CUDA machine, with full-size architectures and random weights in bf16 (no checkpoint can be
downloaded, so the published configs are built at full size, see ``legodiffusion architectures``):

  (a) each family, decomposed vs its diffusers pipeline made of the very same modules, same seed:
      the images must agree within bf16 tolerance;
  (b) decomposed / pipeline wall time of one request (20 steps at 1024²; the goal is <= 1.03);
  (c) every operator of the simulator's workload profiled at batch 1, 2, 4, 8 at 1024², written as
      a reference file in the simulator's schema (``<gpu>.json``), each figure marked measured;
  (d) component load times disk -> host -> device, and a copy of one Flux ControlNet residual set.

Without CUDA the same code paths run on the tiny models on CPU (small images, few steps), so the
script cannot rot; its figures are then not GPU figures and it says so. Everything goes under one
folder (``--out``); the last line printed is one JSON object.

    python benchmarks/gpu_check.py                      # everything, default folder
    python benchmarks/gpu_check.py --families flux --skip-profiles
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import RESULTS, stamp  # noqa: E402
from legodiffusion import Engine, EngineConfig  # noqa: E402
from legodiffusion.models.components import DENOISER, TEXT_ENCODERS, component_bytes, family_of, load_component  # noqa: E402
from legodiffusion.models.precision import Precision  # noqa: E402
from legodiffusion.models.store import to_device  # noqa: E402
from legodiffusion.ops import default_registry, sampling  # noqa: E402
from legodiffusion.profiles.profiler import device_name, measure  # noqa: E402
from legodiffusion.runtime.images import to_pil  # noqa: E402
from legodiffusion.server.catalog import txt2img_for  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
#: family -> (full-size architecture on a GPU, tiny model on CPU, reference pipeline class)
FAMILIES = {
    "sd15": ("sd15", "sd15", "StableDiffusionPipeline"),
    "sdxl": ("sdxl", "sdxl", "StableDiffusionXLPipeline"),
    "sd3": ("sd3-medium", "sd3", "StableDiffusion3Pipeline"),
    "flux": ("flux-dev", "flux", "FluxPipeline"),
}
#: tiny stand-ins for the simulator's architectures on CPU
TINY = {
    **{arch: tiny for arch, tiny, _ in FAMILIES.values()},
    "flux-schnell": "flux-schnell",
    "sd3.5-large": "sd3",
    "sd3.5-large-turbo": "sd3",
    "flux-controlnet-union": "controlnet-flux",
}
#: images agree "within bf16 tolerance": mean absolute difference of the [0, 1] images at most this
MEAN_TOLERANCE = 0.02
T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[gpu_check {time.perf_counter() - T0:7.1f}s] {msg}", flush=True)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


class Setup:
    """Where the check runs and at what scale: full size on CUDA, tiny on CPU."""

    def __init__(self, args) -> None:
        self.gpu = torch.cuda.is_available() and not args.cpu
        self.device = "cuda:0" if self.gpu else "cpu"
        self.size = args.size or (1024 if self.gpu else 64)
        self.steps = args.steps or (20 if self.gpu else 3)
        self.batches = (1, 2, 4, 8)
        self.repeats = 3 if self.gpu else 1
        self.out = Path(args.out or RESULTS / "gpu_check" / device_name(self.device).replace(":", "_").replace("/", "_"))
        self.models = self.out / "models"
        self.precision = Precision(args.dtype)
        self.full_size = self.gpu or args.full_size
        self._tiny: dict[str, Path] | None = None

    def folder(self, architecture: str) -> Path | None:
        """The model folder standing for ``architecture``: its random-weight folder on a GPU (or
        with ``--full-size``), its tiny stand-in on CPU (None where there is none)."""
        if self.full_size:
            from legodiffusion.models.random_folder import write_folder

            return write_folder(architecture, self.models / architecture)
        if self._tiny is None:
            from legodiffusion.models.tiny import write_tiny_models

            self._tiny = write_tiny_models(self.models)
        return self._tiny.get(TINY.get(architecture, ""))


# -- (a) and (b): equivalence and overhead ------------------------------------------------------


def reference_pipeline(engine: Engine, name: str, family: str, pipeline: str, sampler: str):
    """The family's diffusers pipeline assembled from the engine's own host copies of the modules."""
    import diffusers

    host = engine.backend.host
    text, den, vae, cfg = (host.get(name, c)[0] for c in ("text_encoder", "denoiser", "vae", "config"))
    parts: dict = {DENOISER[family]: den.module, "vae": vae}
    for (tok_sub, enc_sub), pair in zip(TEXT_ENCODERS[family], text.pairs, strict=True):
        parts[tok_sub], parts[enc_sub] = pair if pair is not None else (None, None)
    scheduler = getattr(diffusers, sampling.SAMPLERS[sampler])
    parts["scheduler"] = scheduler.from_config(cfg.scheduler_config, **sampling.CONFIG_OVERRIDES.get(sampler, {}))
    if family == "sd":
        parts.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    if family == "sdxl":
        parts.update(force_zeros_for_empty_prompt=text.force_zeros_for_empty_prompt, add_watermarker=False)
    pipe = getattr(diffusers, pipeline)(**parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _requests(family: str, setup: Setup, steps: int) -> tuple[dict, dict]:
    """(our inputs, the pipeline's keyword arguments) for one request."""
    ours = {"prompt": "a lighthouse on a cliff at dusk", "steps": steps, "seed": 7, "height": setup.size, "width": setup.size}
    ref = {"prompt": ours["prompt"], "num_inference_steps": steps, "height": setup.size, "width": setup.size}
    if family == "flux":
        ours.update(guidance=3.5, max_sequence_length=128)
        ref.update(guidance_scale=3.5, max_sequence_length=128)
    else:
        ours.update(negative_prompt="blurry", guidance_scale=5.0)
        ref.update(negative_prompt="blurry", guidance_scale=5.0)
        if family == "sd3":
            ours["max_sequence_length"] = ref["max_sequence_length"] = 128
    return ours, ref


async def check_family(key: str, setup: Setup) -> dict:
    architecture, _, pipeline = FAMILIES[key]
    folder = setup.folder(architecture)
    family = family_of(folder)
    workflow = txt2img_for(folder, key)
    config = EngineConfig(workers=1, device="cuda" if setup.gpu else "cpu", dtype=setup.precision.default)
    async with Engine({key: folder}, config) as engine:
        engine.add_workflow(workflow)
        sampler = workflow.inputs["sampler"].default if "sampler" in workflow.inputs else "flow_euler"
        pipe = reference_pipeline(engine, key, family, pipeline, sampler).to(setup.device)

        def ref_run(steps: int):
            _, kwargs = _requests(family, setup, steps)
            generator = torch.Generator("cpu").manual_seed(7)
            return pipe(**kwargs, generator=generator, output_type="np").images[0]

        async def our_run(steps: int):
            inputs, _ = _requests(family, setup, steps)
            result = await engine.run(workflow.name, inputs)
            if not result.ok:
                raise RuntimeError(f"{key}: {result.error}")
            return result.outputs["image"]

        await our_run(2)  # warm-up: loads, kernels
        ref_run(2)
        sync(setup.device)
        t0 = time.perf_counter()
        ours = await our_run(setup.steps)
        sync(setup.device)
        ours_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        ref = ref_run(setup.steps)
        sync(setup.device)
        ref_s = time.perf_counter() - t0
    got = ours[0].permute(1, 2, 0).float().cpu().numpy()
    diff = abs(got - ref)
    images = setup.out / "images"
    images.mkdir(parents=True, exist_ok=True)
    to_pil(ours)[0].save(images / f"{key}-decomposed.png")
    to_pil(torch.from_numpy(ref).permute(2, 0, 1)[None])[0].save(images / f"{key}-pipeline.png")
    if setup.gpu:
        torch.cuda.empty_cache()
    row = {
        "architecture": architecture if setup.full_size else f"tiny {key}",
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "equal": bool(diff.mean() <= MEAN_TOLERANCE),
        "decomposed_s": round(ours_s, 4),
        "pipeline_s": round(ref_s, 4),
        "ratio": round(ours_s / ref_s, 3),
    }
    log(f"(a,b) {key}: max |diff| {row['max_abs_diff']:.2e}, mean {row['mean_abs_diff']:.2e}; decomposed / pipeline {row['ratio']}")
    return row


# -- (c): profiles in the simulator's schema ----------------------------------------------------


def profile_simulator_models(setup: Setup, only: list[str] | None = None) -> tuple[dict, dict]:
    """Profile every operator of the simulator's models that runs live; returns (profiles by the
    simulator's model name, what was skipped and why)."""
    from legodiffusion.models.architectures import architecture as arch_of
    from legodiffusion.sim.measured import NOT_OPS
    from legodiffusion.sim.reference import load_reference

    base = load_reference("h100")
    profiles, skipped = {}, {}
    for model, entry in base["models"].items():
        if only and model not in only:
            continue
        arch = entry["weights_from"]["architecture"]
        spec = arch_of(arch)
        if spec.base is not None and spec.family != "flux":
            skipped[model] = "SD3 ControlNets do not run live yet (issue 18)"
            continue
        folder = setup.folder(spec.base or arch)
        cn_folder = setup.folder(arch) if spec.base else None
        if folder is None or (spec.base and cn_folder is None):
            skipped[model] = "no stand-in on this device"
            continue
        ops = [(op, "default") for op in entry if op not in NOT_OPS]
        t0 = time.perf_counter()
        profiles[model] = measure(
            folder,
            default_registry(),
            ops,
            setup.device,
            setup.batches,
            (setup.size,),
            setup.repeats,
            precision=setup.precision,
            component_folders={"controlnet": cn_folder} if cn_folder else None,
        )
        log(f"(c) {model}: {', '.join(op for op, _ in ops)} at batches {setup.batches} in {time.perf_counter() - t0:.1f}s")
        if setup.gpu:
            torch.cuda.empty_cache()
    return profiles, skipped


# -- (d): loads and a residual transfer ---------------------------------------------------------


def _drop_cache(path: Path) -> None:
    """Ask the kernel to forget a file's cached pages, so that reading it reads the disk."""
    os.sync()  # dirty pages cannot be dropped
    for f in path.rglob("*.safetensors"):
        with open(f, "rb") as fh:
            os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def measure_loads(setup: Setup) -> dict:
    """Disk -> host -> device for one denoiser saved to disk, and one Flux ControlNet residual set
    (15 blocks of 4096 tokens x 3072 in bf16 at 1024²) copied device to device."""
    folder = setup.folder("sd15")
    den = load_component(folder, "denoiser", setup.precision, setup.device)
    saved = setup.out / "disk" / "unet"
    den.module.save_pretrained(saved)
    nbytes = component_bytes(den)
    del den
    _drop_cache(saved)
    from diffusers import UNet2DConditionModel

    t0 = time.perf_counter()
    host = UNet2DConditionModel.from_pretrained(saved, torch_dtype=torch.bfloat16)
    disk_s = time.perf_counter() - t0
    if setup.gpu:
        from legodiffusion.models.store import pin

        t0 = time.perf_counter()
        pin(host)
        pin_s = time.perf_counter() - t0
    else:
        pin_s = 0.0
    sync(setup.device)
    t0 = time.perf_counter()
    to_device(host, setup.device)
    sync(setup.device)
    device_s = time.perf_counter() - t0
    tokens = (setup.size // 16) ** 2
    residuals = [torch.randn(1, tokens, 3072, dtype=torch.bfloat16, device=setup.device) for _ in range(15)]
    target = "cuda:1" if setup.gpu and torch.cuda.device_count() > 1 else setup.device
    sync(setup.device)
    t0 = time.perf_counter()
    moved = [r.to(target, copy=True) for r in residuals]
    sync(target)
    residual_s = time.perf_counter() - t0
    res_bytes = sum(r.numel() * r.element_size() for r in moved)
    out = {
        "component": "sd15 UNet" + ("" if setup.full_size else " (tiny)"),
        "bytes": nbytes,
        "disk_to_host_s": round(disk_s, 4),
        "pin_s": round(pin_s, 4),
        "host_to_device_s": round(device_s, 4),
        "disk_bytes_per_s": nbytes / disk_s,
        "pcie_bytes_per_s": nbytes / device_s,
        "residual_set_bytes": res_bytes,
        "residual_copy_s": round(residual_s, 5),
        "residual_copy": f"{setup.device} -> {target}" + (" (one device: a copy within it)" if target == setup.device else ""),
    }
    log(
        f"(d) {nbytes / 1e9:.2f} GB: disk->host {disk_s:.2f}s, host->device {device_s:.2f}s; residuals {res_bytes / 1e6:.0f} MB in {residual_s * 1e3:.1f} ms"
    )
    return out


# -- main -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=None, help="output folder (default benchmarks/results/gpu_check/<device>)")
    p.add_argument("--families", default=",".join(FAMILIES), help=f"comma-separated, of {', '.join(FAMILIES)}")
    p.add_argument("--size", type=int, default=None, help="image side (default 1024 on a GPU, 64 on CPU)")
    p.add_argument("--steps", type=int, default=None, help="steps of the timed request (default 20 on a GPU, 3 on CPU)")
    p.add_argument("--sim-models", default=None, help="comma-separated simulator models to profile in (c) (default: all)")
    p.add_argument("--skip-profiles", action="store_true", help="skip (c)")
    p.add_argument("--cpu", action="store_true", help="run the CPU path even where CUDA is available")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"], help="weight precision (default bf16)")
    p.add_argument("--full-size", action="store_true", help="on CPU too, the full-size architectures (slow; small images advised)")
    args = p.parse_args(argv)
    started = time.time()
    setup = Setup(args)
    setup.out.mkdir(parents=True, exist_ok=True)
    where = (
        torch.cuda.get_device_name(0)
        if setup.gpu
        else f"CPU ({'full-size' if setup.full_size else 'tiny'} models: these are NOT GPU figures)"
    )
    log(f"device {setup.device}: {where}; images {setup.size}px, {setup.steps} steps, weights {args.dtype}; output {setup.out}")
    summary: dict = {"device": where, "gpu": setup.gpu, "size": setup.size, "steps": setup.steps}
    summary["equivalence"] = {k: asyncio.run(check_family(k, setup)) for k in args.families.split(",") if k}
    summary["loads"] = measure_loads(setup)
    if not args.skip_profiles:
        from legodiffusion.sim.measured import measured_reference
        from legodiffusion.sim.reference import load_reference

        profiles, skipped = profile_simulator_models(setup, args.sim_models.split(",") if args.sim_models else None)
        memory = torch.cuda.get_device_properties(0).total_memory if setup.gpu else load_reference("h100")["memory_bytes"]
        loads = {k: summary["loads"][k] for k in ("disk_bytes_per_s", "pcie_bytes_per_s")}
        source = f"benchmarks/gpu_check.py at {stamp([], started)['commit'] or 'an unknown commit'}" + (
            "" if setup.gpu else f"; CPU at {setup.size}px: NOT GPU figures"
        )
        data, measured = measured_reference(
            load_reference("h100"), profiles, device_name(setup.device), memory, source, setup.size**2, loads
        )
        name = device_name(setup.device).split(":", 1)[-1].lower().replace(":", "_").replace(" ", "_")
        (setup.out / f"{name}.json").write_text(json.dumps(data, indent=1) + "\n")
        summary["profiles"] = {"file": str(setup.out / f"{name}.json"), "measured": measured, "skipped": skipped}
    summary["passed"] = all(row["equal"] for row in summary["equivalence"].values())
    summary["stamp"] = stamp([], started)
    (setup.out / "gpu_check.json").write_text(json.dumps(summary, indent=2) + "\n")
    if not setup.gpu:
        log(
            f"no CUDA here: the same code paths ran on the {'full-size' if setup.full_size else 'tiny'} models on CPU; none of these figures is a GPU figure"
        )
    print(
        json.dumps({k: summary[k] for k in ("device", "passed")} | {"ratios": {k: r["ratio"] for k, r in summary["equivalence"].items()}})
    )
    return summary


if __name__ == "__main__":
    main()
