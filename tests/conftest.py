"""Suite-wide fixtures."""

import os

import numpy as np
import pytest

from sparrow.sim.cocotb_run import default_seed


@pytest.fixture(autouse=True, scope="session")
def _compile_cache(tmp_path_factory):
    """Compiles in tests use a fresh cache directory, never the user's ~/.cache/sparrow."""
    if "SPARROW_CACHE_DIR" not in os.environ:
        os.environ["SPARROW_CACHE_DIR"] = str(tmp_path_factory.mktemp("compile-cache"))
    yield


@pytest.fixture
def rng(request):
    """A NumPy generator seeded per test (``default_seed("<module>:<test>")``; ``SPARROW_SEED``
    overrides, ``SPARROW_RANDOM_SEEDS=1`` draws fresh ones); the seed is printed."""
    module = request.module.__name__.rsplit(".", 1)[-1]
    seed = default_seed(f"{module}:{request.node.name}")
    print(f"SPARROW_SEED={seed} ({request.node.name})")
    return np.random.default_rng(seed)
