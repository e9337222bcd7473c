"""Model adapters: one protocol (VLModel) and its open_clip implementation."""

from silc_eval.models.base import VLModel
from silc_eval.models.loading import load_model, parse_model_spec

__all__ = ["VLModel", "load_model", "parse_model_spec"]
