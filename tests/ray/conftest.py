"""One two-node Ray cluster on this machine for the whole test run (Ray's cluster_utils: two
raylets, each a node with its own resources)."""

import os

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import ray  # noqa: E402


@pytest.fixture(scope="session")
def ray_cluster():
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
