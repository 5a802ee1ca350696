"""Gated delta rule (GDN, KDA), Mamba2 (SSD), Mamba selective-scan and causal-conv kernels: Triton on CUDA,
PyTorch on CPU, one reference per op.

Installed as `hf_hybrid_cache.kernels` (pyproject's `package-dir`); nothing here imports transformers.

The top-level name `kernels` belongs to Hugging Face's kernel hub package, which transformers imports. Whenever
the checkout root is on `sys.path` (`python` started there, a script that puts it there), this folder is found
first under that name: it then steps aside and hands the name to that package, found on the rest of `sys.path`.
"""

if __name__ != "hf_hybrid_cache.kernels":
    import importlib.machinery
    import importlib.util
    import os
    import sys

    _checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    _rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != _checkout]
    _spec = importlib.machinery.PathFinder.find_spec(__name__, _rest)
    if _spec is None or _spec.loader is None or _spec.origin is None:
        # Not installed: stay an empty module without a file, which is what transformers' availability checks
        # take for a namespace folder on sys.path, not an installed package.
        __file__, __path__ = None, []
    else:
        _module = importlib.util.module_from_spec(_spec)
        # The import system returns what sys.modules holds under the name once this file has run.
        sys.modules[__name__] = _module
        _spec.loader.exec_module(_module)
else:
    from .dispatch import (
        causal_conv1d,
        causal_conv1d_update,
        causal_conv1d_varlen,
        chunk_gated_delta_rule,
        chunk_ssd,
        gated_delta_rule_varlen,
        recurrent_gated_delta_rule,
        recurrent_selective_scan,
        recurrent_ssd,
        selective_scan,
        selective_scan_varlen,
        ssd_varlen,
    )

    from .dispatch import __all__  # noqa: F401 - the public ops, listed once in dispatch.py
