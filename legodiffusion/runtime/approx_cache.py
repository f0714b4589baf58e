"""The approximate cache's store: cached sampling states, shared by every worker of an engine.

It lives in the data plane (:meth:`DataPlane.service`): in this process for the local backend;
on Ray, one actor holds the index and keeps the tensors in the object store
(:mod:`legodiffusion.runtime.ray.approx`). Entries are keyed by everything that must match for
a state to be reused as it is (base model, latent shape and dtype, the sampler's schedule, the
adapter set); within a key, a lookup finds the nearest cached prompt by cosine similarity and
takes the largest step its similarity allows. Eviction is LCBFU under a byte budget
(:func:`legodiffusion.core.approx.lcbfu_victims`).
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field
from typing import Any

import torch

from legodiffusion.core.approx import ApproxConfig, StateInfo, lcbfu_victims


@dataclass(frozen=True)
class Hit:
    """A lookup's answer: the state cached at ``step`` of the ``request`` whose prompt was
    ``similarity``-close."""

    id: int
    step: int
    latents: Any
    similarity: float
    request: int


@dataclass(frozen=True)
class Saved:
    """An insert's answer: the new state's id (None when LCBFU evicted it at once) and the ids it
    evicted."""

    id: int | None
    nbytes: int
    evicted: tuple[int, ...]


@dataclass
class _State:
    id: int
    step: int
    latents: Any
    nbytes: int
    seq: int
    uses: int = 1


@dataclass
class _Prompt:
    """One request's cached prompt: its unit vector and the states saved for it, by step."""

    key: tuple
    vector: torch.Tensor
    request: int
    states: dict[int, _State] = field(default_factory=dict)


def nbytes_of(value: Any) -> int:
    return value.numel() * value.element_size() if isinstance(value, torch.Tensor) else 0


class ApproxStore:
    """Cached states under :class:`ApproxConfig`'s budget. Thread-safe: every worker of the local
    backend reads and writes it."""

    def __init__(self, config: ApproxConfig | None = None) -> None:
        self.config = config or ApproxConfig()
        self._prompts: dict[tuple[tuple, int], _Prompt] = {}  # (key, request) -> prompt
        self._where: dict[int, tuple[tuple, int]] = {}  # state id -> its prompt
        self._ids = itertools.count(1)
        self._seq = itertools.count()
        self._lock = threading.Lock()
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self._where)

    def lookup(self, key: tuple, vector: torch.Tensor, steps: int) -> Hit | None:
        """The state to start from for a prompt with unit ``vector`` under ``key`` in a
        ``steps``-step schedule: of the nearest cached prompt with the same key that has a state
        its similarity allows (a nearer one may have lost it to eviction, or, having started from
        a cached state itself, never made it), the state at the largest such step; None (a miss)
        when there is none."""
        with self._lock:
            prompts = [p for p in self._prompts.values() if p.key == key]
            if not prompts:
                return None
            sims = torch.stack([p.vector for p in prompts]) @ vector
            for i in torch.argsort(sims, descending=True, stable=True).tolist():
                prompt, similarity = prompts[i], float(sims[i])
                allowed = self.config.allowed_steps(similarity, steps)
                if not allowed:
                    return None  # the farther ones allow no more
                usable = [s for s in prompt.states.values() if s.step <= allowed]
                if usable:
                    state = max(usable, key=lambda s: s.step)
                    state.uses += 1
                    return Hit(state.id, state.step, state.latents, similarity, prompt.request)
            return None

    def get(self, state_id: int) -> Hit | None:
        """The cached state ``state_id`` as a lookup returns it (None once evicted); counts no use."""
        with self._lock:
            where = self._where.get(state_id)
            if where is None:
                return None
            prompt = self._prompts[where]
            state = next(s for s in prompt.states.values() if s.id == state_id)
            return Hit(state.id, state.step, state.latents, 1.0, prompt.request)

    def insert(self, key: tuple, vector: torch.Tensor, request: int, step: int, latents: Any, nbytes: int | None = None) -> Saved:
        """Cache ``latents`` (of ``nbytes``, by default its size) after ``step`` steps of
        ``request``'s prompt (a hit starts the request's own sampler state there); LCBFU then
        evicts down to the budget, perhaps this very state."""
        nbytes = nbytes_of(latents) if nbytes is None else nbytes
        with self._lock:
            prompt = self._prompts.setdefault((key, request), _Prompt(key, vector, request))
            state = _State(next(self._ids), step, latents, nbytes, next(self._seq))
            old = prompt.states.get(step)
            if old is not None:  # the same request saving the same step again (a re-run after a loss)
                self._drop(old.id)
            prompt.states[step] = state
            self._where[state.id] = (key, request)
            self.nbytes += nbytes
            infos = [StateInfo(s.id, s.step, s.nbytes, s.uses, s.seq) for p in self._prompts.values() for s in p.states.values()]
            evicted = tuple(lcbfu_victims(infos, self.config.budget_bytes))
            for gone in evicted:
                self._drop(gone)
            return Saved(None if state.id in evicted else state.id, nbytes, evicted)

    def _drop(self, state_id: int) -> None:
        where = self._where.pop(state_id)
        prompt = self._prompts[where]
        state = next(s for s in prompt.states.values() if s.id == state_id)
        del prompt.states[state.step]
        self.nbytes -= state.nbytes
        if not prompt.states:
            del self._prompts[where]

    def entries(self) -> list[dict]:
        """Metadata of every cached state (no tensors), oldest first."""
        with self._lock:
            rows = [
                {"id": s.id, "key": p.key, "request": p.request, "step": s.step, "bytes": s.nbytes, "uses": s.uses, "seq": s.seq}
                for p in self._prompts.values()
                for s in p.states.values()
            ]
        return sorted(rows, key=lambda r: r["seq"])
