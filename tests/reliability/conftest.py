"""The tiny models of tests/models, shared with the reliability tests (see `reliability_support.py`)."""

import pytest

import hf_hybrid_cache as hhc
from hf_hybrid_cache.tiny import tiny_qwen3_next
from reliability_support import models_conftest

model = models_conftest.model
cold_model = models_conftest.cold_model


@pytest.fixture(scope="session")
def other_model():
    """Same architecture, other weights (seed 1), patched."""
    return hhc.patch(tiny_qwen3_next(seed=1))
