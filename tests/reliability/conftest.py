"""Fixtures of the reliability tests (the tiny `model` and `cold_model` come from tests/conftest.py)."""

import pytest
import torch

import hf_hybrid_cache as hhc
from hf_hybrid_cache.tiny import tiny_qwen3_next


@pytest.fixture(scope="session")
def other_model():
    """Same architecture, other weights (seed 1), patched."""
    return hhc.patch(tiny_qwen3_next(seed=1))


@pytest.fixture(autouse=True, scope="module")
def one_intra_op_thread():
    """The tiny model's ops gain nothing from intra-op threads; on a busy 2-core machine those threads
    spin against each other and make each request about 10x slower. Restored after each module."""
    num_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(num_threads)
