"""Where models live (name -> folder), the process-wide host copies, and what a worker keeps
resident on its device under a memory budget."""

from __future__ import annotations

import copy
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from legodiffusion.core.residency import LRUBudget
from legodiffusion.models.components import component_bytes, load_component, modules_of
from legodiffusion.models.patches import load_lora_file
from legodiffusion.models.precision import Precision


class ModelCatalog:
    """Model names to diffusers-format folders. Names are what workflows and clients see;
    folders never leave the server."""

    def __init__(self, models: dict[str, str | Path] | None = None) -> None:
        self._folders: dict[str, Path] = {}
        for name, folder in (models or {}).items():
            self.add(name, folder)

    def add(self, name: str, folder: str | Path) -> None:
        folder = Path(folder)
        if folder.is_file() and folder.suffix == ".safetensors":  # a LoRA
            self._folders[name] = folder
            return
        if not (folder / "model_index.json").exists() and not (folder / "config.json").exists():
            raise FileNotFoundError(
                f"model {name!r}: {folder} has no model_index.json (pipeline) or config.json (single model), and is no .safetensors LoRA"
            )
        self._folders[name] = folder

    def folder(self, name: str) -> Path:
        try:
            return self._folders[name]
        except KeyError:
            raise KeyError(f"unknown model {name!r}; known: {sorted(self._folders)}") from None

    def __contains__(self, name: str) -> bool:
        return name in self._folders

    def names(self) -> list[str]:
        return sorted(self._folders)


class HostCache:
    """Host-memory copies of components, loaded from disk once per process and shared by every
    worker: a device copy evicted under memory pressure comes back from here, not from disk. Each
    is loaded in the dtype ``precision`` gives it on ``device`` (the kind of device the workers
    of this process run on)."""

    def __init__(self, catalog: ModelCatalog, precision: Precision | None = None, device: str = "cpu") -> None:
        self.catalog = catalog
        self.precision = precision or Precision()
        self.device = device
        self._objs: dict[tuple[str, str], Any] = {}
        self._bytes: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        self._loading: dict[tuple, threading.Event] = {}
        self.disk_loads = 0
        self.disk_load_s = 0.0

    def lora(self, name: str, family: str) -> tuple:
        """A LoRA's (state dict, alphas, metadata) in host memory, read from disk on first use."""
        key = (name, "lora:" + family)
        with self._lock:
            event = self._loading.get(key)
            if event is None and key not in self._objs:
                event = self._loading[key] = threading.Event()
                owner = True
            else:
                owner = False
        if owner:
            try:
                t0 = time.perf_counter()
                value = load_lora_file(self.catalog.folder(name), family)
                with self._lock:
                    self._objs[key] = value
                    self.disk_loads += 1
                    self.disk_load_s += time.perf_counter() - t0
            finally:
                event.set()
                with self._lock:
                    self._loading.pop(key, None)
        elif event is not None:
            event.wait()
        with self._lock:
            if key not in self._objs:
                raise RuntimeError(f"LoRA {name!r} failed to load")
            return self._objs[key]

    def lora_ready(self, name: str, family: str) -> bool:
        return (name, "lora:" + family) in self._objs

    def prefetch_lora(self, name: str, family: str) -> None:
        """Start reading a LoRA in the background (no-op when it is loaded or loading)."""
        key = (name, "lora:" + family)
        with self._lock:
            busy = key in self._objs or key in self._loading
        if not busy:
            threading.Thread(target=self._quiet_lora, args=(name, family), daemon=True, name=f"lora-{name}").start()

    def _quiet_lora(self, name: str, family: str) -> None:
        try:
            self.lora(name, family)
        except Exception:  # reported to the request that waits for it
            pass

    def get(self, model: str, component: str) -> tuple[Any, int]:
        key = (model, component)
        with self._lock:
            if key not in self._objs:
                t0 = time.perf_counter()
                obj = load_component(self.catalog.folder(model), component, self.precision, self.device)
                if str(self.device).startswith("cuda"):
                    pin(obj)
                self.disk_load_s += time.perf_counter() - t0
                self.disk_loads += 1
                self._objs[key] = obj
                self._bytes[key] = component_bytes(obj)
            return self._objs[key], self._bytes[key]


def to_device(obj: Any, device: str) -> Any:
    """A copy of a host component on ``device``, ready to use on the current stream."""
    copy_, pending = copy_to_device(obj, device)
    if pending is not None:
        pending.wait(device)
    return copy_


class PendingCopy:
    """Host -> device copies still running on the side stream: the first use of the component
    waits for them on its own stream (and marks the tensors used there, for the allocator)."""

    def __init__(self, event, tensors: list) -> None:
        self.event = event
        self.tensors = tensors

    def wait(self, device: str) -> None:
        stream = torch.cuda.current_stream(device)
        stream.wait_event(self.event)
        for t in self.tensors:
            t.record_stream(stream)


def copy_to_device(obj: Any, device: str) -> tuple[Any, PendingCopy | None]:
    """A worker's own copy of a host component on its device (on the CPU too: a worker stands for
    a device with its own memory, and LoRA adapters injected into its copy must not leak into
    another worker's batches), and on CUDA the copies still in flight.

    The tensors are copied straight to the device and the module structure around them is
    deep-copied with those copies in place, so no second host copy is made. On CUDA the copies are
    non-blocking on a side stream: from pinned host memory they run asynchronously, beside whatever
    the worker computes meanwhile, and only the component's first use waits for them."""
    tensors = {id(t): t for m in modules_of(obj) for t in (*m.parameters(), *m.buffers())}
    pending = None
    if str(device).startswith("cuda"):
        side = _copy_stream(device)
        with torch.cuda.stream(side):
            copies = {i: t.to(device, non_blocking=True) for i, t in tensors.items()}
            event = torch.cuda.Event()
            event.record(side)
        pending = PendingCopy(event, list(copies.values()))
    else:
        copies = {i: t.to(device, copy=True) for i, t in tensors.items()}
    memo = {i: torch.nn.Parameter(c, requires_grad=False) if isinstance(tensors[i], torch.nn.Parameter) else c for i, c in copies.items()}
    return copy.deepcopy(obj, memo), pending


_STREAMS: dict[str, Any] = {}


def _copy_stream(device: str):
    """One side stream per device for host -> device copies."""
    if device not in _STREAMS:
        _STREAMS[device] = torch.cuda.Stream(device)
    return _STREAMS[device]


def pin(obj: Any) -> None:
    """Move a host component's tensors into page-locked memory, from which host -> device copies
    are asynchronous and run at full PCIe bandwidth (only where CUDA is available)."""
    if torch.cuda.is_available():
        for module in modules_of(obj):
            module._apply(lambda t: t.pin_memory() if t.device.type == "cpu" else t)


@dataclass
class Residency:
    obj: Any
    loaded: list[tuple]
    evicted: list[tuple]


class ResidentModels:
    """One worker's resident components: an LRU under ``budget_bytes`` (None: unlimited).

    Keys are ``(model, component, scope)``; scope None means shared by every workflow. A component
    that does not fit evicts the least recently used ones first; one that cannot fit even alone
    raises ``MemoryError`` (which fails the batch, not the worker). The eviction decisions are
    :class:`~legodiffusion.core.residency.LRUBudget`'s, as in the simulator.

    With ``compile``, a denoiser's copy runs through ``torch.compile`` on bucketed shapes
    (:mod:`legodiffusion.runtime.compile`); its compile events are in ``compile_log``."""

    def __init__(self, host: HostCache, device: str = "cpu", budget_bytes: int | None = None, compile: bool = False) -> None:
        self.host = host
        self.device = device
        self.compile = compile
        self.compile_log = None
        if compile:
            from legodiffusion.runtime.compile import CompileLog  # torch.compile only when asked for

            self.compile_log = CompileLog()
        self.lru = LRUBudget(budget_bytes)
        self._objs: dict[tuple, Any] = {}
        self.load_counts: Counter = Counter()  # (model, component, scope) -> times made resident
        self.load_s = 0.0
        self.patches: dict[tuple, set[str]] = {}  # resident key -> LoRA adapters injected into it
        self._pending: dict[tuple, PendingCopy] = {}  # resident key -> its copies still in flight
        self.patch_loads = 0

    @property
    def budget_bytes(self) -> int | None:
        return self.lru.budget_bytes

    @property
    def used_bytes(self) -> int:
        return self.lru.used_bytes

    @property
    def loads(self) -> int:
        return self.lru.loads

    @property
    def evictions(self) -> int:
        return self.lru.evictions

    def acquire(self, model: str, component: str, scope: str | None = None, activation_bytes: int = 0, use: bool = True) -> Residency:
        """The worker's copy of a component, loaded if needed, with room beside the resident
        weights for ``activation_bytes`` of working memory (the call's profiled peak): least
        recently used components are evicted for either. ``use=False`` (a prefetch) starts the
        load without waiting for its copies to land; the first use waits."""
        key = (model, component, scope)
        if key in self.lru and not activation_bytes:
            self.lru.touch(key)
            return Residency(self._ready(key, use), [], [])
        t0 = time.perf_counter()
        held = key in self.lru
        host_obj, nbytes = (None, 0) if held else self.host.get(model, component)
        try:
            _, evicted = self.lru.admit(key, nbytes, activation_bytes)
        except MemoryError:
            raise MemoryError(
                f"{model}/{component} ({nbytes} bytes of weights) with {activation_bytes} bytes of activations does not fit "
                f"in this worker's budget of {self.budget_bytes} bytes"
            ) from None
        for old in evicted:
            del self._objs[old]
            self.patches.pop(old, None)
            self._pending.pop(old, None)
        if held:
            return Residency(self._ready(key, use), [], evicted)
        obj, pending = copy_to_device(host_obj, self.device)
        if pending is not None:
            self._pending[key] = pending
        if self.compile and component == "denoiser":
            from legodiffusion.runtime.compile import compile_denoiser

            obj = compile_denoiser(obj, self.compile_log, model)
        self._objs[key] = obj
        self.load_counts[key] += 1
        self.load_s += time.perf_counter() - t0
        return Residency(self._ready(key, use), [key], evicted)

    def _ready(self, key: tuple, use: bool) -> Any:
        if use and (pending := self._pending.pop(key, None)) is not None:
            pending.wait(self.device)
        return self._objs[key]

    def keys(self) -> list[tuple]:
        return self.lru.keys()

    def release(self) -> None:
        """Drop every resident copy (a lost worker's, once its thread has ended), so its device
        memory returns to the replacement."""
        self._objs.clear()
        self._pending.clear()
        self.patches.clear()
        self.lru = LRUBudget(self.lru.budget_bytes)

    def compile_events(self) -> list:
        """Each compiled bucket's first call (model, padded shape, seconds); empty without compile."""
        return self.compile_log.events() if self.compile_log is not None else []
