"""Where each request's nodes ran: one :class:`Span` per dispatch (worker, operator, when it was
sent, started and ended, the requests batched in it), gathered from the engine's dispatch hooks
while a run is open and handed to its record when it ends, so a run's timeline is kept exactly as
long as its record (:class:`~legodiffusion.server.store.Retention`)."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Span:
    """One dispatch, in seconds since its run was admitted (the server's clock): sent to its
    worker at ``sent_s``, ran from ``start_s`` to ``end_s``."""

    worker: int
    op: str
    model: str | None
    sent_s: float
    start_s: float
    end_s: float
    batch: int  # nodes in the dispatch (of this and other requests)
    requests: tuple[int, ...]  # engine request ids batched together
    ok: bool
    nodes: int = 1  # of these, the run's own

    @property
    def work_s(self) -> float:
        """Worker-seconds this run used of the dispatch: its share of the nodes."""
        return (self.end_s - self.start_s) * self.nodes / self.batch

    def to_json(self) -> dict:
        return {
            "worker": self.worker,
            "op": self.op,
            "model": self.model,
            "sent_s": round(self.sent_s, 6),
            "start_s": round(self.start_s, 6),
            "end_s": round(self.end_s, 6),
            "batch": self.batch,
            "requests": list(self.requests),
            "ok": self.ok,
            "nodes": self.nodes,
            "work_s": round(self.work_s, 6),
        }


@dataclass
class _Open:
    admitted: float  # the server's clock
    spans: list[Span] = field(default_factory=list)


class Timeline:
    """The spans of the runs in flight. :meth:`sent` and :meth:`done` are the engine's dispatch
    hooks; :meth:`open` starts a run's timeline as it is admitted, :meth:`close` hands it over
    as the run ends (later dispatches of that request, e.g. orphans of a cancel, are not kept).

    A span is placed on the server's clock: it ends when the completion was seen and lasted what
    the worker measured, so workers on other machines (other clocks) line up too."""

    def __init__(self, max_spans_per_run: int = 2000, clock: Callable[[], float] = time.perf_counter) -> None:
        self.max_spans_per_run, self.clock = max_spans_per_run, clock
        self._open: dict[int, _Open] = {}
        self._sent: OrderedDict[int, float] = OrderedDict()  # dispatch id -> when sent
        self._max_sent = 4096  # far above the dispatches a pool holds at once; a lost worker's never report

    def open(self, request_id: int) -> None:
        self._open[request_id] = _Open(self.clock())

    def close(self, request_id: int) -> list[Span]:
        run = self._open.pop(request_id, None)
        return run.spans if run is not None else []

    def spans(self, request_id: int) -> list[Span]:
        """The spans so far of a run in flight."""
        run = self._open.get(request_id)
        return list(run.spans) if run is not None else []

    def sent(self, d) -> None:
        self._sent[d.id] = self.clock()
        while len(self._sent) > self._max_sent:
            self._sent.popitem(last=False)

    def done(self, d, c) -> None:
        seen = self.clock()
        sent = self._sent.pop(d.id, seen)
        start = max(sent, seen - max(0.0, c.end_s - c.start_s))
        ok = all(r.error is None for r in c.results)
        nodes: dict[int, int] = {}
        for it in d.items:
            nodes[it.request_id] = nodes.get(it.request_id, 0) + 1
        requests = tuple(sorted(nodes))
        for rid, n in nodes.items():
            run = self._open.get(rid)
            if run is None or len(run.spans) >= self.max_spans_per_run:
                continue
            t0, batch = run.admitted, len(d.items)
            run.spans.append(Span(d.worker, d.op, d.model, max(0.0, sent - t0), max(0.0, start - t0), seen - t0, batch, requests, ok, n))


def chain(*hooks: Callable | None) -> Callable:
    """One hook that calls each of ``hooks`` in turn (the engine takes one per event)."""
    live = [h for h in hooks if h is not None]

    def call(*args) -> None:
        for h in live:
            h(*args)

    return call
