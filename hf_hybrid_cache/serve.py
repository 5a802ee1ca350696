"""`python -m hf_hybrid_cache.serve`: forwards to `hf_hybrid_cache.integrations.serve` (see there)."""

import sys

from .integrations.serve import install, main

__all__ = ["install", "main"]

if __name__ == "__main__":
    main(sys.argv[1:])
