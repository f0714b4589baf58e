"""Configuration with one home. Environment variables are read here and nowhere else."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

# Nothing may download weights at run time: every model loads from a local folder.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")


def api_keys(file: Path | None = None) -> set[str]:
    """API keys from ``file`` (one per line) and ``$LEGODIFFUSION_API_KEYS`` (comma-separated);
    empty: the server is open."""
    keys = {k.strip() for k in os.environ.get("LEGODIFFUSION_API_KEYS", "").split(",") if k.strip()}
    if file is not None:
        keys |= {line.strip() for line in Path(file).read_text().splitlines() if line.strip() and not line.startswith("#")}
    return keys


def home() -> Path:
    """Where tiny models and caches go: ``$LEGODIFFUSION_HOME`` or ``./.legodiffusion``."""
    return Path(os.environ.get("LEGODIFFUSION_HOME", ".legodiffusion")).resolve()


def cuda_device_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@dataclass
class EngineConfig:
    """How the embedded (local) backend runs and schedules."""

    workers: int | None = None
    """Worker count, one per device. Default: one per GPU, or 1 on a CPU-only machine."""
    device: str = "auto"
    """``cpu``, ``cuda`` (worker i on ``cuda:i``) or ``auto`` (cuda when available)."""
    policy: str = "default"
    """Scheduling policy by name: ``default``, ``fcfs``, ``random`` or ``bundle``."""
    latency_batch: dict[str, int] = field(default_factory=dict)
    """Per-operator batch limit when free workers are plentiful (latency mode)."""
    throughput_batch: dict[str, int] = field(default_factory=dict)
    """Per-operator batch limit when workers are busy (throughput mode)."""
    default_latency_batch: int = 1
    """Latency-mode batch limit for operators not in ``latency_batch``."""
    default_throughput_batch: int = 8
    """Throughput-mode batch limit for operators not in ``throughput_batch``."""
    slots_per_worker: int = 2
    """Model-call dispatches a worker may hold at once (one running, the rest queued there)."""
    queue_threshold_s: float = 0.05
    """Workers whose estimated queued work exceeds this are skipped, so work waits centrally
    where it can still batch and move."""
    memory_budget_bytes: int | None = None
    """Weight memory each worker may keep resident (LRU beyond it). Default: unlimited on CPU,
    the device's total memory on GPU."""
    profile_dir: Path | None = None
    """Where cached profiles are looked up (default ``$LEGODIFFUSION_HOME/profiles``)."""

    def __post_init__(self) -> None:
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.device == "auto":
            self.device = "cuda" if cuda_device_count() else "cpu"
        if self.workers is None:
            self.workers = max(1, cuda_device_count()) if self.device == "cuda" else 1
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.slots_per_worker < 1:
            raise ValueError(f"slots_per_worker must be >= 1, got {self.slots_per_worker}")
        limits = [self.default_latency_batch, self.default_throughput_batch, *self.latency_batch.values(), *self.throughput_batch.values()]
        if any(v < 1 for v in limits):
            raise ValueError("batch limits must be >= 1")
        if self.memory_budget_bytes is not None and self.memory_budget_bytes <= 0:
            raise ValueError("memory_budget_bytes must be positive")

    def worker_devices(self) -> list[str]:
        if self.device == "cpu":
            return ["cpu"] * self.workers
        n = max(1, cuda_device_count())
        return [f"cuda:{i % n}" for i in range(self.workers)]

    def budget_for(self, device: str) -> int | None:
        if self.memory_budget_bytes is not None or device == "cpu":
            return self.memory_budget_bytes
        import torch

        return torch.cuda.get_device_properties(device).total_memory
