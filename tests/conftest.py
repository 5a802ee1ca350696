"""Shared fixtures: every test starts with a fresh process-wide store."""

import os

# Before anything imports triton (torch._dynamo probes for it): `import triton` builds its language
# library in the mode set at that moment, and the kernel tests run it in the interpreter, CPU only.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import hf_hybrid_cache as hhc  # noqa: E402


@pytest.fixture(autouse=True)
def fresh_default_store():
    hhc.set_default_store(None)
    yield
    hhc.set_default_store(None)
