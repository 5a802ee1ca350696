"""`hf_hybrid_cache.lm_eval.HybridHFLM`, lm-eval's model `hf-hybrid-cache` (registered on import): forwards to
`hf_hybrid_cache.integrations.lm_eval` (see there). Needs lm-eval installed."""

from .integrations.lm_eval import HybridHFLM

__all__ = ["HybridHFLM"]
