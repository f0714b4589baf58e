"""Where models live (name -> folder), the process-wide host copies, and what a worker keeps
resident on its device under a memory budget."""

from __future__ import annotations

import copy
import threading
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from legodiffusion.models.components import component_bytes, load_component, modules_of


class ModelCatalog:
    """Model names to diffusers-format folders. Names are what workflows and clients see;
    folders never leave the server."""

    def __init__(self, models: dict[str, str | Path] | None = None) -> None:
        self._folders: dict[str, Path] = {}
        for name, folder in (models or {}).items():
            self.add(name, folder)

    def add(self, name: str, folder: str | Path) -> None:
        folder = Path(folder)
        if not (folder / "model_index.json").exists() and not (folder / "config.json").exists():
            raise FileNotFoundError(f"model {name!r}: {folder} has no model_index.json (pipeline) or config.json (single model)")
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
    worker: a device copy evicted under memory pressure comes back from here, not from disk."""

    def __init__(self, catalog: ModelCatalog) -> None:
        self.catalog = catalog
        self._objs: dict[tuple[str, str], Any] = {}
        self._bytes: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        self.disk_loads = 0
        self.disk_load_s = 0.0

    def get(self, model: str, component: str) -> tuple[Any, int]:
        key = (model, component)
        with self._lock:
            if key not in self._objs:
                t0 = time.perf_counter()
                obj = load_component(self.catalog.folder(model), component)
                self.disk_load_s += time.perf_counter() - t0
                self.disk_loads += 1
                self._objs[key] = obj
                self._bytes[key] = component_bytes(obj)
            return self._objs[key], self._bytes[key]


def _to_device(obj: Any, device: str, private: bool) -> Any:
    """A device copy of a host component. On the CPU the host copy itself serves unless a private
    copy is wanted (bundle baseline: every workflow owns its weights)."""
    if device == "cpu" and not private:
        return obj
    obj = copy.deepcopy(obj)
    for module in modules_of(obj):
        module.to(device)
    return obj


@dataclass
class Residency:
    obj: Any
    loaded: list[tuple]
    evicted: list[tuple]


class ResidentModels:
    """One worker's resident components: an LRU under ``budget_bytes`` (None: unlimited).

    Keys are ``(model, component, scope)``; scope None means shared by every workflow. A component
    that does not fit evicts the least recently used ones first; one that cannot fit even alone
    raises ``MemoryError`` (which fails the batch, not the worker)."""

    def __init__(self, host: HostCache, device: str = "cpu", budget_bytes: int | None = None) -> None:
        self.host = host
        self.device = device
        self.budget_bytes = budget_bytes
        self._lru: OrderedDict[tuple, tuple[Any, int]] = OrderedDict()
        self.used_bytes = 0
        self.loads = 0
        self.load_counts: Counter = Counter()  # (model, component, scope) -> times made resident
        self.evictions = 0
        self.load_s = 0.0

    def acquire(self, model: str, component: str, scope: str | None = None) -> Residency:
        key = (model, component, scope)
        hit = self._lru.get(key)
        if hit is not None:
            self._lru.move_to_end(key)
            return Residency(hit[0], [], [])
        t0 = time.perf_counter()
        host_obj, nbytes = self.host.get(model, component)
        if self.budget_bytes is not None and nbytes > self.budget_bytes:
            raise MemoryError(f"{model}/{component} needs {nbytes} bytes, more than this worker's budget of {self.budget_bytes} bytes")
        evicted = []
        while self.budget_bytes is not None and self.used_bytes + nbytes > self.budget_bytes:
            old, (_, old_bytes) = self._lru.popitem(last=False)
            self.used_bytes -= old_bytes
            self.evictions += 1
            evicted.append(old)
        obj = _to_device(host_obj, self.device, private=scope is not None)
        self._lru[key] = (obj, nbytes)
        self.used_bytes += nbytes
        self.loads += 1
        self.load_counts[key] += 1
        self.load_s += time.perf_counter() - t0
        return Residency(obj, [key], evicted)

    def keys(self) -> list[tuple]:
        return list(self._lru)
