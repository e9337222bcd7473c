"""silc-eval: zero-shot evaluation and training harness for CLIP-style models."""

__version__ = "0.1.0"
