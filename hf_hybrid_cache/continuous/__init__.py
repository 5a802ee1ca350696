"""transformers' continuous batching (`generate_batch`, `init_continuous_batching`, `transformers serve
--continuous-batching`) on hybrid models patched by `hhc.patch`: the recurrent layers' states in slots beside
transformers' paged K/V, and prefix caching through its block sharing plus state snapshots at block
boundaries. `engine.py` names the seams into transformers."""
