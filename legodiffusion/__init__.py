"""legodiffusion: micro-serving text-to-image diffusion workflows."""

from legodiffusion import config as _config  # noqa: F401  (sets offline defaults first)
from legodiffusion.client import Client
from legodiffusion.config import EngineConfig
from legodiffusion.runtime.engine import Engine, RunResult
from legodiffusion.workflow.builder import WorkflowBuilder
from legodiffusion.workflow.catalog import BUILTIN_WORKFLOWS, sd_txt2img
from legodiffusion.workflow.spec import WorkflowSpec, spec_from_json

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
