"""Prefix caching for hybrid linear-attention models (Qwen3-Next) in Hugging Face transformers."""
