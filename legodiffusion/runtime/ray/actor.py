"""The worker actor: the local backend's :class:`ThreadWorker`, hosted in a Ray actor process.

The engine calls :meth:`run` once per dispatch, with a sequence number: the dispatch reaches
the worker thread in the engine's order (as a local worker's would) and the call returns its
completion, so a node costs one actor call. Other actors and the engine pull values with
:meth:`fetch`. Runs, pulls and the engine's watch each have their own threads, so a blocked pull
never holds up a run; releases and counts share one thread, so a count sees every release sent
before it.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future

import ray

import legodiffusion.config  # noqa: F401  (offline hub settings, before any model code)
from legodiffusion.core.approx import ApproxConfig
from legodiffusion.core.messages import Completion, Dispatch
from legodiffusion.models.precision import Precision
from legodiffusion.models.store import HostCache, ModelCatalog
from legodiffusion.ops import default_registry
from legodiffusion.runtime.ray.approx import RayApproxClient
from legodiffusion.runtime.ray.plane import ActorPlane
from legodiffusion.runtime.worker import ThreadWorker, WorkerStats

#: threads per kind of call; more ``run`` calls than threads just wait in Ray's queue, in order
CONCURRENCY = {"run": 64, "watch": 1, "io": 16, "recv": 4}


class WorkerActor:
    def __init__(
        self,
        worker_id: int,
        device: str,
        models: dict[str, str],
        budget: int | None,
        names: str,
        namespace: str,
        torch_threads: int,
        precision: Precision,
        compile: bool = False,
        approx: tuple[str, ApproxConfig] | None = None,
    ) -> None:
        import torch

        if device == "cpu":
            torch.set_num_threads(torch_threads)
        elif budget is None:
            budget = torch.cuda.get_device_properties(device).total_memory
        self.id = worker_id
        self._names = names
        self._namespace = namespace
        self._peers: dict[int, ray.actor.ActorHandle] = {}
        self.plane = ActorPlane(worker_id, self._peer)
        if approx is not None:  # the approximate cache: one actor shared by every worker (runtime/ray/approx.py)
            name, config = approx
            self.plane.stores = {"approx_cache": RayApproxClient(ray.get_actor(name, namespace=namespace), config)}
        host = HostCache(ModelCatalog(models), precision, device)
        self.worker = ThreadWorker(worker_id, device, default_registry(), host, self.plane, budget, compile)
        self._lock = threading.Lock()
        self._waiting: dict[int, Future] = {}  # dispatch id -> its completion
        self._next_seq = 1
        self._early: dict[int, Dispatch] = {}
        self._stopped = threading.Event()
        self.worker.start(self._finished)

    def _peer(self, worker_id: int):
        handle = self._peers.get(worker_id)
        if handle is None:
            handle = self._peers[worker_id] = ray.get_actor(self._names.format(worker_id), namespace=self._namespace)
        return handle

    def _finished(self, c: Completion) -> None:
        c.lost_peers = self.plane.take_lost()
        with self._lock:
            done = self._waiting.pop(c.dispatch_id, None)
        if done is not None:
            done.set_result(c)

    # -- called by the engine ----------------------------------------------------------

    @ray.method(concurrency_group="run")
    def run(self, d: Dispatch, seq: int, pushed: set[int]) -> Completion:
        """Run ``d`` after every dispatch the engine sent before it; returns its completion.
        ``pushed``: its inputs that peers send here (wait for them, do not pull them)."""
        done: Future = Future()
        self.plane.expect(pushed)
        with self._lock:
            self._waiting[d.id] = done
            self._early[seq] = d
            while self._next_seq in self._early:
                self.worker.submit(self._early.pop(self._next_seq))
                self._next_seq += 1
        return done.result()

    @ray.method(concurrency_group="io")
    def stop_dispatch(self, dispatch_id: int) -> None:
        """Stop a dispatch at its call's next block boundary: on an io thread, so it reaches
        the worker thread while that computes."""
        self.worker.stop_dispatch(dispatch_id)

    @ray.method(concurrency_group="watch")
    def watch(self) -> None:
        """Never returns while the actor lives: the engine learns of its death when this fails."""
        self._stopped.wait()

    @ray.method(concurrency_group="io")
    def fetch(self, tensor_id: int, deferred: bool = False):
        """A value held here, for a peer or the engine (a deferred one is waited for)."""
        return self.plane.serve(tensor_id, deferred)

    @ray.method(concurrency_group="io", tensor_transport="nccl")
    def send_nccl(self, tensor_id: int):
        """A value held here; its tensors go straight to the receiving actor over NCCL."""
        return self.plane.serve(tensor_id, False)

    @ray.method(concurrency_group="io", tensor_transport="gloo")
    def send_gloo(self, tensor_id: int):
        """A value held here; its tensors go straight to the receiving actor over GLOO."""
        return self.plane.serve(tensor_id, False)

    @ray.method(concurrency_group="recv")
    def receive(self, tensor_id: int, value) -> None:
        self.plane.receive(tensor_id, value)

    def lost_inputs(self, tensor_ids: list[int], holder: int) -> None:
        self.plane.lost_inputs(tensor_ids, holder)

    def free(self, tensor_ids: list[int]) -> None:
        self.plane.free(tensor_ids)

    def abandon(self, tensor_ids: list[int]) -> None:
        self.plane.abandon(tensor_ids)

    def plane_counts(self) -> tuple[int, int]:
        return self.plane.live_count(), self.plane.live_bytes()

    @ray.method(concurrency_group="io")
    def traffic(self) -> dict:
        p = self.plane
        return {"pulls": p.pulls, "pulled_bytes": p.pulled_bytes, "pushes": p.pushes, "pushed_bytes": p.pushed_bytes, "served": p.served}

    @ray.method(concurrency_group="io")
    def stats(self) -> WorkerStats:
        return self.worker.stats()

    @ray.method(concurrency_group="io")
    def where(self) -> dict:
        return {"node": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}
