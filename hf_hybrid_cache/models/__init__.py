"""Model adapters: the one-pass GatedDeltaNet core and one small adapter per family (`registry.py` maps
transformers' mixer classes to them, imported lazily), and how a request's prompt is keyed (`keying.py`,
images and videos in `vision.py`)."""
