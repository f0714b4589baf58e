"""The approximate cache on Ray: one actor holds the index (an :class:`ApproxStore` whose values
are object refs) and puts every cached latent into Ray's object store; worker actors and the
engine reach it through :class:`RayApproxClient`, which has the store's methods, so the cache's
operators run unchanged on either backend."""

from __future__ import annotations

from dataclasses import replace

import ray

from legodiffusion.core.approx import ApproxConfig
from legodiffusion.runtime.approx_cache import ApproxStore, Hit, Saved, nbytes_of


class ApproxActor:
    """The shared store: an index in this actor, the tensors in the object store (owned here, so
    they live as long as the cache does, whichever worker made them)."""

    def __init__(self, config: ApproxConfig) -> None:
        self.store = ApproxStore(config)

    def lookup(self, key: tuple, vector, steps: int) -> Hit | None:
        return self.store.lookup(key, vector, steps)

    def get(self, state_id: int) -> Hit | None:
        return self.store.get(state_id)

    def insert(self, key: tuple, vector, request: int, step: int, latents) -> Saved:
        return self.store.insert(key, vector, request, step, [ray.put(latents)], nbytes_of(latents))

    def entries(self) -> list[dict]:
        return self.store.entries()

    def nbytes(self) -> int:
        return self.store.nbytes


class RayApproxClient:
    """The store as an operator or the engine sees it: the same methods, each one actor call; a
    hit's latents come from the object store."""

    def __init__(self, handle, config: ApproxConfig) -> None:
        self.handle = handle
        self.config = config

    def _fetched(self, hit: Hit | None) -> Hit | None:
        return None if hit is None else replace(hit, latents=ray.get(hit.latents[0]))

    def lookup(self, key: tuple, vector, steps: int) -> Hit | None:
        return self._fetched(ray.get(self.handle.lookup.remote(key, vector, steps)))

    def get(self, state_id: int) -> Hit | None:
        return self._fetched(ray.get(self.handle.get.remote(state_id)))

    def insert(self, key: tuple, vector, request: int, step: int, latents) -> Saved:
        return ray.get(self.handle.insert.remote(key, vector, request, step, latents))

    def entries(self) -> list[dict]:
        return ray.get(self.handle.entries.remote())

    @property
    def nbytes(self) -> int:
        return ray.get(self.handle.nbytes.remote())
