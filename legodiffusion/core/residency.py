"""Which components a device holds: an LRU of byte sizes under a memory budget.

Pure accounting, shared by the live worker (:class:`legodiffusion.models.store.ResidentModels`,
which also holds the objects) and the simulator's workers and host caches, so both decide
evictions the same way.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Hashable


class LRUBudget:
    """Keys with their sizes in least-recently-used order, under ``budget_bytes`` (None: unlimited).

    ``reserve_bytes`` on :meth:`admit` is memory needed beside the weights while the caller runs
    (activations): it can force evictions but is not kept. Keys in ``in_use`` are never evicted."""

    def __init__(self, budget_bytes: int | None = None) -> None:
        self.budget_bytes = budget_bytes
        self._sizes: OrderedDict[Hashable, int] = OrderedDict()
        self.used_bytes = 0
        self.loads = 0
        self.evictions = 0

    def __contains__(self, key: Hashable) -> bool:
        return key in self._sizes

    def keys(self) -> list:
        return list(self._sizes)

    def touch(self, key: Hashable) -> bool:
        """Mark ``key`` most recently used; False when it is not held."""
        if key not in self._sizes:
            return False
        self._sizes.move_to_end(key)
        return True

    def admit(self, key: Hashable, nbytes: int, reserve_bytes: int = 0, in_use: Collection = ()) -> tuple[bool, list]:
        """Make ``key`` held; returns (was it newly admitted, the keys evicted to make room).

        Raises ``MemoryError`` when it cannot fit even after evicting everything not in use (then
        nothing is evicted)."""
        held = self.touch(key)
        need = (0 if held else nbytes) + reserve_bytes
        if self.budget_bytes is None or self.used_bytes + need <= self.budget_bytes:
            if not held:
                self._add(key, nbytes)
            return not held, []
        protected = set(in_use) | {key}
        victims, freed = [], 0
        for old, size in self._sizes.items():  # oldest first
            if self.used_bytes - freed + need <= self.budget_bytes:
                break
            if old not in protected and size > 0:  # an entry of no bytes frees nothing
                victims.append(old)
                freed += size
        if self.used_bytes - freed + need > self.budget_bytes:
            what = f"{key} ({nbytes} bytes)" if not held else f"{key}"
            raise MemoryError(
                f"{what} with {reserve_bytes} bytes of activations does not fit in {self.budget_bytes} bytes"
                f" beside {self.used_bytes - freed} bytes in use"
            )
        # the oldest that free enough may free more than needed: keep back the smallest of them
        # that the surplus covers (a small VAE evicted before a large denoiser frees nothing needed)
        surplus = self.budget_bytes - (self.used_bytes - freed + need)
        for old in sorted(victims, key=lambda k: self._sizes[k]):
            if self._sizes[old] > surplus:
                break
            surplus -= self._sizes[old]
            victims.remove(old)
        for old in victims:
            self.used_bytes -= self._sizes.pop(old)
        self.evictions += len(victims)
        if not held:
            self._add(key, nbytes)
        return not held, victims

    def discard(self, key: Hashable) -> None:
        size = self._sizes.pop(key, None)
        if size is not None:
            self.used_bytes -= size

    def _add(self, key: Hashable, nbytes: int) -> None:
        self._sizes[key] = nbytes
        self.used_bytes += nbytes
        self.loads += 1
