"""Measuring profiles on the current device, and the cache they are kept in.

A profile is keyed by the model's content (configs and weight-file sizes), the device, and the
versions of torch/diffusers/transformers, so a changed model, card or library is measured anew.
"""

from __future__ import annotations

import functools
import hashlib
import json
import platform
import time
from pathlib import Path

import torch

from legodiffusion import config
from legodiffusion.models.components import component_bytes, family_or_none, load_component, modules_of
from legodiffusion.models.precision import COMPONENTS, Precision
from legodiffusion.models.store import ModelCatalog, to_device
from legodiffusion.ops.base import OperatorRegistry
from legodiffusion.profiles.book import ComponentProfile, ModelProfile, OpPoint


def versions() -> dict[str, str]:
    import diffusers
    import transformers

    return {"torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__}


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return "cuda:" + torch.cuda.get_device_name(device).replace(" ", "_")
    return "cpu:" + (platform.processor() or platform.machine()) + f":{torch.get_num_threads()}t"


def model_key(folder: Path) -> str:
    """Hash of every config file and the size of every weight file in a model folder."""
    h = hashlib.sha256()
    for path in sorted(Path(folder).rglob("*")):
        if not path.is_file():
            continue
        rel = str(path.relative_to(folder))
        h.update(rel.encode())
        if path.suffix in (".json", ".txt"):
            h.update(path.read_bytes())
        else:
            h.update(str(path.stat().st_size).encode())
    return h.hexdigest()[:16]


def precision_tag(folder: Path, device: str, precision: Precision | None = None) -> str:
    """The dtypes a model's components get (denoiser, text encoders, VAE, ControlNet), e.g.
    ``bf16-bf16-fp32-bf16``: a profile measured in one precision says nothing of another."""
    family = family_or_none(folder)
    precision = precision or Precision()
    return "-".join(precision.name(c, family, device) for c in COMPONENTS)


def profile_path(folder: Path, device: str, directory: Path | None = None, precision: Precision | None = None) -> Path:
    directory = Path(directory) if directory else config.home() / "profiles"
    v = hashlib.sha256(json.dumps(versions(), sort_keys=True).encode()).hexdigest()[:8]
    where = device_name(device).replace(":", "_").replace("/", "_")
    return directory / f"{model_key(folder)}-{where}-{precision_tag(folder, device, precision)}-{v}.json"


def cached_profiles(
    catalog: ModelCatalog, device: str, directory: Path | None = None, precision: Precision | None = None
) -> dict[str, ModelProfile]:
    """Profiles already measured for the catalogue's models on this device in this precision
    (missing ones skipped)."""
    out = {}
    for name in catalog.names():
        path = profile_path(catalog.folder(name), device, directory, precision)
        if path.exists():
            out[name] = ModelProfile.load(path)
    return out


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def _peak_during(fn, device: str) -> tuple[float, int]:
    """(seconds, peak activation bytes) of one call. On CUDA the allocator's high-water mark; on
    CPU the running sum of allocations minus frees seen by the torch profiler."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        return time.perf_counter() - t0, torch.cuda.max_memory_allocated(device) - base
    t0 = time.perf_counter()
    fn()
    elapsed = time.perf_counter() - t0
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    running = peak = 0
    for ev in sorted(prof.events(), key=lambda e: e.time_range.start):
        running += ev.self_cpu_memory_usage
        peak = max(peak, running)
    return elapsed, peak


def _on(obj, device: str) -> bool:
    tensors = [t for m in modules_of(obj) for t in m.parameters()]
    return bool(tensors) and all(t.device == torch.device(device) for t in tensors)


def measure(
    folder: Path,
    registry: OperatorRegistry,
    ops: list[tuple[str, str]],
    device: str = "cpu",
    batches: tuple[int, ...] = (1, 2, 4, 8),
    sizes: tuple[int, ...] = (64, 128, 256),
    repeats: int = 3,
    progress=None,
    precision: Precision | None = None,
    component_folders: dict[str, Path] | None = None,
) -> ModelProfile:
    """Measure every (op, mode) in ``ops`` over ``batches`` x ``sizes`` (square images), each
    component loaded in the dtype ``precision`` gives it on ``device``. ``component_folders`` names
    where components saved on their own come from (``{"controlnet": folder}``); the rest, and the
    pipeline facts, come from ``folder``."""
    folder = Path(folder)
    component_folders = component_folders or {}
    prof = ModelProfile(model_key(folder), device_name(device), versions())
    cache: dict[str, object] = {}
    for op_name, mode in ops:
        op = registry.get(op_name)
        if op.service is not None:  # glue on a data-plane store (the approximate cache): costed as glue
            continue
        if op.component and op.component not in cache:
            t0 = time.perf_counter()
            host = load_component(component_folders.get(op.component, folder), op.component, precision, device)
            disk_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            # a component built on the device (a random-weight folder) is used where it is
            obj = host if _on(host, device) else to_device(host, device)
            _sync(device)
            prof.components[op.component] = ComponentProfile(disk_s, time.perf_counter() - t0, component_bytes(obj))
            cache[op.component] = obj
        model = cache.get(op.component) if op.component else None
        cfg = cache.get("config") or load_component(folder, "config", precision, device)
        cache["config"] = cfg
        sized = op.concat_batch or op_name in ("init_latents", "upscale_latents")
        for size in sizes if sized else (0,):
            for batch in batches:
                items = op.example_items(cfg, mode, batch, size or cfg.default_size, device)
                call = functools.partial(op.run, model, mode, items)
                call()  # warm-up
                times, peak = [], 0
                for _ in range(repeats):
                    s, p = _peak_during(call, device)
                    times.append(s)
                    peak = max(peak, p)
                prof.ops.append(OpPoint(op_name, mode, batch, size * size, sorted(times)[len(times) // 2], int(peak)))
                if progress:
                    progress(op_name, mode, batch, size)
    return prof
