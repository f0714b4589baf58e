"""What the server keeps of what it has answered, each within :class:`Retention`'s caps: run records
(native runs, OpenAI images, ComfyUI prompts and their history) with their images as PNG bytes,
and the workflows registered over the API (ComfyUI uploads: :mod:`legodiffusion.server.uploads`).
Each store owns its retention, so no handler keeps a cache of its own."""

from __future__ import annotations

import asyncio
import base64
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from legodiffusion.runtime.images import to_png
from legodiffusion.runtime.runs import Run, RunResult
from legodiffusion.server.errors import ApiError

TERMINAL = ("succeeded", "failed", "rejected", "cancelled")
Evicted = Callable[[str, str], None]
"""Told ``(kind, reason)`` for each record a store drops: kind ``runs``, ``prompts``, ``uploads``
or ``workflows``; reason ``ttl``, ``count`` or ``bytes``."""


@dataclass
class Retention:
    ttl_s: float = 3600.0
    """How long a finished run (and its ComfyUI prompt) and an upload are kept, in seconds."""
    max_runs: int = 10_000
    """Most run records kept; beyond it the oldest finished go first (a run in flight never goes)."""
    max_run_bytes: int = 512 * 2**20
    """Most PNG bytes of finished runs' images kept; beyond it the oldest finished go first."""
    max_upload_pixels: int = 4096 * 4096
    """Largest ComfyUI upload (width x height), read from the image header before it is decoded."""
    max_upload_bytes: int = 256 * 2**20
    """Most decoded bytes (width x height x 3) of ComfyUI uploads kept; beyond it the oldest go."""
    max_workflows: int = 256
    """Most workflows registered over the API (and ComfyUI ControlNet variants); beyond it the
    least recently registered or used goes. The built-in workflows are never pruned."""
    clock: Callable[[], float] = time.time
    """Where the stores read the time (Unix seconds); tests pass their own."""


@dataclass
class RunRecord:
    id: str
    workflow: str
    created_s: float
    run: Run | None = None  # while in flight
    result: RunResult | None = None  # once ended, without its outputs (the images are ``pngs``)
    status: str = "running"
    pngs: list[bytes] = field(default_factory=list)
    progress: dict = field(default_factory=dict)  # as it ended
    ended_s: float | None = None
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    spans: list = field(default_factory=list)  # its timeline once ended (:mod:`legodiffusion.server.timeline`)

    @property
    def nbytes(self) -> int:
        return sum(len(p) for p in self.pngs)

    def _progress(self) -> dict:
        run = self.run
        return {"nodes_done": run.nodes_done, "nodes_total": run.nodes_total, "steps_done": run.steps_done}

    def end(self, result: RunResult, pngs: list[bytes], now_s: float, spans: list | None = None) -> None:
        """Keep what the answers need: the images as PNG, the result without its tensors, the
        progress as it ended, where its nodes ran; drop the run (whose future holds the tensors)."""
        self.pngs, self.spans = pngs, spans or []
        self.result = replace(result, outputs={})
        self.progress = self._progress()
        self.status, self.run, self.ended_s = result.status, None, now_s
        self.ended.set()

    def to_json(self, images: bool = True) -> dict:
        status = self.status
        if status == "running" and self.run is not None and not self.run.started:
            status = "queued"  # admitted, no model call finished yet
        out: dict[str, Any] = {"id": self.id, "workflow": self.workflow, "status": status, "created": self.created_s}
        out["progress"] = self._progress() if self.run is not None else self.progress
        if self.result is not None:
            out["latency_s"] = self.result.latency_s
            if self.result.error:
                out["error"] = {
                    "code": "SLO_REJECTED" if self.status == "rejected" else "node_failed",
                    "message": self.result.error,
                    "node": self.result.node,
                }
            if images and self.pngs:
                out["images"] = [base64.b64encode(p).decode() for p in self.pngs]
            if self.result.notes:
                out["notes"] = self.result.notes
        return out


def encode(result: RunResult) -> tuple[RunResult, list[bytes]]:
    """A run's images as PNG bytes, encoded once (off the event loop: a large one takes a while);
    a run whose image cannot be encoded still ends, failed with the reason."""
    image = result.outputs.get("image")
    try:
        return result, (to_png(image) if result.ok and image is not None else [])
    except Exception as exc:
        return replace(result, status="failed", error=f"could not encode the image as PNG: {exc}"), []


def _expired(kind: str, key: str, path: str) -> ApiError:
    return ApiError(404, "run_expired", f"{kind} {key!r} has expired (past the server's retention)", path)


class RunStore:
    """Run records by id (``run-N``) and ComfyUI prompts by id (``prompt-N``), numbered in order, so
    an id issued and no longer held is told apart from one never issued without remembering it."""

    def __init__(self, retention: Retention, on_evict: Evicted) -> None:
        self.retention, self.on_evict = retention, on_evict
        self.records: dict[str, RunRecord] = {}
        self.prompts: dict[str, tuple[Any, list[str]]] = {}  # prompt id -> (ComfyJob, run ids)
        self._finished: OrderedDict[str, None] = OrderedDict()  # run ids, oldest ended first
        self._prompt_of: dict[str, str] = {}
        self._issued = {"run": 0, "prompt": 0}
        self.bytes_held = 0

    def now(self) -> float:
        return self.retention.clock()

    def _issue(self, kind: str) -> tuple[str, int]:
        self._issued[kind] += 1
        n = self._issued[kind]
        return f"{kind}-{n}", n

    def _was_issued(self, kind: str, key: str) -> bool:
        prefix, _, n = key.rpartition("-")
        return prefix == kind and n.isdigit() and 0 < int(n) <= self._issued[kind]

    def add(self, workflow: str, run: Run) -> RunRecord:
        """Record a run just admitted."""
        self.prune()
        rec = RunRecord(self._issue("run")[0], workflow, self.now(), run)
        self.records[rec.id] = rec
        return rec

    def add_prompt(self, job: Any, run_ids: list[str]) -> tuple[str, int]:
        """Record a ComfyUI prompt of the runs ``run_ids``; returns its id and number."""
        prompt_id, number = self._issue("prompt")
        self.prompts[prompt_id] = (job, run_ids)
        for r in run_ids:
            self._prompt_of[r] = prompt_id
        return prompt_id, number

    def finish(self, rec: RunRecord, result: RunResult, pngs: list[bytes], spans: list | None = None) -> None:
        rec.end(result, pngs, self.now(), spans)
        if rec.id in self.records:
            self._finished[rec.id] = None
            self.bytes_held += rec.nbytes
        self.prune()

    def get(self, run_id: str) -> RunRecord:
        """The record of ``run_id``; 404 ``run_expired`` once it is pruned, ``unknown_run`` if never issued."""
        self.prune()
        rec = self.records.get(run_id)
        if rec is None:
            if self._was_issued("run", run_id):
                raise _expired("run", run_id, "run_id")
            raise ApiError(404, "unknown_run", f"no run {run_id!r}", "run_id")
        return rec

    def prompt(self, prompt_id: str) -> tuple[Any, list[RunRecord]] | None:
        """A prompt's job and run records; None if never issued; 404 ``run_expired`` once pruned."""
        self.prune()
        if prompt_id not in self.prompts:
            if self._was_issued("prompt", prompt_id):
                raise _expired("prompt", prompt_id, "prompt_id")
            return None
        job, run_ids = self.prompts[prompt_id]
        return job, [self.records[r] for r in run_ids]

    def prune(self) -> None:
        """Drop finished records past the TTL, then the oldest finished beyond the count and byte caps."""
        r, finished = self.retention, self._finished
        expiry = self.now() - r.ttl_s
        while finished and self.records[next(iter(finished))].ended_s <= expiry:
            self._evict(next(iter(finished)), "ttl")
        while finished and len(self.records) > r.max_runs:
            self._evict(next(iter(finished)), "count")
        while finished and self.bytes_held > r.max_run_bytes:
            self._evict(next(iter(finished)), "bytes")

    def _evict(self, run_id: str, reason: str) -> None:
        del self._finished[run_id]
        rec = self.records.pop(run_id)
        self.bytes_held -= rec.nbytes
        self.on_evict("runs", reason)
        prompt_id = self._prompt_of.pop(run_id, None)
        if prompt_id is not None and self.prompts.pop(prompt_id, None) is not None:  # its history is incomplete now
            self.on_evict("prompts", reason)

    def queued_before(self, rec: RunRecord) -> int:
        """Runs admitted before ``rec`` that have not started."""
        return sum(1 for r in self.records.values() if r.created_s < rec.created_s and r.status == "running" and not r.run.started)


class WorkflowStore:
    """The workflows registered while serving (not the built-in ones), least recently registered
    or used first, with when each was first registered; beyond ``max_workflows`` the least
    recent is removed from the engine."""

    def __init__(self, engine, retention: Retention, on_evict: Evicted) -> None:
        self.engine, self.retention, self.on_evict = engine, retention, on_evict
        self.created_s: OrderedDict[str, int] = OrderedDict()

    def register(self, spec, name: str) -> bool:
        """Add ``spec`` to the engine as ``name`` (KeyError for an unknown model); True if new."""
        created = name not in self.engine.workflows
        self.engine.add_workflow(spec, name=name)
        if created:
            self.created_s[name] = int(self.retention.clock())
        self.touch(name)
        while len(self.created_s) > self.retention.max_workflows:
            oldest, _ = self.created_s.popitem(last=False)
            self.engine.workflows.pop(oldest, None)
            self.on_evict("workflows", "count")
        return created

    def touch(self, name: str) -> None:
        if name in self.created_s:
            self.created_s.move_to_end(name)
