"""Seams into code we do not own: auto mode (generate without a cache), `transformers serve`, and the notebook
display."""
