"""Backends: where workers run and how tensors move between them. The engine drives either the
same way; only a backend that can grow (Ray) acts on autoscaling targets."""

from __future__ import annotations

import time

from legodiffusion.config import EngineConfig
from legodiffusion.models.store import HostCache, ModelCatalog
from legodiffusion.ops.base import OperatorRegistry
from legodiffusion.runtime.approx_cache import ApproxStore
from legodiffusion.runtime.dataplane import DataPlane, LocalDataPlane
from legodiffusion.runtime.worker import ThreadWorker, Worker


class Backend:
    workers: list[Worker]
    plane: DataPlane  # the engine's view: reads final outputs, releases and abandons ids
    device: str  # what profiles are looked up for
    scalable: bool = False
    replaces_lost: bool = False  # a lost worker is replaced (up to min_workers) though the backend does not scale

    def add_worker(self, worker_id: int) -> Worker:
        raise NotImplementedError(f"the {type(self).__name__} cannot add workers")

    def worker_up(self, worker_id: int) -> None:
        """An added worker has started."""

    def retire_worker(self, worker_id: int) -> None:
        """Stop a drained worker for good (scale-down)."""
        raise NotImplementedError(f"the {type(self).__name__} cannot remove workers")

    def forget(self, worker_id: int) -> None:
        """``worker_id`` died: send it nothing more."""

    def request_resources(self, workers: int) -> None:
        """Tell the cluster's autoscaler how many workers' resources are wanted."""

    def close(self, live: list[Worker], timeout_s: float | None = None) -> None:
        """Stop the ``live`` workers and release what the backend holds, within ``timeout_s``."""
        _stop_all(live, timeout_s)


class LocalBackend(Backend):
    """One thread per device in this process, sharing one zero-copy data plane. A lost worker
    (declared stuck) is replaced by a fresh thread on its device, so the engine keeps its
    configured worker count."""

    replaces_lost = True

    def __init__(self, catalog: ModelCatalog, config: EngineConfig, registry: OperatorRegistry) -> None:
        self.plane = LocalDataPlane()
        self.plane.stores = {"approx_cache": ApproxStore(config.approx)}
        devices = config.worker_devices()
        self.host = HostCache(catalog, config.precision(), devices[0])
        self.device = devices[0]
        self.min_workers = len(devices)
        self._config, self._registry = config, registry
        self._vacant: list[str] = []  # devices of lost workers, for their replacements
        self.workers = [self._worker(i, dev) for i, dev in enumerate(devices)]

    def _worker(self, worker_id: int, device: str) -> ThreadWorker:
        cfg = self._config
        return ThreadWorker(worker_id, device, self._registry, self.host, self.plane, cfg.budget_for(device), cfg.compile)

    def forget(self, worker_id: int) -> None:
        self._vacant.append(self.workers[worker_id].device)

    def add_worker(self, worker_id: int) -> Worker:
        worker = self._worker(worker_id, self._vacant.pop(0) if self._vacant else self.device)
        self.workers.append(worker)
        return worker

    def close(self, live: list[Worker], timeout_s: float | None = None) -> None:
        """Stop every worker thread, the lost ones' included (killed, they end at their call's
        next block boundary): none may outlive the engine, computing while the process exits."""
        _stop_all(self.workers, timeout_s)


def _stop_all(workers: list[Worker], timeout_s: float | None) -> None:
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    for w in workers:
        w.stop(None if deadline is None else max(0.0, deadline - time.monotonic()))


def make_backend(catalog: ModelCatalog, config: EngineConfig, registry: OperatorRegistry) -> Backend:
    if config.backend == "ray":
        from legodiffusion.runtime.ray.backend import RayBackend  # Ray is imported only here

        return RayBackend(catalog, config)
    return LocalBackend(catalog, config, registry)
