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
from typing import Any

import torch

from legodiffusion.core.messages import TensorRef


def make_ref(tensor_id: int, worker: int, value: Any) -> TensorRef:
    if isinstance(value, torch.Tensor):
        return TensorRef(
            tensor_id, worker, value.numel() * value.element_size(), tuple(value.shape), str(value.dtype).removeprefix("torch.")
        )
    return TensorRef(tensor_id, worker, sys.getsizeof(value))


class DataPlane(ABC):
    @abstractmethod
    def put(self, tensor_id: int, worker: int, value: Any) -> TensorRef: ...

    @abstractmethod
    def get(self, ref: TensorRef, worker: int) -> Any:
        """The value behind ``ref``, as seen by ``worker`` (pulled there if it lives elsewhere)."""

    @abstractmethod
    def free(self, refs: Iterable[TensorRef]) -> None: ...

    @abstractmethod
    def live_count(self) -> int: ...

    @abstractmethod
    def live_bytes(self) -> int: ...


class LocalDataPlane(DataPlane):
    """One process, any number of worker threads: a shared dict, no copies."""

    def __init__(self) -> None:
        self._values: dict[int, Any] = {}
        self._bytes: dict[int, int] = {}
        self._lock = threading.Lock()
        self.remote_reads = 0  # reads by a worker other than the producer (free here, counted)
        self.remote_bytes = 0

    def put(self, tensor_id: int, worker: int, value: Any) -> TensorRef:
        ref = make_ref(tensor_id, worker, value)
        with self._lock:
            self._values[tensor_id] = value
            self._bytes[tensor_id] = ref.nbytes
        return ref

    def get(self, ref: TensorRef, worker: int) -> Any:
        with self._lock:
            if ref.worker != worker:
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

    def live_count(self) -> int:
        return len(self._values)

    def live_bytes(self) -> int:
        with self._lock:
            return sum(self._bytes.values())
