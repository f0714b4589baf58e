"""The data plane over Ray.

Inside each worker actor, an :class:`ActorPlane` keeps the values that worker produced (and the
copies it pulled); a consumer elsewhere pulls a value straight from its holder's ``fetch`` method,
so the bytes travel actor to actor through Ray's object store and never through the engine. The
engine's :class:`DriverPlane` holds no values at all: it routes releases to the actors holding a
value or a copy of it, and reads final outputs from their holder.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import ray
from ray.exceptions import RayActorError, RayError

from legodiffusion.core.messages import PENDING, Dispatch, TensorRef
from legodiffusion.runtime.dataplane import DataPlane, ValueStore, make_ref

#: errors that mean "the worker holding this value is gone"
PEER_LOST = (RayActorError, ValueError)  # ValueError: ray.get_actor found no such (killed) actor

log = logging.getLogger("legodiffusion.ray")

#: direct transports and the tensors they carry
DIRECT_DEVICES = {"nccl": "cuda", "gloo": "cpu"}


def ask(calls: dict[int, Any], timeout_s: float) -> dict[int, Any]:
    """The answers of the actor calls (worker id -> object ref) that answer within ``timeout_s``:
    an actor that died (perhaps before the engine knows) or does not answer is left out, so
    figures gathered from the workers (metrics, health) never fail because one of them died."""
    if not calls:
        return {}
    ready, _ = ray.wait(list(calls.values()), num_returns=len(calls), timeout=timeout_s)
    ready = set(ready)
    out = {}
    for w, ref in calls.items():
        if ref not in ready:
            log.warning("worker %d did not answer within %.0f s; left out of the figures", w, timeout_s)
            continue
        try:
            out[w] = ray.get(ref)
        except RayError as exc:
            log.warning("worker %d left out of the figures: %s", w, type(exc).__name__)
    return out


def pushed(ref: TensorRef, holder: int, dst: int, direct: tuple[str, frozenset[int]] | None) -> bool:
    """Should ``ref``'s value reach worker ``dst`` by a direct push from ``holder`` (Ray's tensor
    transport over the collective group), rather than by a pull through the object store? Only
    plain tensors already written, on the transport's kind of device, between members of the
    group, go direct. The engine decides, and tells the worker which inputs to wait for."""
    if direct is None or ref.worker == PENDING or ref.shape is None or ref.device is None:
        return False
    transport, group = direct
    return holder in group and dst in group and ref.device.startswith(DIRECT_DEVICES[transport])


class ActorPlane(ValueStore):
    """One worker actor's store, plus pulls from its peers."""

    def __init__(self, worker: int, peer: Callable[[int], Any]) -> None:
        super().__init__()  # _gone also takes ids released before their value got here
        self.worker = worker
        self._peer = peer  # worker id -> actor handle
        self._lost: set[int] = set()
        self._lost_inputs: dict[int, int] = {}  # pushed value id -> the lost worker that held it
        self._expected: set[int] = set()  # ids the engine has a peer push here (not to be pulled)
        self.pulls = 0  # values pulled from a peer through the object store
        self.pulled_bytes = 0
        self.pushes = 0  # values a peer sent here directly (tensor transport)
        self.pushed_bytes = 0
        self.served = 0  # values sent to a peer or the engine

    def put(self, tensor_id: int, worker: int, value: Any) -> TensorRef:
        ref = make_ref(tensor_id, self.worker, value)
        self._store(tensor_id, value, ref.nbytes)
        return ref

    def _store(self, tensor_id: int, value: Any, nbytes: int) -> None:
        """Keep a written, pushed or pulled value, unless it was released before it got here."""
        with self._lock:
            if tensor_id in self._gone:
                self._gone.discard(tensor_id)  # the late value is dropped; the tombstone has done its job
                return
            self._values[tensor_id] = value
            self._bytes[tensor_id] = nbytes
            self._written.notify_all()

    def get(self, ref: TensorRef, worker: int) -> Any:
        holder = ref.source if ref.worker == PENDING else ref.worker
        if holder in (self.worker, PENDING):
            return self.value(ref.id, wait=ref.worker == PENDING)
        if ref.id in self._expected:  # the engine has the holder send it here
            return self.value(ref.id, wait=True)
        with self._lock:
            if ref.id in self._values:  # pulled before for another consumer here
                return self._values[ref.id]
        try:
            value = ray.get(self._peer(holder).fetch.remote(ref.id, ref.worker == PENDING))
        except PEER_LOST as exc:
            self._lost.add(holder)
            raise RuntimeError(f"input {ref.id} was held by worker {holder}, which is lost") from exc
        nbytes = make_ref(ref.id, holder, value).nbytes
        with self._lock:
            self.pulls += 1
            self.pulled_bytes += nbytes
        self._store(ref.id, value, nbytes)
        return value

    def value(self, tensor_id: int, wait: bool) -> Any:
        """The value of ``tensor_id`` held here. Only a deferred or pushed one is waited for;
        any other is here or gone (released, or its producer failed)."""
        with self._lock:
            ok = True
            if wait:
                ok = self._written.wait_for(lambda: tensor_id in self._values or tensor_id in self._gone, self.WAIT_LIMIT_S)
            if tensor_id in self._lost_inputs:
                holder = self._lost_inputs[tensor_id]
                self._lost.add(holder)
                raise RuntimeError(f"input {tensor_id} was held by worker {holder}, which is lost")
            if not ok or tensor_id not in self._values:
                raise RuntimeError(f"value {tensor_id} is not here: released, or its producer failed or was lost")
            return self._values[tensor_id]

    def serve(self, tensor_id: int, wait: bool) -> Any:
        value = self.value(tensor_id, wait)
        self.served += 1
        return value

    def expect(self, tensor_ids: Iterable[int]) -> None:
        """These values will be pushed here (told with the dispatch that reads them)."""
        with self._lock:
            self._expected.update(t for t in tensor_ids if t not in self._gone)

    def receive(self, tensor_id: int, value: Any) -> None:
        """A value pushed here by a peer for a consumer on this worker."""
        nbytes = make_ref(tensor_id, self.worker, value).nbytes
        with self._lock:
            self.pushes += 1
            self.pushed_bytes += nbytes
        self._store(tensor_id, value, nbytes)

    def lost_inputs(self, tensor_ids: Iterable[int], holder: int) -> None:
        """Values that were to be pushed here from ``holder``, which died: wake their readers."""
        with self._lock:
            for tid in tensor_ids:
                if tid not in self._values:
                    self._lost_inputs[tid] = holder
                    self._gone.add(tid)
            self._written.notify_all()

    def take_lost(self) -> list[int]:
        with self._lock:
            lost, self._lost = sorted(self._lost), set()
            return lost

    def free(self, refs: Iterable) -> None:
        """Release values by ref or by id (the engine sends ids). An id not here yet (a push or
        a write still on its way, or a reader still to come) is remembered as gone."""
        with self._lock:
            for r in refs:
                tid = r if isinstance(r, int) else r.id
                self._expected.discard(tid)
                self._lost_inputs.pop(tid, None)
                if tid in self._values:
                    del self._values[tid]
                    self._bytes.pop(tid, None)
                else:
                    self._gone.add(tid)
            self._written.notify_all()


class DriverPlane(DataPlane):
    """The engine's side: metadata only. It knows which actors hold each value (the producer, and
    any consumer that pulled a copy) so that a release reaches all of them."""

    #: how long the engine waits for figures from the actors
    ASK_TIMEOUT_S = 10.0

    def __init__(self, handles: dict[int, Any]) -> None:
        self._handles = handles  # live worker id -> actor handle (owned by the backend)
        self.up: set[int] = set()  # workers whose actor has started (joining ones are not asked)
        self._copies: dict[int, set[int]] = {}
        self.direct: tuple[str, frozenset[int]] | None = None  # (transport, group), set by the backend
        self._pushes: dict[int, tuple[int, set[int]]] = {}  # value id -> (holder, workers it was pushed to)
        self._expect: dict[int, set[int]] = {}  # dispatch id -> its inputs that arrive by push
        self.pushes = 0
        self.output_bytes = 0  # bytes of final outputs read by the engine: the only bytes it sees
        self.held_bytes = 0  # values kept here: stays 0, the engine never stores a value

    def note_dispatch(self, d: Dispatch) -> None:
        """Record where copies will land; with a direct transport, have each holder send its
        plain tensors to this dispatch's worker now (once per value and worker), and note which
        inputs the worker is to wait for (:meth:`take_pushed`) rather than pull."""
        expect = set()
        for item in d.items:
            for ref in item.refs.values():
                holder = ref.source if ref.worker == PENDING else ref.worker
                if holder == d.worker:
                    continue
                copies = self._copies.setdefault(ref.id, set())
                if d.worker not in copies:
                    copies.add(d.worker)
                    if pushed(ref, holder, d.worker, self.direct):
                        self._push(ref.id, holder, d.worker)
                push = self._pushes.get(ref.id)
                if push is not None and d.worker in push[1]:
                    expect.add(ref.id)
        if expect:
            self._expect[d.id] = expect

    def take_pushed(self, dispatch_id: int) -> set[int]:
        """The inputs of a dispatch that reach its worker by push."""
        return self._expect.pop(dispatch_id, set())

    def _push(self, tensor_id: int, holder: int, dst: int) -> None:
        src, to = self._handles.get(holder), self._handles.get(dst)
        if src is None or to is None:
            return
        sent = getattr(src, f"send_{self.direct[0]}").remote(tensor_id)  # bytes go holder -> dst directly
        got = to.receive.remote(tensor_id, sent)

        def check(f) -> None:  # a transfer that fails wakes its reader rather than leave it waiting
            if f.exception() is not None and dst in self._handles:
                to.lost_inputs.remote([tensor_id], holder)

        got.future().add_done_callback(check)
        self._pushes.setdefault(tensor_id, (holder, set()))[1].add(dst)
        self.pushes += 1

    def forget(self, worker: int) -> None:
        """``worker`` died: values it was to push will never arrive; wake their readers. Direct
        transfers stop for good (Ray ends the collective group, and the other end, of a transfer
        that fails): everything moves through the object store from now on."""
        self.direct = None
        lost: dict[int, list[int]] = {}
        for tid, (holder, dsts) in list(self._pushes.items()):
            if holder == worker:
                del self._pushes[tid]
                for dst in dsts:
                    lost.setdefault(dst, []).append(tid)
        for dst, ids in lost.items():
            handle = self._handles.get(dst)
            if handle is not None:
                handle.lost_inputs.remote(ids, worker)

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
            self._pushes.pop(ref.id, None)
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
            self._pushes.pop(tid, None)
        for handle in list(self._handles.values()):
            handle.abandon.remote(ids)

    def counts(self) -> list[tuple[int, int]]:
        """(values, bytes) held by each live worker actor (one that died or does not answer is
        left out)."""
        calls = {w: h.plane_counts.remote() for w, h in list(self._handles.items()) if w in self.up}
        return list(ask(calls, self.ASK_TIMEOUT_S).values())

    def live_count(self) -> int:
        return sum(n for n, _ in self.counts())

    def live_bytes(self) -> int:
        return sum(b for _, b in self.counts())
