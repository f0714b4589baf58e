"""Heavy libraries imported on first use.

An operator module declares its operators (modes, ports, component) and executes them. Only
execution needs torch and diffusers, so each module binds them with :func:`lazy_module` instead of
importing them: ``torch = lazy_module("torch")`` reads as ``import torch``, but torch is imported
the first time an attribute of it is read. Whatever only reads declarations (the workflow
expander, the simulator) then loads without torch, diffusers or transformers.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class LazyModule:
    """Stands for the module ``name`` and imports it when an attribute is first read."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._module: ModuleType | None = None

    def __getattr__(self, attr: str) -> Any:
        # only called for attributes this proxy lacks, i.e. the module's own
        if attr in ("_name", "_module"):  # not set yet (a copy made without __init__)
            raise AttributeError(attr)
        if self._module is None:
            self._module = importlib.import_module(self._name)
        return getattr(self._module, attr)

    def __repr__(self) -> str:
        state = "imported" if self._module is not None else "not imported yet"
        return f"<lazy module {self._name!r} ({state})>"


def lazy_module(name: str) -> Any:
    """``name`` (a dotted module path), imported on first attribute access."""
    return LazyModule(name)
