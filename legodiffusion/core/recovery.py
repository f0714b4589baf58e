"""Results a recovery will discard: in-flight items that read a value lost with a worker.

Such an *orphan* is redone elsewhere at once; its own result, whenever it comes (an error, most
often), is dropped. Node ids are per request and a batch may carry the same node of several
requests, so an orphan is keyed by (dispatch, request, node). While it is in flight an orphan
may still wait for a deferred input; :class:`Orphans` keeps those ids beside the keys, so that
releasing one can also abandon it (its waiter then fails at once rather than blocking its
worker until the data plane's wait limit).
"""

from __future__ import annotations

from collections import Counter

from legodiffusion.core.messages import PENDING, DispatchItem

OrphanKey = tuple[int, int, int]  # (dispatch, request, node)


class Orphans:
    def __init__(self) -> None:
        self._waits: dict[OrphanKey, tuple[int, ...]] = {}  # orphan -> deferred ids it may wait for
        self._waited: Counter = Counter()  # deferred id -> orphans in flight that may wait for it

    def __contains__(self, key: OrphanKey) -> bool:
        return key in self._waits

    def __len__(self) -> int:
        return len(self._waits)

    def add(self, dispatch_id: int, item: DispatchItem) -> None:
        key = (dispatch_id, item.request_id, item.node)
        if key not in self._waits:
            waits = self._waits[key] = tuple(r.id for r in item.refs.values() if r.worker == PENDING)
            self._waited.update(waits)

    def settle(self, key: OrphanKey) -> bool:
        """The item ``key`` reported, or was lost with its worker; True if it was an orphan."""
        waits = self._waits.pop(key, None)
        if waits is None:
            return False
        for tid in waits:
            self._waited[tid] -= 1
            if self._waited[tid] <= 0:
                del self._waited[tid]
        return True

    def waited(self, tensor_id: int) -> bool:
        """May an orphan in flight still be waiting for ``tensor_id``?"""
        return tensor_id in self._waited
