"""The dashboard's records, without a server: a run's timeline from the engine's dispatch hooks
(on the real control messages), and the bounded latency history."""

from legodiffusion.core.messages import Completion, Dispatch, DispatchItem, ItemResult
from legodiffusion.server.history import History
from legodiffusion.server.timeline import Timeline, chain


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def dispatch(did: int, worker: int, op: str, *requests: int) -> Dispatch:
    items = [DispatchItem(rid, n, f"{op}.{n}", {}, {}, {}) for n, rid in enumerate(requests)]
    return Dispatch(did, worker, op, "model", "sd15", "denoiser", items)


def completion(d: Dispatch, ran_s: float, error: str | None = None) -> Completion:
    return Completion(d.id, d.worker, [ItemResult(error=error) for _ in d.items], 5000.0, 5000.0 + ran_s)  # another clock


def test_spans_are_placed_on_the_servers_clock_and_shared_by_batch():
    clock = Clock()
    t = Timeline(clock=clock)
    t.open(1)
    clock.now = 100.5
    t.open(2)
    d = dispatch(7, 1, "sampler_step", 1, 1, 2)  # two nodes of run 1, one of run 2
    t.sent(d)
    clock.now = 102.0
    t.done(d, completion(d, 0.9))
    (a,) = t.spans(1)
    assert (a.worker, a.op, a.batch, a.nodes, a.requests, a.ok) == (1, "sampler_step", 3, 2, (1, 2), True)
    assert (a.sent_s, round(a.start_s, 6), a.end_s) == (0.5, 1.1, 2.0)  # ended when seen, lasted what the worker measured
    assert round(a.work_s, 6) == 0.6  # 2 of its 3 nodes
    (b,) = t.close(2)
    assert (b.sent_s, round(b.start_s, 6), b.end_s, b.nodes) == (0.0, 0.6, 1.5, 1)
    assert t.spans(2) == [] and t.close(2) == []


def test_a_closed_run_keeps_no_later_dispatch_and_each_run_is_bounded():
    clock = Clock()
    t = Timeline(max_spans_per_run=3, clock=clock)
    t.open(1)
    for i in range(5):
        d = dispatch(i, 0, "denoise", 1)
        t.sent(d)
        clock.now += 0.1
        t.done(d, completion(d, 0.05, error="boom" if i == 1 else None))
    spans = t.close(1)
    assert len(spans) == 3 and [s.ok for s in spans] == [True, False, True]
    late = dispatch(9, 0, "denoise", 1)  # e.g. an orphan of a cancelled run reporting after its end
    t.sent(late)
    t.done(late, completion(late, 0.01))
    assert t.spans(1) == [] and t._sent == {}


def test_sent_times_of_dispatches_that_never_report_are_bounded():
    t = Timeline()
    for i in range(t._max_sent + 10):
        t.sent(dispatch(i, 0, "denoise", 1))
    assert len(t._sent) == t._max_sent and next(iter(t._sent)) == 10


def test_chain_calls_every_hook_in_order():
    seen = []
    hook = chain(lambda *a: seen.append(("first", a)), None, lambda *a: seen.append(("second", a)))
    hook(1, 2)
    assert seen == [("first", (1, 2)), ("second", (1, 2))]


def test_history_is_bounded_and_summarises_latency_and_attainment():
    h = History(max_points=3, max_workflows=2)
    h.add("a", "succeeded", 1.0, 2.0, 10.0)
    h.add("a", "succeeded", 3.0, 2.0, 11.0)  # missed its deadline
    h.add("a", "failed", 0.1, None, 12.0)
    h.add("a", "succeeded", 2.0, None, 13.0)  # pushes out the first
    out = h.workflows_json()["a"]
    assert [p["t_s"] for p in out["points"]] == [11.0, 12.0, 13.0]
    assert (out["runs"], out["succeeded"], out["slo_runs"], out["slo_attainment"]) == (3, 2, 1, 0.0)
    assert (out["p50_s"], out["p95_s"]) == (3.0, 3.0)
    h.add("b", "succeeded", 1.0, 5.0, 14.0)
    h.add("c", "cancelled", 0.2, None, 15.0)
    assert list(h.workflows_json()) == ["b", "c"]  # the least recently finished went
