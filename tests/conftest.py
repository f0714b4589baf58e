import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# OpenMP threads that spin while they wait stalled compiled (inductor) calls for ~2 s each on a
# busy 2-core machine; sleeping waiters do not (tests/runtime/test_compile.py)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import pytest  # noqa: E402

from legodiffusion.models.tiny import write_tiny_models  # noqa: E402


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Tiny random-weight model folders, written once per test session."""
    return write_tiny_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def sd15(tiny_models):
    return tiny_models["sd15"]


@pytest.fixture(scope="session")
def ray_cluster():
    """One two-node Ray cluster on this machine for the whole test run (Ray's cluster_utils: two
    raylets, each a node with its own resources), for tests/ray and the Ray chaos tests."""
    import ray
    from ray.cluster_utils import Cluster

    os.makedirs("/tmp/ray", exist_ok=True)  # cluster_utils records the address there
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "resources": {"node_a": 1}, "include_dashboard": False, "temp_dir": "/tmp/ldray"},
    )
    cluster.add_node(num_cpus=1, resources={"node_b": 1})
    ray.init(address=cluster.address, namespace="legodiffusion")
    yield cluster
    ray.shutdown()
    cluster.shutdown()
