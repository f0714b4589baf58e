"""Starting or joining a Ray cluster, and the engine's handles on its worker actors.

One worker actor per device: a GPU each on GPU nodes, a fractional CPU share on CPU-only ones.
The first workers go round-robin over the cluster's nodes; workers added by autoscaling are
spread by Ray, which is what lets an autoscaling cluster start a node for one that does not fit.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import uuid
from collections.abc import Callable

import ray
from ray.exceptions import GetTimeoutError, RayActorError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from legodiffusion.config import EngineConfig, RayConfig
from legodiffusion.core.messages import Completion, Dispatch
from legodiffusion.models.store import ModelCatalog
from legodiffusion.runtime.backend import Backend
from legodiffusion.runtime.ray.actor import CONCURRENCY, WorkerActor
from legodiffusion.runtime.ray.approx import ApproxActor, RayApproxClient
from legodiffusion.runtime.ray.plane import DriverPlane, ask
from legodiffusion.runtime.worker import Worker, WorkerStats

log = logging.getLogger("legodiffusion.ray")
_Actor = ray.remote(concurrency_groups=CONCURRENCY)(WorkerActor)
_Approx = ray.remote(ApproxActor)


def connect(config: RayConfig) -> bool:
    """Join or start a Ray cluster (unless this process already is connected); True if this
    call started it. The process keeps its own SIGTERM handling (``ray.init`` replaces it with
    an immediate exit, which would cut a server's graceful shutdown short)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        return False
    if threading.current_thread() is not threading.main_thread():
        return _init(config)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        return _init(config)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _init(config: RayConfig) -> bool:
    here = {"include_dashboard": False, "_temp_dir": config.temp_dir}
    if config.address == "local":
        ray.init(namespace=config.namespace, **here)
        return True
    if config.address == "auto":
        try:
            ray.init(address="auto", namespace=config.namespace)
            return False
        except ConnectionError:  # no cluster running: start one in this process
            ray.init(namespace=config.namespace, **here)
            return True
    ray.init(address=config.address, namespace=config.namespace)
    return False


class RayWorker(Worker):
    """The engine's handle on one worker actor: a dispatch is one ``run`` call whose result is
    its completion; a ``watch`` call that fails only when the actor dies reports its loss."""

    def __init__(self, worker_id: int, device: str, handle, plane: DriverPlane) -> None:
        self.id = worker_id
        self.device = device
        self.handle = handle
        self._plane = plane
        self.ready = handle.where.remote()  # resolves once the actor is up
        self._seq = 0
        self._stopping = False
        self._calls: dict[int, ray.ObjectRef] = {}  # dispatch id -> its run call, until it returns
        self._on_complete: Callable[[Completion], None] | None = None
        self._on_lost: Callable[[int], None] | None = None

    def start(self, on_complete: Callable[[Completion], None], on_lost: Callable[[int], None] | None = None) -> None:
        self._on_complete, self._on_lost = on_complete, on_lost
        self._watch = self.handle.watch.remote()
        self._watch.future().add_done_callback(lambda _: self._lost())

    def _lost(self) -> None:
        if not self._stopping and self._on_lost is not None:
            self._on_lost(self.id)

    def submit(self, d: Dispatch) -> None:
        self._seq += 1
        call = self._calls[d.id] = self.handle.run.remote(d, self._seq, self._plane.take_pushed(d.id))
        call.future().add_done_callback(lambda f, d=d: self._returned(d, f))

    def _returned(self, d: Dispatch, f) -> None:
        """Called on a Ray thread when a run call ends."""
        self._calls.pop(d.id, None)
        try:
            c = f.result()
        except RayActorError:
            self._lost()
            return
        except Exception as exc:  # the call failed outside the worker: its order on the actor is broken
            log.error("worker %d: a dispatch call failed (%s: %s); treating the worker as lost", self.id, type(exc).__name__, exc)
            self.kill()
            self._lost()
            return
        if not self._stopping and self._on_complete is not None:
            self._on_complete(c)

    def wait_ready(self, timeout_s: float | None = None) -> None:
        """Block until the actor is up (or raise: it failed to start, or took over ``timeout_s``)."""
        ray.get(self.ready, timeout=timeout_s)

    def stop(self, timeout_s: float | None = None) -> None:
        self.retire()

    def stop_dispatch(self, dispatch_id: int) -> None:
        self.handle.stop_dispatch.remote(dispatch_id)

    def retire(self) -> None:
        """Stop for good; calls still out end with the actor and are not reported."""
        self._stopping = True
        ray.kill(self.handle, no_restart=True)

    def kill(self) -> None:
        """Kill the actor at once, as a crash would; its watch then reports it lost."""
        ray.kill(self.handle, no_restart=True)

    def stats(self) -> WorkerStats:
        try:
            return ray.get(self.handle.stats.remote(), timeout=30)
        except (RayActorError, GetTimeoutError):
            return WorkerStats(self.id, self.device, 0.0, 0, 0, 0, 0.0, [])


class RayBackend(Backend):
    scalable = True

    def __init__(self, catalog: ModelCatalog, config: EngineConfig) -> None:
        r = self.config = config.ray
        self.started_cluster = connect(r)
        self._names = f"ld-{uuid.uuid4().hex[:8]}-w{{}}"
        self._models = {name: str(catalog.folder(name)) for name in catalog.names()}
        self._budget = config.memory_budget_bytes
        self._precision = config.precision()
        self._compile = config.compile
        gpus = int(ray.cluster_resources().get("GPU", 0))
        if config.device == "cuda" and not gpus:
            raise RuntimeError("device=cuda, but the Ray cluster has no GPUs")
        self._gpu = gpus > 0 and config.device != "cpu"
        self.device = "cuda:0" if self._gpu else "cpu"  # what a worker sees (Ray sets CUDA_VISIBLE_DEVICES)
        nodes = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
        n = config.workers or (gpus if self._gpu else len(nodes))
        self.handles: dict[int, object] = {}
        self.plane = DriverPlane(self.handles)
        self._approx = (self._names.format("approx"), config.approx)
        self._approx_actor = _Approx.options(name=self._approx[0], namespace=r.namespace, num_cpus=0, max_restarts=0).remote(config.approx)
        self.plane.stores = {"approx_cache": RayApproxClient(self._approx_actor, config.approx)}
        self.workers: list[Worker] = [self._spawn(i, nodes[i % len(nodes)]) for i in range(n)]
        self.min_workers = n if r.min_workers is None else r.min_workers
        self.max_workers = max(n, self.min_workers) if r.max_workers is None else r.max_workers
        self.requested: list[dict] = []  # the last resource request sent to Ray's autoscaler
        self.last_traffic: dict = {}
        self.last_counts: list[tuple[int, int]] = []
        #: worker id -> Ray node id it runs on
        self.placement = {w.id: p["node"] for w, p in zip(self.workers, ray.get([w.ready for w in self.workers]))}
        self.plane.up.update(self.placement)
        self.transport = self._direct_transport(r.tensor_transport)

    def _direct_transport(self, asked: str) -> str:
        """Set up Ray's direct tensor transport over a collective group of the starting workers
        (``nccl`` / ``gloo``), or keep to the object store; returns what is in use."""
        transport = ("nccl" if self._gpu else "object_store") if asked == "auto" else asked
        if transport == "nccl" and not self._gpu:
            raise RuntimeError("tensor_transport=nccl needs GPU workers; use gloo or object_store on CPU")
        if transport == "object_store" or len(self.handles) < 2:
            return "object_store"
        from ray.experimental.collective import create_collective_group

        ids = sorted(self.handles)
        create_collective_group([self.handles[i] for i in ids], backend=transport)
        self.plane.direct = (transport, frozenset(ids))
        return transport

    def _spawn(self, worker_id: int, node: str | None = None) -> RayWorker:
        r = self.config
        opts: dict = {
            "name": self._names.format(worker_id),
            "namespace": r.namespace,
            "max_restarts": 0,
            "num_cpus": r.cpus_per_worker,
            "scheduling_strategy": "SPREAD" if node is None else NodeAffinitySchedulingStrategy(node, soft=True),
        }
        if self._gpu:
            opts["num_gpus"] = 1
        handle = _Actor.options(**opts).remote(
            worker_id,
            self.device,
            self._models,
            self._budget,
            self._names,
            r.namespace,
            r.torch_threads,
            self._precision,
            self._compile,
            self._approx,
        )
        self.handles[worker_id] = handle
        return RayWorker(worker_id, self.device, handle, self.plane)

    def bundle(self) -> dict:
        """The resources one worker actor asks for."""
        return {"CPU": self.config.cpus_per_worker, **({"GPU": 1} if self._gpu else {})}

    def add_worker(self, worker_id: int) -> RayWorker:
        if worker_id != len(self.workers):
            raise ValueError(f"worker ids are dense: expected {len(self.workers)}, got {worker_id}")
        w = self._spawn(worker_id)
        self.workers.append(w)
        return w

    def worker_up(self, worker_id: int) -> None:
        self.plane.up.add(worker_id)

    def retire_worker(self, worker_id: int) -> None:
        self.handles.pop(worker_id, None)
        self.plane.up.discard(worker_id)
        self.workers[worker_id].retire()

    def forget(self, worker_id: int) -> None:
        """A worker died: releases must no longer go to it, nor readers wait for its pushes."""
        self.handles.pop(worker_id, None)
        self.plane.up.discard(worker_id)
        if self.plane.direct is not None:
            log.warning("worker %d lost: tensors move through the object store from now on (was %s)", worker_id, self.transport)
            self.transport = "object_store"
        self.plane.forget(worker_id)

    def request_resources(self, workers: int) -> None:
        if not self.config.request_resources:
            return
        from ray.autoscaler.sdk import request_resources

        self.requested = [self.bundle()] * workers
        request_resources(bundles=self.requested)

    def traffic(self) -> dict:
        """Worker-to-worker pulls summed over the live actors (those that answer), and what the
        engine read."""
        calls = {w: h.traffic.remote() for w, h in list(self.handles.items()) if w in self.plane.up}
        parts = ask(calls, self.plane.ASK_TIMEOUT_S).values()
        out = {k: sum(p[k] for p in parts) for k in ("pulls", "pulled_bytes", "pushes", "pushed_bytes", "served")}
        out["transport"] = self.transport
        out["engine_output_bytes"] = self.plane.output_bytes
        out["engine_held_bytes"] = self.plane.held_bytes
        return out

    def close(self, live: list[Worker], timeout_s: float | None = None) -> None:
        """Keep the final traffic and value counts (for accounting after the run), then stop."""
        self.last_traffic = self.traffic()  # (without any actor that died or hangs)
        self.last_counts = self.plane.counts()
        super().close(live, timeout_s)
        ray.kill(self._approx_actor, no_restart=True)  # the cache's objects go with it
        if self.started_cluster:
            ray.shutdown()
