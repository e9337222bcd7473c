"""Training recipes: YAML files naming the objective, model shape, data and optimiser settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from silc_eval.core.errors import UserError
from silc_eval.core.paths import zoo_dir
from silc_eval.core.schema import check_keys, load_yaml_mapping

RECIPE_KEYS = {"name", "description", "objective", "seed", "model", "data", "optim", "eval_suite"}
REQUIRED_KEYS = {"name", "objective", "model", "data", "optim"}
OPTIM_DEFAULTS = {"batch_size": 128, "epochs": 1, "steps": None, "lr": 1e-3, "weight_decay": 0.1,
                  "warmup_steps": 100, "grad_clip": 1.0, "betas": [0.9, 0.98], "eps": 1e-6, "log_every": 20,
                  "eval_every": 0, "checkpoint_every": 100}
DATA_DEFAULTS = {"source": "synthscenes", "n_train": 30000, "shards": None, "csv": None,
                 "csv_image_column": "filepath", "csv_caption_column": "caption", "shuffle_buffer": 2000}


def recipes_dir() -> Path:
    """Return the folder of the named recipes (model_zoo/recipes)."""
    return zoo_dir() / "recipes"


def available_recipes() -> list[str]:
    """Return the names of the recipes shipped in model_zoo/recipes."""
    return sorted(p.stem for p in recipes_dir().glob("*.yaml"))


def load_recipe(name_or_path: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Return a validated recipe with defaults filled in; overrides replace optim/data values."""
    path = Path(name_or_path)
    if not path.is_file():
        path = recipes_dir() / f"{name_or_path}.yaml"
    if not path.is_file():
        raise UserError(f"unknown recipe '{name_or_path}'; expected a YAML file or one of "
                        f"{', '.join(available_recipes())}")
    recipe = load_yaml_mapping(path)
    check_keys(path, "recipe", recipe, REQUIRED_KEYS, RECIPE_KEYS - REQUIRED_KEYS)
    for section, defaults in (("optim", OPTIM_DEFAULTS), ("data", DATA_DEFAULTS)):
        if not isinstance(recipe[section], dict):
            raise UserError(f"{path}: '{section}' must be a mapping; expected keys among {', '.join(sorted(defaults))}")
        check_keys(path, section, recipe[section], (), defaults)
        recipe[section] = {**defaults, **recipe[section]}
    for key, value in (overrides or {}).items():
        section = "optim" if key in OPTIM_DEFAULTS else "data"
        if value is not None:
            recipe[section][key] = value
    recipe.setdefault("seed", 0)
    recipe.setdefault("eval_suite", "quick")
    recipe["file"] = str(path)
    return recipe
