"""Suite-wide fixtures."""

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _compile_cache(tmp_path_factory):
    """Compiles in tests use a fresh cache directory, never the user's ~/.cache/sparrow."""
    if "SPARROW_CACHE_DIR" not in os.environ:
        os.environ["SPARROW_CACHE_DIR"] = str(tmp_path_factory.mktemp("compile-cache"))
    yield
