"""The costs the simulator charges, each against the figure in the reference profile file."""

import pytest

from legodiffusion.core.coordinator import Coordinator
from legodiffusion.core.messages import PENDING, Dispatch, DispatchItem, TensorRef
from legodiffusion.core.policy import make_policy
from legodiffusion.core.residency import LRUBudget
from legodiffusion.sim.cluster import Simulator, SimWorker
from legodiffusion.sim.reference import PX_1024, ReferenceCost

GB = 10**9


def sim(workers=16, **kw):
    cost = ReferenceCost()
    return Simulator(Coordinator(workers, make_policy("default"), cost=cost), cost, budget_bytes=cost.memory_bytes, **kw), cost


def dispatch(worker, op="denoise", model="flux-dev", component="denoiser", refs=None, did=1):
    item = DispatchItem(1, 0, "n", refs or {}, {}, {"noise": 100 + did})
    return Dispatch(did, worker, op, "default", model, component, [item])


def test_a_load_from_disk_costs_more_than_one_from_host_memory():
    s, cost = sim()
    first, loaded, _ = s._load(s.workers[0], dispatch(0), PX_1024)
    again, _, _ = s._load(s.workers[1], dispatch(1), PX_1024)  # same node: the host copy is there
    other_node, _, _ = s._load(s.workers[8], dispatch(8), PX_1024)  # another node reads its disk
    disk = cost.disk_load_s("flux-dev", "denoiser")
    assert loaded == [("flux-dev", "denoiser", None)]
    assert again == pytest.approx(cost.load_s("flux-dev", "denoiser"))
    assert first == pytest.approx(again + disk) and other_node == pytest.approx(first)
    # FLUX.1-dev's transformer: 11,901,408,320 parameters in bf16, at the file's 2 GB/s disk bandwidth
    assert disk == pytest.approx(23_802_816_640 / 2e9), "the transformer's bytes at the file's disk bandwidth"
    assert s.disk_loads == 2


def test_host_memory_is_an_lru_under_its_budget():
    s, cost = sim(host_bytes=int(30 * GB))
    s._load(s.workers[0], dispatch(0), PX_1024)  # 23.8 GB
    s._load(s.workers[1], dispatch(1, model="sd3.5-large"), PX_1024)  # 16.3 GB: the Flux host copy goes
    t, _, _ = s._load(s.workers[2], dispatch(2), PX_1024)
    assert t == pytest.approx(cost.load_s("flux-dev", "denoiser") + cost.disk_load_s("flux-dev", "denoiser"))


def test_a_controlnet_residual_set_across_nodes_costs_its_bytes_over_the_network():
    s, cost = sim()
    nbytes = cost.tensor_bytes("residual", "cn-flux-canny", PX_1024)
    assert nbytes == 15 * (PX_1024 // 256) * 3072 * 2, "15 blocks x 4096 image tokens x 3072 in bf16"
    ref = {"residual": TensorRef(7, 3, nbytes)}
    same_node, _ = s._transfers(dispatch(0, refs=ref))
    ref_far = {"residual": TensorRef(7, 9, nbytes)}
    cross, _ = s._transfers(dispatch(0, refs=ref_far))
    assert same_node == pytest.approx(cost.same_node.fixed_s + nbytes / cost.same_node.bytes_per_s)
    assert cross == pytest.approx(cost.cross_node.fixed_s + nbytes / cost.cross_node.bytes_per_s)
    assert cross > 3 * same_node
    # a deferred residual arrives over the link after its producer finishes
    s._ready_at[7], s._bytes[7] = 5.0, nbytes
    _, arrivals = s._transfers(dispatch(0, refs={"residual": TensorRef(7, PENDING, 0, source=9)}))
    assert arrivals == [pytest.approx(5.0 + cross)]


def test_activation_memory_can_force_an_eviction():
    w = SimWorker(0, budget_bytes=30 * GB)
    w.admit(("a", "denoiser", None), 20 * GB)
    assert w.admit(("b", "vae", None), 5 * GB, activation_bytes=3 * GB) == (True, [])
    loaded, evicted = w.admit(("c", "vae", None), 1 * GB, activation_bytes=6 * GB)
    assert loaded and evicted == [("a", "denoiser", None)], "weights + activations over budget: the LRU one goes"
    with pytest.raises(MemoryError):
        w.admit(("d", "denoiser", None), 25 * GB, activation_bytes=6 * GB)


def test_a_model_in_use_is_not_evicted():
    lru = LRUBudget(10)
    lru.admit("old-in-use", 4)
    lru.admit("newer", 4)
    loaded, evicted = lru.admit("new", 4, in_use={"old-in-use"})
    assert loaded and evicted == ["newer"], "the least recently used key not in use"
    with pytest.raises(MemoryError):
        lru.admit("big", 8, in_use={"old-in-use"})
    assert "old-in-use" in lru and "new" in lru, "a refused admission evicts nothing"


def test_eviction_frees_what_is_needed_and_no_more():
    lru = LRUBudget(10)
    lru.admit("config", 0)  # the oldest, and no bytes: evicting it frees nothing
    lru.admit("vae", 1)
    lru.admit("denoiser", 6)
    lru.admit("encoder", 3)
    loaded, evicted = lru.admit("other", 5)
    assert loaded and evicted == ["denoiser"], "the oldest large enough; the small VAE before it stays"
    assert "config" in lru and "vae" in lru and lru.used_bytes == 9


def test_batch_latency_comes_from_the_file_curves_and_resolution_from_tokens():
    cost = ReferenceCost()
    b1 = cost.exec_s("denoise", "default", "flux-dev", 1, PX_1024)
    assert cost.exec_s("denoise", "default", "flux-dev", 4, PX_1024) == pytest.approx(4 * b1), "the file's linear curve"
    small = cost.exec_s("denoise", "default", "flux-dev", 1, 512 * 512)
    assert small == pytest.approx(b1 * (1024 + 512) / (4096 + 512)), "image + text tokens"
    assert cost.activation_bytes("denoise", "default", "flux-dev", 2, PX_1024) == int(2 * 2.5 * GB)
    assert cost.dispatch_overhead_s > 0 and cost.gpus_per_node == 8
