"""Gradio chat demo of hf_hybrid_cache: a UI over the library's public API only (not installed with it).

Launch with `python demo/app.py`; `loader` builds the model, `engine` runs generate and measures it,
`ui` lays out the page.
"""
