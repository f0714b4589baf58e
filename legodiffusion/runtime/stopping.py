"""Stoppable model calls: a worker's dispatch can be asked to stop, and the call in progress then
ends at its next block boundary instead of computing on for nobody.

A model call is one forward of a diffusers/transformers component, which may run for minutes at a
large size. Each worker's resident copy of a component gets, once, a forward pre-hook on every
block (each non-leaf element of an ``nn.ModuleList``: UNet/DiT blocks and their resnets and
attentions, text-encoder layers, VAE decoder blocks, ControlNet blocks). The hook reads the
worker's :class:`StopFlags` (one call runs per worker at a time, so one flag per worker serves
every resident model) and raises :class:`CallStopped` when the running dispatch was asked to
stop; ``runtime/execute.py`` turns that into cancelled item results. The delay is bounded by the
longest block, and a check is an attribute read (``benchmarks/stop_hooks.py`` measures the cost).
"""

from __future__ import annotations

import threading
from typing import Any

import torch

from legodiffusion.models.components import modules_of

#: result error of the items of a dispatch stopped at a block boundary
STOPPED = "cancelled: stopped at a block boundary"


class CallStopped(Exception):
    """Raised inside a model call whose dispatch was asked to stop."""


class StopFlags:
    """One worker's stop requests: ``ask`` may come from any thread (the engine's loop, a Ray
    io thread) before or while the dispatch runs; the worker thread brackets each dispatch with
    ``begin``/``end`` and its models' hooks read ``stopping``. Dispatch ids reach a worker in
    increasing order, so requests for ids below the running one are stale and dropped."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._asked: set[int] = set()
        self._running: int | None = None
        self._halted = False
        self.stopping = False  # read without the lock by hooks: a bool read is atomic

    def ask(self, dispatch_id: int) -> None:
        with self._lock:
            self._asked.add(dispatch_id)
            if self._running == dispatch_id:
                self.stopping = True

    def halt(self) -> None:
        """Stop the running call and every later one (the worker is going away)."""
        with self._lock:
            self._halted = True
            self.stopping = True

    def begin(self, dispatch_id: int) -> bool:
        """``dispatch_id`` starts; False when it was already asked to stop (skip it)."""
        with self._lock:
            self._asked = {i for i in self._asked if i >= dispatch_id}
            self._running = dispatch_id
            self.stopping = self._halted or dispatch_id in self._asked
            return not self.stopping

    def end(self) -> None:
        with self._lock:
            self._asked.discard(self._running)
            self._running = None
            self.stopping = self._halted

    def guard(self, component: Any) -> None:
        """Hook ``component``'s blocks to this worker's flags (once per resident copy)."""
        for module in modules_of(component):
            if getattr(module, "_stop_hooked", False):
                continue
            for block in blocks(module):
                block.register_forward_pre_hook(self._hook)
            module._stop_hooked = True

    def _hook(self, module, args) -> None:
        if self.stopping:
            raise CallStopped(STOPPED)


def blocks(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The blocks a call can stop between: non-leaf elements of every ``nn.ModuleList``."""
    return [m for lst in module.modules() if isinstance(lst, torch.nn.ModuleList) for m in lst if next(m.children(), None) is not None]
