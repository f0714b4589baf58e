"""Where models live (name -> folder) and what a worker keeps resident."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from legodiffusion.models.components import component_bytes, load_component


class ModelCatalog:
    """Model names to diffusers-format folders. Names are what workflows and clients see;
    folders never leave the server."""

    def __init__(self, models: dict[str, str | Path] | None = None) -> None:
        self._folders: dict[str, Path] = {}
        for name, folder in (models or {}).items():
            self.add(name, folder)

    def add(self, name: str, folder: str | Path) -> None:
        folder = Path(folder)
        if not (folder / "model_index.json").exists():
            raise FileNotFoundError(f"model {name!r}: {folder} has no model_index.json")
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


@dataclass
class ResidentModels:
    """The components one worker holds, loaded on first use and counted."""

    catalog: ModelCatalog
    loaded: dict[tuple[str, str], Any] = field(default_factory=dict)
    bytes_by_key: dict[tuple[str, str], int] = field(default_factory=dict)
    loads: int = 0
    load_s: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, model: str, component: str) -> Any:
        key = (model, component)
        with self._lock:
            obj = self.loaded.get(key)
            if obj is None:
                t0 = time.perf_counter()
                obj = load_component(self.catalog.folder(model), component)
                self.load_s += time.perf_counter() - t0
                self.loads += 1
                self.loaded[key] = obj
                self.bytes_by_key[key] = component_bytes(obj)
            return obj

    def keys(self) -> set[tuple[str, str]]:
        return set(self.loaded)
