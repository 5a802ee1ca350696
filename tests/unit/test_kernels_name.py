"""Our top-level `kernels/` folder never stands in for Hugging Face's `kernels` package, which transformers
imports: Python started in the checkout root (the root first on sys.path) imports transformers' models, our
kernels under `hf_hybrid_cache.kernels`, and the entry points."""

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_in_root(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_transformers_and_our_kernels_import_from_the_checkout_root():
    code = (
        "import sys, transformers.activations, hf_hybrid_cache, kernels\n"
        "from transformers.models.qwen3_next import modeling_qwen3_next\n"
        "from hf_hybrid_cache.kernels import causal_conv1d\n"
        "assert sys.path[0] == '', sys.path[0]\n"
        # Hugging Face's package where it is installed; without it, an empty module transformers takes for absent.
        "assert kernels.__file__ is None or 'site-packages' in kernels.__file__, kernels.__file__\n"
        "print(kernels.__file__)"
    )
    result = run_in_root("-c", code)
    assert result.returncode == 0, result.stderr


def test_hugging_face_kernels_is_the_one_transformers_uses_when_installed():
    try:
        importlib.metadata.version("kernels")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("Hugging Face's kernels is installed with transformers 5.25 and later")
    result = run_in_root("-c", "import kernels; from kernels import CUDAProperties; print(kernels.__file__)")
    assert result.returncode == 0 and "site-packages" in result.stdout, result.stderr


@pytest.mark.parametrize("entry_point", [["-m", "hf_hybrid_cache.serve", "--help"], ["demo/app.py", "--help"]])
def test_entry_points_start_from_the_checkout_root(entry_point):
    result = run_in_root(*entry_point)
    assert result.returncode == 0, result.stderr
    assert "usage" in result.stdout.lower()
