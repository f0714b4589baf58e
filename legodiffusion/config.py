"""Configuration with one home. Environment variables are read here and nowhere else."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

# Nothing may download weights at run time: every model loads from a local folder.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")


def home() -> Path:
    """Where tiny models and caches go: ``$LEGODIFFUSION_HOME`` or ``./.legodiffusion``."""
    return Path(os.environ.get("LEGODIFFUSION_HOME", ".legodiffusion")).resolve()


@dataclass
class EngineConfig:
    """How the embedded (local) backend runs."""

    workers: int = 1
    """Worker count: one per device. On a CPU-only machine each worker is a thread."""
    policy: str = "fifo"
    """Scheduling policy by name (see ``legodiffusion.core.policy.POLICIES``)."""
    max_batch: dict[str, int] = field(default_factory=dict)
    """Per-operator batch limit, e.g. ``{"denoise": 4}``; others use ``default_max_batch``."""
    default_max_batch: int = 8
    """Batch limit for operators not named in ``max_batch``."""
    slots_per_worker: int = 2
    """Model-call dispatches a worker may hold at once (one running, the rest queued there);
    everything else waits centrally where it can still batch and move."""

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.slots_per_worker < 1:
            raise ValueError(f"slots_per_worker must be >= 1, got {self.slots_per_worker}")
        if self.default_max_batch < 1 or any(v < 1 for v in self.max_batch.values()):
            raise ValueError("batch limits must be >= 1")
