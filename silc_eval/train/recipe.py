"""Training recipes: YAML files naming the objective, model shape, data and optimiser settings.

Every value of a recipe (and every command-line override of one) is checked for type and
range when the recipe is loaded, before anything is written: a mistake is a one-line
UserError naming the file, the parameter, the value and what was expected, e.g.
`clip.yaml: parameter optim.lr is 'fast'; expected a finite number > 0`.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

from silc_eval.core.errors import UserError
from silc_eval.core.params import Param, choice, custom, defaults, integer, number, string, validate_params
from silc_eval.core.paths import zoo_dir
from silc_eval.core.schema import check_keys, load_yaml_mapping

RECIPE_KEYS = {"name", "description", "objective", "seed", "model", "data", "optim", "eval_suite"}
REQUIRED_KEYS = {"name", "objective", "model", "data", "optim"}


def _betas(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == 2 and \
        all(number(0.0, minimum=0, finite=True).valid(b) and b < 1 for b in value)


OPTIM_PARAMS: dict[str, Param] = {
    "batch_size": integer(128, minimum=1, doc="global batch size, all processes together"),
    "epochs": integer(1, minimum=1, doc="passes over the data when steps is null"),
    "steps": integer(None, minimum=1, nullable=True, doc="optimiser steps (null: epochs x full batches)"),
    "lr": number(1e-3, above=0, finite=True, doc="peak learning rate of the cosine schedule"),
    "weight_decay": number(0.1, minimum=0, finite=True, doc="AdamW weight decay (matrices only)"),
    "warmup_steps": integer(100, minimum=0, doc="linear warmup steps"),
    "grad_clip": number(1.0, minimum=0, finite=True, nullable=True, doc="gradient norm clip (0 or null: off)"),
    "betas": custom([0.9, 0.98], _betas, "a list of two numbers in [0, 1)", doc="AdamW betas"),
    "eps": number(1e-6, above=0, finite=True, doc="AdamW epsilon"),
    "log_every": integer(20, minimum=1, doc="steps between progress lines"),
    "eval_every": integer(0, minimum=0, doc="steps between evaluations on eval_suite (0: off)"),
    "checkpoint_every": integer(100, minimum=0, doc="steps between resumable checkpoints (0: only when stopped)"),
}
DATA_PARAMS: dict[str, Param] = {
    "source": choice("synthscenes", ("synthscenes", "webdataset", "csv"), doc="where the pairs come from"),
    "n_train": integer(30000, minimum=1, doc="SynthScenes training pairs"),
    "shards": string(None, nullable=True, expected="a folder of .tar shards", doc="webdataset shard folder"),
    "csv": string(None, nullable=True, expected="a path to a CSV file", doc="CSV of image paths and captions"),
    "csv_image_column": string("filepath", doc="CSV column of image paths (relative to the CSV's folder)"),
    "csv_caption_column": string("caption", doc="CSV column of captions"),
    "shuffle_buffer": integer(2000, minimum=0, doc="webdataset shuffle buffer (0 or 1: off)"),
}
TOP_PARAMS: dict[str, Param] = {
    "name": string(None, pattern=r"[A-Za-z0-9][A-Za-z0-9._-]*",
                   expected="a name of letters, digits, '.', '_' or '-'", doc="default output folder name"),
    "description": custom("", lambda v: v is None or isinstance(v, str), "a string"),
    "seed": integer(0, minimum=0, doc="seed of the model initialisation, data order and augmentations"),
    "eval_suite": string("quick", nullable=True, expected="a suite name", doc="suite evaluated during and after"),
}
OPTIM_DEFAULTS = defaults(OPTIM_PARAMS)
DATA_DEFAULTS = defaults(DATA_PARAMS)
# The command-line overrides: the recipe value each replaces.
OVERRIDES = {"steps": "optim", "epochs": "optim", "batch_size": "optim", "n_train": "data"}
MODEL_KEYS = {"embed_dim", "vision", "text", "init_logit_scale", "init_logit_bias"}
# Fields the trainer sets itself (the word tokenizer) and the positive sizes every tower needs.
TRAINER_TEXT_FIELDS = {"vocab_size", "hf_tokenizer_name", "tokenizer_mode", "tokenizer_kwargs", "hf_model_name"}
REQUIRED_SIZES = {"vision": ("image_size", "patch_size", "width", "layers"), "text": ("context_length", "width",
                                                                                     "heads", "layers")}


def recipes_dir() -> Path:
    """Return the folder of the named recipes (model_zoo/recipes)."""
    return zoo_dir() / "recipes"


def available_recipes() -> list[str]:
    """Return the names of the recipes shipped in model_zoo/recipes."""
    return sorted(p.stem for p in recipes_dir().glob("*.yaml"))


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _check_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    """Return the overrides that are set, after checking each against its parameter (named as its flag)."""
    given = {}
    for key, value in overrides.items():
        if key not in OVERRIDES:
            raise UserError(f"unknown recipe override '{key}'; allowed: {', '.join(OVERRIDES)}")
        if value is None:
            continue
        param = (OPTIM_PARAMS if OVERRIDES[key] == "optim" else DATA_PARAMS)[key]
        if not param.valid(value):
            raise UserError(f"{_flag(key)} {value!r}: expected {param.expected.removesuffix(' or null')}")
        given[key] = value
    return given


def _matches(value: Any, annotation: Any) -> bool:
    """Return whether a YAML value fits an open_clip config field's annotation (int, float, bool, str, dict,
    tuples as lists, Optional/Union of those)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Union:
        return any(_matches(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if origin in (tuple, typing.Tuple):
        args = typing.get_args(annotation)
        return isinstance(value, list) and len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args))
    if annotation is int:
        return integer(0).valid(value)
    if annotation is float:
        return number(0.0, finite=True).valid(value)
    if annotation in (bool, str, dict):
        return isinstance(value, annotation)
    return True  # an annotation this check does not know: open_clip decides


def _check_model(path: Path, model: Any) -> None:
    """Check a recipe's model section against open_clip's CLIP config: known keys, value types, positive sizes."""
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    if not isinstance(model, dict):
        raise UserError(f"{path}: 'model' must be a mapping with keys {', '.join(sorted(MODEL_KEYS))}")
    check_keys(path, "model", model, ("embed_dim", "vision", "text"), MODEL_KEYS - {"embed_dim", "vision", "text"})
    if not integer(0, minimum=1).valid(model["embed_dim"]):
        raise UserError(f"{path}: parameter model.embed_dim is {model['embed_dim']!r}; expected an integer >= 1")
    for key in ("init_logit_scale", "init_logit_bias"):
        if key in model and not number(0.0, finite=True).valid(model[key]):
            raise UserError(f"{path}: parameter model.{key} is {model[key]!r}; expected a finite number")
    for tower, cfg in (("vision", CLIPVisionCfg), ("text", CLIPTextCfg)):
        section = model[tower]
        fields = {f.name: f.type for f in dataclasses.fields(cfg)}
        allowed = sorted(set(fields) - TRAINER_TEXT_FIELDS) if tower == "text" else sorted(fields)
        if not isinstance(section, dict):
            raise UserError(f"{path}: 'model.{tower}' must be a mapping with keys among {', '.join(allowed)}")
        check_keys(path, f"model.{tower}", section, REQUIRED_SIZES[tower], set(allowed) - set(REQUIRED_SIZES[tower]))
        for key, value in section.items():
            if key in REQUIRED_SIZES[tower]:
                ok, expected = integer(0, minimum=1).valid(value), "an integer >= 1"
            else:
                ok, expected = _matches(value, fields[key]), f"a value of type {_type_name(fields[key])}"
            if not ok:
                raise UserError(f"{path}: parameter model.{tower}.{key} is {value!r}; expected {expected}")


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _check_objective(path: Path, recipe: dict[str, Any]) -> None:
    """Build the recipe's objective once (cheap: no model, no teacher) so its mistakes surface now."""
    from silc_eval.train.factory import build_objective

    section = recipe["objective"]
    if not isinstance(section, (str, dict)):
        raise UserError(f"{path}: 'objective' must be a name or a mapping with a name")
    try:
        build_objective(section, recipe["model"]["vision"]["image_size"], batch_size=recipe["optim"]["batch_size"])
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise UserError(f"{path}: objective: {exc}") from None


def _check_data(path: Path, recipe: dict[str, Any], given: dict[str, Any]) -> None:
    """Check what the data section needs beyond each value's type: its source's path, a full batch."""
    data, optim = recipe["data"], recipe["optim"]
    if data["source"] == "webdataset" and not data["shards"]:
        raise UserError(f"{path}: data.source is webdataset but data.shards (a folder of .tar shards) is not set")
    if data["source"] == "csv" and not data["csv"]:
        raise UserError(f"{path}: data.source is csv but data.csv (a CSV with {data['csv_image_column']},"
                        f"{data['csv_caption_column']}) is not set")
    if "n_train" in given and data["source"] != "synthscenes":
        raise UserError(f"--n-train sets the number of SynthScenes pairs, but {path} reads {data['source']} data")
    if data["source"] == "synthscenes" and optim["batch_size"] > data["n_train"]:
        raise UserError(f"{path}: optim.batch_size {optim['batch_size']} is larger than data.n_train "
                        f"{data['n_train']}, so no batch is ever full; lower it (--batch-size) or raise --n-train")


def _check_eval_suite(path: Path, suite: str | None) -> None:
    if suite is None:
        return
    from silc_eval.registry import resolve_suite

    try:
        resolve_suite(suite)
    except UserError as exc:
        raise UserError(f"{path}: eval_suite: {exc}") from None


def load_recipe(name_or_path: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Return a validated recipe with defaults filled in; overrides (steps, epochs, batch_size, n_train; None:
    keep the recipe's) replace optim/data values. Every value is checked here, before anything is written."""
    given = _check_overrides(overrides or {})
    path = Path(name_or_path)
    if not path.is_file():
        path = recipes_dir() / f"{name_or_path}.yaml"
    if not path.is_file():
        raise UserError(f"unknown recipe '{name_or_path}'; expected a YAML file or one of "
                        f"{', '.join(available_recipes())}")
    recipe = load_yaml_mapping(path)
    check_keys(path, "recipe", recipe, REQUIRED_KEYS, RECIPE_KEYS - REQUIRED_KEYS)
    top = validate_params(TOP_PARAMS, {k: recipe[k] for k in TOP_PARAMS if k in recipe}, str(path))
    recipe.update(top, description=top["description"] or "")
    for section, spec in (("optim", OPTIM_PARAMS), ("data", DATA_PARAMS)):
        if not isinstance(recipe[section], dict):
            raise UserError(f"{path}: '{section}' must be a mapping; expected keys among {', '.join(sorted(spec))}")
        check_keys(path, section, recipe[section], (), spec)
        recipe[section] = validate_params(spec, recipe[section], str(path), prefix=f"{section}.")
    for key, value in given.items():
        recipe[OVERRIDES[key]][key] = value
    _check_model(path, recipe["model"])
    _check_objective(path, recipe)
    _check_data(path, recipe, given)
    _check_eval_suite(path, recipe["eval_suite"])
    recipe["file"] = str(path)
    return recipe
