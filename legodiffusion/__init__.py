"""legodiffusion: micro-serving text-to-image diffusion workflows.

``Engine``, ``RunResult`` and ``Client`` load on first access (PEP 562): the engine pulls in torch
and diffusers, the client httpx, and neither is needed to build workflows or run the simulator.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from legodiffusion import config as _config  # noqa: F401  (sets offline defaults first)
from legodiffusion.config import EngineConfig
from legodiffusion.workflow.builder import WorkflowBuilder
from legodiffusion.workflow.catalog import BUILTIN_WORKFLOWS, sd_txt2img
from legodiffusion.workflow.spec import WorkflowSpec, spec_from_json

if TYPE_CHECKING:
    from legodiffusion.client import Client
    from legodiffusion.runtime.engine import Engine
    from legodiffusion.runtime.runs import RunResult

#: public name -> the module it is loaded from on first access
_LAZY = {
    "Client": "legodiffusion.client",
    "Engine": "legodiffusion.runtime.engine",
    "RunResult": "legodiffusion.runtime.runs",
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # later lookups skip this hook
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__version__ = "0.1.0"
__all__ = [
    "Client",
    "Engine",
    "EngineConfig",
    "RunResult",
    "WorkflowBuilder",
    "WorkflowSpec",
    "spec_from_json",
    "sd_txt2img",
    "BUILTIN_WORKFLOWS",
]
