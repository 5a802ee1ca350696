"""The tiny models of tests/models, shared with the reliability tests (see `reliability_support.py`).

Everything public in tests/models/conftest.py is re-exported here, fixtures included: test modules there
do `from conftest import ...`, and when pytest is given both folders this module may be the `conftest`
they see.
"""

import pytest

import hf_hybrid_cache as hhc
from hf_hybrid_cache.tiny import tiny_qwen3_next
from reliability_support import models_conftest

globals().update({name: value for name, value in vars(models_conftest).items() if not name.startswith("_")})


@pytest.fixture(scope="session")
def other_model():
    """Same architecture, other weights (seed 1), patched."""
    return hhc.patch(tiny_qwen3_next(seed=1))
