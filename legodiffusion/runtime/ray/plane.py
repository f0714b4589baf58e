"""The data plane over Ray.

Inside each worker actor, an :class:`ActorPlane` keeps the values that worker produced (and the
copies it pulled); a consumer elsewhere pulls a value straight from its holder's ``fetch`` method,
so the bytes travel actor to actor through Ray's object store and never through the engine. The
engine's :class:`DriverPlane` holds no values at all: it routes releases to the actors holding a
value or a copy of it, and reads final outputs from their holder.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

import ray
from ray.exceptions import RayActorError

from legodiffusion.core.coordinator import PENDING
from legodiffusion.core.messages import Dispatch, TensorRef
from legodiffusion.runtime.dataplane import DataPlane, make_ref

#: errors that mean "the worker holding this value is gone"
PEER_LOST = (RayActorError, ValueError)  # ValueError: ray.get_actor found no such (killed) actor


class ActorPlane(DataPlane):
    """One worker actor's store, plus pulls from its peers."""

    #: a deferred read that waits longer than this is treated as lost
    WAIT_LIMIT_S = 600.0

    def __init__(self, worker: int, peer: Callable[[int], Any]) -> None:
        self.worker = worker
        self._peer = peer  # worker id -> actor handle
        self._values: dict[int, Any] = {}
        self._bytes: dict[int, int] = {}
        self._abandoned: set[int] = set()
        self._lock = threading.Lock()
        self._written = threading.Condition(self._lock)
        self._lost: set[int] = set()
        self.pulls = 0  # values pulled from a peer
        self.pulled_bytes = 0
        self.served = 0  # values sent to a peer or the engine

    def put(self, tensor_id: int, worker: int, value: Any) -> TensorRef:
        ref = make_ref(tensor_id, self.worker, value)
        with self._lock:
            if tensor_id not in self._abandoned:
                self._values[tensor_id] = value
                self._bytes[tensor_id] = ref.nbytes
                self._written.notify_all()
        return ref

    def get(self, ref: TensorRef, worker: int) -> Any:
        holder = ref.source if ref.worker == PENDING else ref.worker
        if holder in (self.worker, PENDING):
            return self.wait(ref.id)
        with self._lock:
            if ref.id in self._values:  # pulled before for another consumer here
                return self._values[ref.id]
        try:
            value = ray.get(self._peer(holder).fetch.remote(ref.id))
        except PEER_LOST as exc:
            self._lost.add(holder)
            raise RuntimeError(f"input {ref.id} was held by worker {holder}, which is lost") from exc
        with self._lock:
            self.pulls += 1
            nbytes = make_ref(ref.id, holder, value).nbytes
            self.pulled_bytes += nbytes
            if ref.id not in self._abandoned:
                self._values[ref.id] = value
                self._bytes[ref.id] = nbytes
        return value

    def wait(self, tensor_id: int) -> Any:
        """The value of ``tensor_id`` held here, waiting for it if a deferred producer has not
        written it yet."""
        with self._lock:
            ok = self._written.wait_for(lambda: tensor_id in self._values or tensor_id in self._abandoned, self.WAIT_LIMIT_S)
            if not ok or tensor_id in self._abandoned:
                raise RuntimeError(f"value {tensor_id} will not be produced (its producer failed or the request ended)")
            return self._values[tensor_id]

    def serve(self, tensor_id: int) -> Any:
        value = self.wait(tensor_id)
        self.served += 1
        return value

    def take_lost(self) -> list[int]:
        with self._lock:
            lost, self._lost = sorted(self._lost), set()
            return lost

    def free(self, refs: Iterable) -> None:
        """Release values by ref or by id (the engine sends ids)."""
        with self._lock:
            for r in refs:
                tid = r if isinstance(r, int) else r.id
                self._values.pop(tid, None)
                self._bytes.pop(tid, None)
                self._abandoned.discard(tid)

    def abandon(self, tensor_ids: Iterable[int]) -> None:
        with self._lock:
            for tid in tensor_ids:
                self._abandoned.add(tid)
                self._values.pop(tid, None)
                self._bytes.pop(tid, None)
            self._written.notify_all()

    def live_count(self) -> int:
        return len(self._values)

    def live_bytes(self) -> int:
        with self._lock:
            return sum(self._bytes.values())


class DriverPlane(DataPlane):
    """The engine's side: metadata only. It knows which actors hold each value (the producer, and
    any consumer that pulled a copy) so that a release reaches all of them."""

    def __init__(self, handles: dict[int, Any]) -> None:
        self._handles = handles  # live worker id -> actor handle (owned by the backend)
        self._copies: dict[int, set[int]] = {}
        self.output_bytes = 0  # bytes of final outputs read by the engine: the only bytes it sees
        self.held_bytes = 0  # values kept here: stays 0, the engine never stores a value

    def note_dispatch(self, d: Dispatch) -> None:
        for item in d.items:
            for ref in item.refs.values():
                holder = ref.source if ref.worker == PENDING else ref.worker
                if holder != d.worker:
                    self._copies.setdefault(ref.id, set()).add(d.worker)

    def put(self, tensor_id: int, worker: int, value: Any) -> TensorRef:
        raise RuntimeError("the engine holds no values on the ray backend; workers put their own outputs")

    def get(self, ref: TensorRef, worker: int) -> Any:
        handle = self._handles.get(ref.worker)
        if handle is None:
            raise RuntimeError(f"output {ref.id} was held by worker {ref.worker}, which is lost")
        value = ray.get(handle.fetch.remote(ref.id))
        self.output_bytes += make_ref(ref.id, ref.worker, value).nbytes
        return value

    def free(self, refs: Iterable[TensorRef]) -> None:
        by_worker: dict[int, list[int]] = {}
        for ref in refs:
            holders = self._copies.pop(ref.id, set())
            holders.add(ref.source if ref.worker == PENDING else ref.worker)
            for w in holders:
                by_worker.setdefault(w, []).append(ref.id)
        for w, ids in by_worker.items():
            handle = self._handles.get(w)
            if handle is not None:
                handle.free.remote(ids)

    def abandon(self, tensor_ids: Iterable[int]) -> None:
        ids = list(tensor_ids)
        for tid in ids:
            self._copies.pop(tid, None)
        for handle in list(self._handles.values()):
            handle.abandon.remote(ids)

    def counts(self) -> list[tuple[int, int]]:
        """(values, bytes) held by each live worker actor."""
        return ray.get([h.plane_counts.remote() for h in self._handles.values()])

    def live_count(self) -> int:
        return sum(n for n, _ in self.counts())

    def live_bytes(self) -> int:
        return sum(b for _, b in self.counts())
