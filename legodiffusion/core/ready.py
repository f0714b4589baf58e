"""The ready queue of one batch class: the nodes that can run now, in the policy's order.

One heap per tenant account (:mod:`legodiffusion.core.fairness`), ordered by the policy's
per-request key (:meth:`SchedulingPolicy.priority`); the next node comes from the tenant the
policy's :meth:`SchedulingPolicy.share_key` puts first *now*, so a tenant's nodes queued while it
was behind do not keep that place once it has caught up. With one tenant this is one heap.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator

Entry = tuple  # (request priority, node, request id)


class ReadyQueue:
    __slots__ = ("heaps", "share_key", "size")

    def __init__(self, share_key: Callable[[object], tuple]) -> None:
        self.heaps: dict[object, list[Entry]] = {}  # tenant account -> its ready nodes
        self.share_key = share_key
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def push(self, priority: tuple, node: int, request_id: int, account: object) -> None:
        heapq.heappush(self.heaps.setdefault(account, []), (priority, node, request_id))
        self.size += 1

    def _turn(self, account: object) -> tuple:
        """Where ``account``'s head stands among the tenants': its share key, then its priority."""
        return (self.share_key(account), self.heaps[account][0][:2])

    def _first(self) -> object:
        """The account whose head goes next."""
        if len(self.heaps) == 1:
            return next(iter(self.heaps))
        return min(self.heaps, key=self._turn)

    def pop(self) -> Entry:
        account = self._first()
        heap = self.heaps[account]
        entry = heapq.heappop(heap)
        if not heap:
            del self.heaps[account]
        self.size -= 1
        return entry

    def head_rank(self):
        """The priority class of the next node (the first element of its share key)."""
        return self.share_key(self._first())[0]

    def first(self, n: int) -> list[Entry]:
        """About the next ``n`` entries (each tenant's heap in heap order, tenants by share key):
        cheap, for estimates (the exact order is :meth:`ordered`'s)."""
        out: list[Entry] = []
        for account in sorted(self.heaps, key=self.share_key) if len(self.heaps) > 1 else self.heaps:
            out += self.heaps[account][: n - len(out)]
            if len(out) >= n:
                break
        return out

    def ordered(self) -> Iterator[tuple]:
        """Every node's place among every queue's, (its tenant's share key, its priority, node),
        in pop order while no tenant's share key changes, without popping: each heap is walked
        best-first through a frontier of its subtrees, so the first k cost O(k log k) however
        long the queue."""
        accounts = self.heaps if len(self.heaps) == 1 else sorted(self.heaps, key=self._turn)
        for account in accounts:
            share, heap = self.share_key(account), self.heaps[account]
            frontier = [(heap[0], 0)]
            while frontier:
                entry, i = heapq.heappop(frontier)
                yield (share, *entry[:2])
                for child in (2 * i + 1, 2 * i + 2):
                    if child < len(heap):
                        heapq.heappush(frontier, (heap[child], child))
