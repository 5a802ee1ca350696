"""GDN, causal-conv and paged K/V kernels: Triton on CUDA, PyTorch on CPU, one reference per op.

Installed as `hf_hybrid_cache.kernels`; nothing here imports transformers.
"""
