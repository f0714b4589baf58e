"""The coordinator as a pure state machine, driven by hand with a model-free operator."""

from legodiffusion.core.coordinator import INVARIANT
from legodiffusion.core.messages import Completion, ItemResult, TensorRef
from legodiffusion.ops import default_registry
from legodiffusion.workflow.builder import WorkflowBuilder
from legodiffusion.workflow.expand import Expander, bind_inputs
from tests.core.harness import Harness
from tests.core.test_scheduling_decisions import sd_maker


def chain_template(steps=3, fail_at=-1):
    """x -> loop(steps){ a, b (independent), join } -> out, all noop."""
    wf = WorkflowBuilder("chain")
    n = wf.input("steps", "int", default=steps)
    fail = wf.input("fail", "int", default=0)
    src = wf.call("noop", value=1, id="src")

    def body(c):
        a = wf.call("noop", x=c.v, id="a")
        b = wf.call("noop", x=c.v, fail=fail, id="b")
        j = wf.call("noop", x=a.y, id="join")
        return {"v": j.y, "side": b.y}

    loop = wf.loop(n, {"v": src.y, "side": src.y}, body, id="loop")
    out = wf.call("noop", x=loop.v, id="out")
    wf.output("y", out.y)
    ex = Expander(wf.build(), default_registry())
    return lambda **inputs: (ex.template(bind_inputs(ex.spec, inputs)), bind_inputs(ex.spec, inputs))


def test_all_requests_finish_and_every_tensor_is_freed_exactly_once():
    make = chain_template()
    h = Harness()
    for rid in range(5):
        h.submit(rid, make, steps=3 + rid)
    h.drain()
    assert {o.status for o in h.finished.values()} == {"succeeded"}
    assert sorted(h.freed) == sorted(h.made)
    assert h.coord.requests == {} and h.coord.inflight == {}


def test_decisions_are_deterministic():
    make = chain_template()
    logs = []
    for _ in range(2):
        h = Harness()
        for rid in range(4):
            h.submit(rid, make, steps=2 + rid % 2)
        h.drain()
        logs.append(h.log)
    assert logs[0] == logs[1] and logs[0]


def test_ready_nodes_of_one_class_batch_across_requests():
    make = chain_template()
    h = Harness(workers=1, slots_per_worker=1)  # one busy worker: throughput-mode batches
    for rid in range(4):
        h.submit(rid, make, steps=2)
    h.drain()
    assert any(len(items) > 1 for _, _, items in h.log)


def test_failure_fails_only_that_request_with_node_and_reason():
    make = chain_template()
    h = Harness()
    h.submit(1, make, steps=3)
    h.submit(2, make, steps=3, fail=1)
    h.submit(3, make, steps=3)
    h.drain()
    assert h.finished[2].status == "failed"
    assert h.finished[2].node == "loop[0].b" and h.finished[2].error == "boom"
    assert h.finished[1].status == h.finished[3].status == "succeeded"
    assert sorted(h.freed) == sorted(h.made)


def test_cancel_frees_everything_and_later_completions_are_dropped():
    make = chain_template()
    h = Harness()
    h.submit(1, make, steps=4)
    d = h.pending.pop(0)  # run one dispatch, then cancel while nothing else ran
    outs = {p: TensorRef(tid, d.worker, 8) for p, tid in d.items[0].output_ids.items()}
    h.made.update(r.id for r in outs.values())
    h.apply(h.coord.on_complete(Completion(d.id, d.worker, [ItemResult(outs)]), 0.0))
    h.apply(h.coord.cancel(1, 0.0))
    h.drain()
    assert h.finished[1].status == "cancelled"
    assert sorted(h.freed) == sorted(h.made)


def test_a_worker_never_holds_more_heavy_dispatches_than_its_slots():
    make = chain_template()
    h = Harness(workers=2, slots_per_worker=1, default_throughput_batch=1)
    for rid in range(6):
        h.submit(rid, make, steps=2)
    heavy = [d for d in h.pending if not d.light]
    per_worker = {w: sum(1 for d in heavy if d.worker == w) for w in (0, 1)}
    assert max(per_worker.values()) <= 1


def test_a_broken_invariant_fails_its_request_with_the_reason_and_the_rest_go_on():
    """A completion that does not match its dispatch (here: no results for its items) fails the
    requests in it with the reason, rather than raising into the driver or leaving them waiting;
    other requests finish."""
    h = Harness(workers=2, policy="default")
    make = sd_maker()
    h.submit(1, make, steps=2)
    d = h.pending.pop(0)
    h.apply(h.coord.on_complete(Completion(d.id, d.worker, []), 0.0))
    h.submit(2, make, steps=2)
    h.drain()
    assert h.finished[1].status == "failed" and h.finished[1].error.startswith(INVARIANT)
    assert "reported 0 results" in h.finished[1].error
    assert h.finished[2].status == "succeeded"
    assert h.coord.stats.violations == 1 and not h.coord.requests
