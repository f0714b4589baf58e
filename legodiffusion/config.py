"""Configuration with one home. Environment variables are read here and nowhere else."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from legodiffusion.core.approx import ApproxConfig
from legodiffusion.core.autoscale import AutoscaleConfig
from legodiffusion.core.fairness import DEFAULT_PRIORITY, DEFAULT_TENANT, priority_rank
from legodiffusion.workflow.bounds import RequestBounds
from legodiffusion.workflow.expand import CACHE_NODES

# Nothing may download weights at run time: every model loads from a local folder.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")


@dataclass(frozen=True)
class TenantSpec:
    """Who holds an API key, and what they may ask of the server (a line of the keys file)."""

    name: str = DEFAULT_TENANT
    """The tenant: metrics, limits and fair sharing are per tenant (several keys may share one)."""
    priority: int = DEFAULT_PRIORITY
    """Priority class rank (``high``=0, ``normal``=1, ``low``=2 in the file): a lower class
    waits, strictly, while a higher one has work ready."""
    weight: float = 1.0
    """Share of its class's profiled work under contention, against the other tenants' weights."""
    max_in_flight: int | None = None
    """Most runs of the tenant admitted and not ended; beyond, 429 with ``Retry-After``."""
    rate_per_s: float | None = None
    """Runs per second the tenant may submit on average (a token bucket); beyond, 429."""
    burst: int | None = None
    """Runs the bucket holds (default: the rate rounded up, at least 1): the largest request."""
    slo_s: float | None = None
    """Deadline given to the tenant's runs that do not name one (native ``slo_s``)."""

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ValueError(f"tenant must be a non-empty string, got {self.name!r}")
        if not (isinstance(self.weight, (int, float)) and self.weight > 0):
            raise ValueError(f"tenant {self.name!r}: weight must be > 0, got {self.weight!r}")
        for name in ("max_in_flight", "burst"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise ValueError(f"tenant {self.name!r}: {name} must be an integer >= 1, got {v!r}")
        for name in ("rate_per_s", "slo_s"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0):
                raise ValueError(f"tenant {self.name!r}: {name} must be > 0, got {v!r}")
        if self.burst is not None and self.rate_per_s is None:
            raise ValueError(f"tenant {self.name!r}: burst needs rate_per_s")

    @property
    def bucket(self) -> int | None:
        """Runs the rate limit lets through at once (None: no rate limit)."""
        if self.rate_per_s is None:
            return None
        return self.burst if self.burst is not None else max(1, math.ceil(self.rate_per_s))

    @classmethod
    def parse(cls, entry: dict) -> tuple[str, TenantSpec]:
        """(key, spec) from one structured line of the keys file."""
        unknown = sorted(set(entry) - _KEY_FIELDS)
        if unknown:
            raise ValueError(f"unknown field(s) {unknown}; known: {sorted(_KEY_FIELDS)}")
        key = entry.get("key")
        if not isinstance(key, str) or not key.strip() or key != key.strip():
            raise ValueError("'key' must be a non-empty string without surrounding spaces")
        fields_ = {k: v for k, v in entry.items() if k not in ("key", "tenant", "priority")}
        return key, cls(entry.get("tenant", DEFAULT_TENANT), priority_rank(entry.get("priority", DEFAULT_PRIORITY)), **fields_)


_KEY_FIELDS = {"key", "tenant", "priority", "weight", "max_in_flight", "rate_per_s", "burst", "slo_s"}


def tenant_keys(file: Path | None = None) -> dict[str, TenantSpec]:
    """API keys and their tenants, from ``$LEGODIFFUSION_API_KEYS`` (comma-separated keys of the
    default tenant) and ``file``: one entry a line, blank lines and ``#`` comments skipped, each
    either a bare key (the default tenant) or a JSON object
    ``{"key": ..., "tenant": ..., "priority": "high"|"normal"|"low", "weight": ...,
    "max_in_flight": ..., "rate_per_s": ..., "burst": ..., "slo_s": ...}`` (all but ``key``
    optional). The keys of one tenant must agree on its settings. Empty: the server is open.
    Raises ValueError naming the line that is wrong."""
    keys = {k.strip(): TenantSpec() for k in os.environ.get("LEGODIFFUSION_API_KEYS", "").split(",") if k.strip()}
    if file is None:
        return keys
    tenants: dict[str, TenantSpec] = {}
    for n, line in enumerate(Path(file).read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            if line.startswith("{"):
                entry = json.loads(line)
                if not isinstance(entry, dict):
                    raise ValueError("a structured line must be one JSON object")
                key, spec = TenantSpec.parse(entry)
            else:
                key, spec = line, TenantSpec()
            if key in keys and keys[key] != spec:
                raise ValueError("the key appears twice with different settings")
            if tenants.setdefault(spec.name, spec) != spec:
                raise ValueError(f"tenant {spec.name!r} has other settings on an earlier line: give all its keys the same")
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{file}:{n}: {exc}") from None
        keys[key] = spec
    return keys


def api_keys(file: Path | None = None) -> set[str]:
    """The API keys of :func:`tenant_keys`; empty: the server is open."""
    return set(tenant_keys(file))


def home() -> Path:
    """Where tiny models and caches go: ``$LEGODIFFUSION_HOME`` or ``./.legodiffusion``."""
    return Path(os.environ.get("LEGODIFFUSION_HOME", ".legodiffusion")).resolve()


def cuda_device_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@dataclass
class RayConfig:
    """How the ``ray`` backend joins a cluster and places worker actors (Ray is imported only by
    the backend itself)."""

    address: str = "auto"
    """``auto`` (join the running cluster, else start one here), ``local`` (always start one here)
    or ``ray://host:port`` (Ray Client)."""
    namespace: str = "legodiffusion"
    cpus_per_worker: float = 0.25
    """Ray CPUs a CPU worker actor asks for: fractional, so several fit on a small node."""
    torch_threads: int = 1
    """Intra-op threads of a CPU worker actor (its share of the node's cores)."""
    min_workers: int | None = None
    """Autoscaling floor (default: the starting worker count; at least 1)."""
    max_workers: int | None = None
    """Autoscaling ceiling (default: the starting worker count: no scaling)."""
    request_resources: bool = True
    """Ask Ray's autoscaler for the desired workers' resources (``ray.autoscaler.sdk``)."""
    temp_dir: str | None = None
    """Ray's session folder when this process starts the cluster (keep the path short)."""
    start_timeout_s: float = 600.0
    """A worker added by autoscaling that is not up by then (no node for it) counts as lost."""
    tensor_transport: str = "auto"
    """How tensors move between worker actors: ``object_store`` (the consumer pulls through Ray's
    object store), ``nccl`` / ``gloo`` (the engine has the producer send tensors straight to the
    consumer with Ray's direct tensor transport over a collective group of the starting workers;
    NCCL for device tensors, GLOO for host ones), or ``auto`` (nccl on GPU workers, else
    object_store). Other values (sampler state) and workers added later use the object store."""


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
    dtype: str = "auto"
    """Weight precision of every component: ``auto`` (bf16 on CUDA, the VAE of SD1.x/SDXL in
    fp32; fp32 on CPU), ``bf16``, ``fp16`` or ``fp32``."""
    component_dtypes: dict[str, str] = field(default_factory=dict)
    """Per-component overrides of ``dtype`` (``denoiser``, ``text_encoder``, ``vae``,
    ``controlnet``), e.g. ``{"vae": "fp32"}``."""
    compile: bool = False
    """Run each worker's denoiser through ``torch.compile`` (inductor, static shapes): batches are
    padded to buckets (1, 2, 4, 8, then multiples of 8) and each bucket and resolution compiles
    once, on its first call. Calls with ControlNet residuals or LoRA adapters stay eager."""
    memory_budget_bytes: int | None = None
    """Weight memory each worker may keep resident (LRU beyond it). Default: unlimited on CPU,
    the device's total memory on GPU."""
    profile_dir: Path | None = None
    """Where cached profiles are looked up (default ``$LEGODIFFUSION_HOME/profiles``)."""
    backend: str = "local"
    """``local`` (worker threads in this process) or ``ray`` (worker actors across a Ray cluster)."""
    ray: RayConfig = field(default_factory=RayConfig)
    autoscale: AutoscaleConfig = field(default_factory=AutoscaleConfig)
    """Per-model replica targets; on the ray backend they also add and remove worker actors."""
    autoscale_interval_s: float = 2.0
    """How often the targets are re-evaluated (and, on ray, acted on); 0 turns the loop off."""
    call_timeout_factor: float = 10.0
    """A model call running longer than this many times its profiled cost (and longer than
    ``call_timeout_floor_s``) is stuck: it is asked to stop and its worker is declared lost, so
    its requests re-run elsewhere; a node that times out twice fails its request."""
    call_timeout_floor_s: float = 120.0
    """The least time any call is allowed before it counts as stuck (covers unprofiled models,
    first loads from disk and profiles measured on another device)."""
    stall_floor_s: float = 60.0
    """Watchdog: a request with no node queued, held or running that finishes no node for this
    long fails with ``stalled: no progress for N s``."""
    supervise_interval_s: float = 1.0
    """How often timeouts and the watchdog are checked; 0 turns supervision off."""
    drain_s: float = 10.0
    """On stop, how long dispatches already sent may take to report back (each is asked to stop
    at its next block boundary first); stop returns within this plus a small margin."""
    bounds: RequestBounds = field(default_factory=RequestBounds)
    """The most one request may cost (nodes, steps, pixels, profiled work, tensor bytes), checked
    on its expanded graph at submission; the server passes its own (``Limits``)."""
    template_cache_nodes: int = CACHE_NODES
    """Nodes of expanded workflow templates kept for reuse across all workflows (LRU)."""
    approx: ApproxConfig = field(default_factory=ApproxConfig)
    """The approximate cache across requests (NIRVANA) that requests with ``approx_cache: true``
    use: its byte budget, the steps it saves and the similarity each skip needs."""

    def __post_init__(self) -> None:
        if self.backend not in ("local", "ray"):
            raise ValueError(f"backend must be local or ray, got {self.backend!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.backend == "local":  # on ray, the cluster decides devices and the worker count
            if self.device == "auto":
                self.device = "cuda" if cuda_device_count() else "cpu"
            if self.workers is None:
                self.workers = max(1, cuda_device_count()) if self.device == "cuda" else 1
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.slots_per_worker < 1:
            raise ValueError(f"slots_per_worker must be >= 1, got {self.slots_per_worker}")
        limits = [self.default_latency_batch, self.default_throughput_batch, *self.latency_batch.values(), *self.throughput_batch.values()]
        if any(v < 1 for v in limits):
            raise ValueError("batch limits must be >= 1")
        if self.call_timeout_factor <= 0 or self.call_timeout_floor_s <= 0 or self.stall_floor_s <= 0:
            raise ValueError("call_timeout_factor, call_timeout_floor_s and stall_floor_s must be positive")
        if self.supervise_interval_s < 0 or self.drain_s < 0:
            raise ValueError("supervise_interval_s and drain_s must be >= 0")
        self.precision()  # validates dtype and component_dtypes
        if self.memory_budget_bytes is not None and self.memory_budget_bytes <= 0:
            raise ValueError("memory_budget_bytes must be positive")
        r = self.ray
        if r.tensor_transport not in ("auto", "object_store", "nccl", "gloo"):
            raise ValueError(f"ray.tensor_transport must be auto, object_store, nccl or gloo, got {r.tensor_transport!r}")
        if r.cpus_per_worker <= 0 or r.torch_threads < 1:
            raise ValueError("ray.cpus_per_worker must be positive and ray.torch_threads >= 1")
        if r.min_workers is not None and r.min_workers < 1:
            raise ValueError(f"ray.min_workers must be >= 1 (models scale to zero, workers do not), got {r.min_workers}")
        if r.min_workers is not None and r.max_workers is not None and r.min_workers > r.max_workers:
            raise ValueError(f"need ray.min_workers <= ray.max_workers, got {r.min_workers} and {r.max_workers}")

    def coordinator(self, n_workers: int, cost=None):
        """The coordinator these settings describe (policy, batch limits, slots, threshold)."""
        from legodiffusion.core.coordinator import Coordinator
        from legodiffusion.core.policy import make_policy

        return Coordinator(
            n_workers,
            make_policy(self.policy),
            cost=cost,
            latency_batch=self.latency_batch,
            throughput_batch=self.throughput_batch,
            default_latency_batch=self.default_latency_batch,
            default_throughput_batch=self.default_throughput_batch,
            slots_per_worker=self.slots_per_worker,
            queue_threshold_s=self.queue_threshold_s,
        )

    def precision(self):
        from legodiffusion.models.precision import Precision

        return Precision.of(self.dtype, self.component_dtypes)

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
