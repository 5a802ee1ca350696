"""Shared fixtures: every test starts with a fresh process-wide store."""

import pytest

import hf_hybrid_cache as hhc


@pytest.fixture(autouse=True)
def fresh_default_store():
    hhc.set_default_store(None)
    yield
    hhc.set_default_store(None)
