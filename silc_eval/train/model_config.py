"""open_clip model configs for recipes, and the local-dir checkpoint format."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"


def open_clip_config(model: dict[str, Any], vocab_size: int | None, mean, std) -> dict[str, Any]:
    """Return an open_clip local-dir config (model_cfg + preprocess_cfg) from a recipe's model section."""
    text_cfg = dict(model["text"])
    if vocab_size is not None:
        text_cfg.update(vocab_size=vocab_size, hf_tokenizer_name="local-dir")
    return {
        "model_cfg": {"embed_dim": model["embed_dim"], "vision_cfg": dict(model["vision"]), "text_cfg": text_cfg,
                      **{k: model[k] for k in ("init_logit_scale", "init_logit_bias") if k in model}},
        "preprocess_cfg": {"mean": list(mean), "std": list(std), "interpolation": "bicubic", "resize_mode": "shortest"},
    }


def create_model(config: dict[str, Any]) -> torch.nn.Module:
    """Return a freshly initialised open_clip CLIP model for a local-dir config."""
    from open_clip.model import CLIP

    return CLIP(**config["model_cfg"])


def save_local_dir(model: torch.nn.Module, config: dict[str, Any], folder: Path) -> Path:
    """Write the config JSON and fp32 safetensors weights into folder; returns the weights path."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE))
    return folder / WEIGHTS_FILE
