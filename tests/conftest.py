"""Shared fixtures: tiny Qwen3-Next models (fixed seed), and a fresh process-wide store for every test."""

import os

# Before anything imports triton (torch._dynamo probes for it): `import triton` builds its language
# library in the mode set at that moment, and the kernel tests run it in the interpreter, CPU only.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import hf_hybrid_cache as hhc  # noqa: E402
from hf_hybrid_cache.tiny import tiny_qwen3_next  # noqa: E402


@pytest.fixture(scope="session")
def cold_model():
    """Unpatched: transformers' own code path."""
    return tiny_qwen3_next(seed=0)


@pytest.fixture(scope="session")
def model():
    """The same weights, patched."""
    return hhc.patch(tiny_qwen3_next(seed=0))


@pytest.fixture(autouse=True)
def fresh_default_store():
    hhc.set_default_store(None)
    yield
    hhc.set_default_store(None)


@pytest.fixture
def redis_server():
    """A real redis-server on a free loopback port, stopped whatever happens (`redis_support.py`)."""
    from redis_support import redis_server_or_skip

    server = redis_server_or_skip()
    try:
        yield server
    finally:
        server.stop()
