"""Workers: one per device. The interface is what any backend (threads, Ray actors) implements."""

from __future__ import annotations

import queue
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

from legodiffusion.core.messages import Completion, Dispatch
from legodiffusion.models.store import HostCache, ResidentModels
from legodiffusion.ops.base import OperatorRegistry
from legodiffusion.runtime.dataplane import DataPlane
from legodiffusion.runtime.execute import execute
from legodiffusion.runtime.stopping import StopFlags


@dataclass
class WorkerStats:
    worker: int
    device: str
    busy_s: float
    dispatches: int
    loads: int
    evictions: int
    load_s: float
    resident: list[str]
    used_bytes: int = 0  # weight bytes resident on the device
    budget_bytes: int | None = None  # what it may hold (None: unlimited)


class Worker(ABC):
    """Receives dispatches, runs them in order, reports each completion through ``on_complete``
    (which may be called from any thread)."""

    id: int
    device: str

    @abstractmethod
    def start(self, on_complete: Callable[[Completion], None], on_lost: Callable[[int], None] | None = None) -> None:
        """Begin taking work; ``on_lost(worker_id)`` is called (from any thread) if the worker dies."""

    @abstractmethod
    def submit(self, d: Dispatch) -> None: ...

    @abstractmethod
    def stop(self, timeout_s: float | None = None) -> None:
        """Stop taking work and end, waiting at most ``timeout_s`` for the call in progress."""

    @abstractmethod
    def stop_dispatch(self, dispatch_id: int) -> None:
        """Ask a dispatch sent here to stop at the next block boundary of its model call (or not
        to start): nobody waits for its results any more. Its completion still comes, its items
        cancelled (or with results, if it ended first)."""

    @abstractmethod
    def stats(self) -> WorkerStats: ...


class ThreadWorker(Worker):
    """A worker thread in this process, sharing the in-process data plane."""

    def __init__(
        self,
        worker_id: int,
        device: str,
        registry: OperatorRegistry,
        host: HostCache,
        plane: DataPlane,
        budget_bytes: int | None = None,
        compile: bool = False,
    ) -> None:
        self.id = worker_id
        self.device = device
        self.registry = registry
        self.models = ResidentModels(host, device, budget_bytes, compile)
        self.plane = plane
        self._inbox: queue.SimpleQueue[Dispatch | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self.busy_s = 0.0
        self.dispatches = 0
        self._dead = False
        self.stops = StopFlags()

    def start(self, on_complete: Callable[[Completion], None], on_lost: Callable[[int], None] | None = None) -> None:
        self._thread = threading.Thread(target=self._loop, args=(on_complete,), name=f"worker-{self.id}", daemon=True)
        self._thread.start()

    def submit(self, d: Dispatch) -> None:
        self._inbox.put(d)

    def stop_dispatch(self, dispatch_id: int) -> None:
        self.stops.ask(dispatch_id)

    def wait_ready(self, timeout_s: float | None = None) -> None:
        """A thread is up as soon as it is started."""

    def stop(self, timeout_s: float | None = None) -> None:
        """Finish the queued work (all of it, or, if this worker was killed, the call in progress
        up to its next block boundary) and end the thread; at most ``timeout_s``. A thread that
        outlives it (a call that never reaches a boundary) is left to end on its own."""
        if self._thread is not None:
            self._inbox.put(None)
            self._thread.join(timeout_s)
            if not self._thread.is_alive():
                self._thread = None

    @property
    def thread_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def kill(self) -> None:
        """Stop at once, as a crashed device would: queued work is dropped, nothing is reported,
        the call in progress ends at its next block boundary."""
        self._dead = True
        self.stops.halt()
        self._inbox.put(None)

    def _loop(self, on_complete: Callable[[Completion], None]) -> None:
        while True:
            d = self._inbox.get()
            if self._dead:
                self.models.release()
                return
            if d is None:
                return
            t0 = time.perf_counter()
            c = execute(d, self.id, self.registry, self.models, self.plane, self.stops)
            self.busy_s += time.perf_counter() - t0
            self.dispatches += 1
            if not self._dead:
                on_complete(c)

    def stats(self) -> WorkerStats:
        return WorkerStats(
            self.id,
            self.device,
            self.busy_s,
            self.dispatches,
            self.models.loads,
            self.models.evictions,
            self.models.load_s,
            [f"{m}/{c}" + (f"@{s}" if s else "") for m, c, s in self.models.keys()],
            self.models.used_bytes,
            self.models.budget_bytes,
        )
