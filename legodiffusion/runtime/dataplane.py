"""The data plane: where node outputs live until their last consumer has run.

The coordinator only ever sees :class:`TensorRef` metadata. The in-process plane stores values in a
dict and hands out the very same objects (zero copy); a distributed plane implements the same
interface with worker-to-worker pulls.
"""

from __future__ import annotations

import sys
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from legodiffusion.core.messages import PENDING, TensorRef


def make_ref(tensor_id: int, worker: int, value: Any) -> TensorRef:
    if isinstance(value, torch.Tensor):
        dtype = str(value.dtype).removeprefix("torch.")
        return TensorRef(tensor_id, worker, value.numel() * value.element_size(), tuple(value.shape), dtype, device=str(value.device))
    return TensorRef(tensor_id, worker, sys.getsizeof(value))


@dataclass(frozen=True)
class StoreView:
    """What an operator with a :attr:`~legodiffusion.ops.base.Operator.service` gets as its
    ``model``: the plane's store of that name, and the name of the node's model (part of every
    key of the approximate cache)."""

    store: Any
    model: str | None


class DataPlane(ABC):
    #: stores operators read and write besides node outputs, by name (``approx_cache``: the
    #: approximate cache, :mod:`legodiffusion.runtime.approx_cache`); set by the backend
    stores: dict[str, Any]

    def service(self, name: str, model: str | None) -> StoreView:
        """The store ``name`` of this plane, seen from a node of ``model``."""
        store = getattr(self, "stores", {}).get(name)
        if store is None:
            raise KeyError(f"this data plane has no {name!r} store")
        return StoreView(store, model)

    @abstractmethod
    def put(self, tensor_id: int, worker: int, value: Any) -> TensorRef: ...

    @abstractmethod
    def get(self, ref: TensorRef, worker: int) -> Any:
        """The value behind ``ref``, as seen by ``worker`` (pulled there if it lives elsewhere)."""

    @abstractmethod
    def free(self, refs: Iterable[TensorRef]) -> None: ...

    @abstractmethod
    def abandon(self, tensor_ids: Iterable[int]) -> None:
        """These deferred values will never be written: wake their readers with an error."""

    def note_dispatch(self, d) -> None:  # noqa: B027  (a hook; the local plane needs nothing)
        """A dispatch is about to be sent (a distributed plane records where copies will land)."""

    @abstractmethod
    def live_count(self) -> int: ...

    @abstractmethod
    def live_bytes(self) -> int: ...


class ValueStore(DataPlane):
    """Values held in this process, by id, with their sizes; ``_gone`` ids will not be written
    (a late write is dropped, a reader fails at once)."""

    #: a deferred read that waits longer than this is treated as lost
    WAIT_LIMIT_S = 600.0

    def __init__(self) -> None:
        self._values: dict[int, Any] = {}
        self._bytes: dict[int, int] = {}
        self._gone: set[int] = set()
        self._lock = threading.Lock()
        self._written = threading.Condition(self._lock)

    def abandon(self, tensor_ids: Iterable[int]) -> None:
        with self._lock:
            for tid in tensor_ids:
                self._gone.add(tid)
                self._values.pop(tid, None)  # already written by a worker since declared lost
                self._bytes.pop(tid, None)
            self._written.notify_all()

    def live_count(self) -> int:
        return len(self._values)

    def live_bytes(self) -> int:
        with self._lock:
            return sum(self._bytes.values())


class LocalDataPlane(ValueStore):
    """One process, any number of worker threads: a shared dict, no copies."""

    def __init__(self) -> None:
        super().__init__()
        self.remote_reads = 0  # reads by a worker other than the producer (free here, counted)
        self.remote_bytes = 0

    def put(self, tensor_id: int, worker: int, value: Any) -> TensorRef:
        ref = make_ref(tensor_id, worker, value)
        with self._lock:
            if tensor_id in self._gone:  # written by a worker declared lost: nobody will read it
                return ref
            self._values[tensor_id] = value
            self._bytes[tensor_id] = ref.nbytes
            self._written.notify_all()
        return ref

    def get(self, ref: TensorRef, worker: int) -> Any:
        with self._lock:
            if ref.worker == PENDING:  # a deferred input: block here until its producer writes it
                ok = self._written.wait_for(lambda: ref.id in self._values or ref.id in self._gone, self.WAIT_LIMIT_S)
                if not ok or ref.id in self._gone:
                    raise RuntimeError(f"deferred input {ref.id} will not be produced (its producer failed or the request ended)")
            elif ref.worker != worker:
                self.remote_reads += 1
                self.remote_bytes += ref.nbytes
            try:
                return self._values[ref.id]
            except KeyError:
                raise KeyError(f"tensor {ref.id} is not in the data plane (already freed?)") from None

    def free(self, refs: Iterable[TensorRef]) -> None:
        with self._lock:
            for ref in refs:
                self._values.pop(ref.id, None)
                self._bytes.pop(ref.id, None)
                self._gone.discard(ref.id)
