"""Backends: where workers run and how tensors move between them. The engine drives either the
same way; only a backend that can grow (Ray) acts on autoscaling targets."""

from __future__ import annotations

from legodiffusion.config import EngineConfig
from legodiffusion.models.store import HostCache, ModelCatalog
from legodiffusion.ops.base import OperatorRegistry
from legodiffusion.runtime.dataplane import DataPlane, LocalDataPlane
from legodiffusion.runtime.worker import ThreadWorker, Worker


class Backend:
    workers: list[Worker]
    plane: DataPlane  # the engine's view: reads final outputs, releases and abandons ids
    device: str  # what profiles are looked up for
    scalable: bool = False

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

    def close(self, live: list[Worker]) -> None:
        """Stop the ``live`` workers and release what the backend holds."""
        for w in live:
            w.stop()


class LocalBackend(Backend):
    """One thread per device in this process, sharing one zero-copy data plane."""

    def __init__(self, catalog: ModelCatalog, config: EngineConfig, registry: OperatorRegistry) -> None:
        self.plane = LocalDataPlane()
        devices = config.worker_devices()
        self.host = HostCache(catalog, config.precision(), devices[0])
        self.device = devices[0]
        self.workers = [
            ThreadWorker(i, dev, registry, self.host, self.plane, config.budget_for(dev), config.compile) for i, dev in enumerate(devices)
        ]


def make_backend(catalog: ModelCatalog, config: EngineConfig, registry: OperatorRegistry) -> Backend:
    if config.backend == "ray":
        from legodiffusion.runtime.ray.backend import RayBackend  # Ray is imported only here

        return RayBackend(catalog, config)
    return LocalBackend(catalog, config, registry)
