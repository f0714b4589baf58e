import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# OpenMP threads that spin while they wait stalled compiled (inductor) calls for ~2 s each on a
# busy 2-core machine; sleeping waiters do not (tests/runtime/test_compile.py)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402

from legodiffusion.models.tiny import write_tiny_models  # noqa: E402


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Tiny random-weight model folders, written once per test session."""
    return write_tiny_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def sd15(tiny_models):
    return tiny_models["sd15"]
