"""A training study declared as data: recipes x budgets (images seen) x seeds, trained, evaluated, reported.

The study file (YAML):

    name: zoo-recipes
    description: ...
    suite: all                       # or benchmarks: [name, ...]
    compare: [[silc, clip]]          # recipe pairs whose paired differences the report gives (optional)
    seeds: [0, 1, 2]
    budgets: [5120, 10240]           # images seen; steps = ceil(images / the recipe's batch size)
    set: {data: {n_train: 10240}}    # merged into every recipe (optional)
    recipes:
      clip: {recipe: clip}
      silc-horizon: {recipe: silc, set: {objective: {distill: {ema_horizon_images: 2048}}}}
      siglip: {recipe: siglip, budgets: [5120, 10240, 17920]}   # a recipe's own budgets (e.g. to match FLOPs)
    synthscenes_seed: 1              # evaluate on a validation world (optional; tuning never sees seed 0's scenes)
    select: {baseline: silc, exclude: [clip]}   # the selection rule, declared before the runs (optional): the
                                     # candidate with the highest mean over the main metrics replaces the baseline
                                     # only when the paired interval of that difference lies above 0

Every run (recipe label x budget x seed) gets a recipe file written under OUTPUT/recipes (the
named recipe with the study's and the run's `set` merged in, its seed and steps, no evaluation
during training), a model under OUTPUT/models/<label>-<budget>-s<seed>, and its records under
OUTPUT/results. The command resumes: a model whose card exists and was trained from the run's recipe
as it reads now is not trained again (one whose recipe changed is trained afresh; an interrupted
one resumes from its own checkpoint), and the evaluation keeps every record whose
inputs are unchanged. Runs go seed by seed (every recipe and budget of the first seed, then the
next), and each seed's round ends with the evaluation and the report, so a study cut short
already compares every recipe. OUTPUT/study.json maps each model to its label, budget and seed; the
report (report/study_report.py) reads only that file, the records and the cards.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from silc_eval.core.errors import UserError
from silc_eval.core.io import atomic_write_text
from silc_eval.core.log import log
from silc_eval.core.schema import check_keys, load_yaml_mapping
from silc_eval.models.zoo import CARD_FILE, read_card
from silc_eval.registry import resolve_benchmarks, resolve_suite
from silc_eval.train.recipe import available_recipes, load_recipe, recipes_dir

PLAN_FILE = "study.json"
STUDY_KEYS = {"name", "description", "suite", "benchmarks", "seeds", "budgets", "set", "recipes", "compare",
              "synthscenes_seed", "select"}


@dataclass(frozen=True)
class StudyRun:
    """One training run of a study: which recipe variant, how many images, which seed, and where it goes."""

    label: str
    recipe: str
    budget: int
    seed: int
    changes: dict

    @property
    def model_name(self) -> str:
        """Return the run's model folder name, <label>-<budget>-s<seed>."""
        return f"{self.label}-{self.budget}-s{self.seed}"


@dataclass(frozen=True)
class Study:
    """A parsed study file."""

    name: str
    description: str
    benchmarks: tuple[str, ...]
    suite: str | None
    runs: tuple[StudyRun, ...]
    compare: tuple[tuple[str, str], ...] = ()
    synthscenes_seed: int | None = None  # evaluate on this SynthScenes world (a validation world), not seed 0
    select: dict | None = None  # the declared selection rule: {baseline: LABEL, exclude: [LABEL, ...]}


def merged(base: dict, changes: dict) -> dict:
    """Return a deep copy of base with changes merged in (mappings merged key by key, anything else replaced)."""
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _int_list(path: Path, key: str, value: Any, minimum: int) -> list[int]:
    if not isinstance(value, list) or not value or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in value):
        raise UserError(f"{path}: '{key}' must be a non-empty list of whole numbers >= {minimum}, got {value!r}")
    if len(set(value)) != len(value):
        raise UserError(f"{path}: '{key}' lists a value twice: {value!r}")
    return value


def load_study(path: Path) -> Study:
    """Return the Study of a study file; a malformed file is a UserError naming what was expected."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"study file {path} does not exist; expected a YAML file with name, seeds, budgets, recipes")
    data = load_yaml_mapping(path)
    check_keys(path, "study", data, ("name", "seeds", "budgets", "recipes"), STUDY_KEYS - {"name", "seeds",
                                                                                         "budgets", "recipes"})
    if ("suite" in data) == ("benchmarks" in data):
        raise UserError(f"{path}: give exactly one of 'suite' (a suite name) or 'benchmarks' (a list of names)")
    benchmarks = resolve_suite(data["suite"]) if "suite" in data else resolve_benchmarks(list(data["benchmarks"]))
    seeds = _int_list(path, "seeds", data["seeds"], 0)
    budgets = _int_list(path, "budgets", data["budgets"], 1)
    common = data.get("set") or {}
    recipes = data["recipes"]
    if not isinstance(common, dict) or not isinstance(recipes, dict) or not recipes:
        raise UserError(f"{path}: 'recipes' must map labels to {{recipe: NAME, set: {{...}}}} and 'set' be a mapping")
    runs = []
    for label, entry in recipes.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("recipe"), str) or \
                not set(entry) <= {"recipe", "set", "budgets"} or not isinstance(entry.get("set", {}), dict):
            raise UserError(f"{path}: recipe '{label}' must be {{recipe: NAME, set: {{...}}, budgets: [...]}} "
                            f"(set and budgets optional), got {entry!r}")
        if entry["recipe"] not in available_recipes() and not Path(entry["recipe"]).is_file():
            raise UserError(f"{path}: recipe '{label}': unknown recipe '{entry['recipe']}'; expected one of "
                            f"{', '.join(available_recipes())} or a YAML path")
        changes = merged(common, entry.get("set") or {})
        own_budgets = _int_list(path, f"recipes.{label}.budgets", entry["budgets"], 1) if "budgets" in entry \
            else budgets
        runs += [StudyRun(str(label), entry["recipe"], budget, seed, changes) for budget in own_budgets
                 for seed in seeds]
    compare = data.get("compare") or []
    if not isinstance(compare, list) or not all(
            isinstance(p, list) and len(p) == 2 and all(str(x) in recipes for x in p) for p in compare):
        raise UserError(f"{path}: 'compare' must list pairs of recipe labels [a, b] among {', '.join(recipes)}")
    world = data.get("synthscenes_seed")
    if world is not None and (not isinstance(world, int) or isinstance(world, bool) or world < 1):
        raise UserError(f"{path}: 'synthscenes_seed' must be a whole number >= 1 (a validation world; the "
                        f"benchmarks' own world is seed 0), got {world!r}")
    return Study(str(data["name"]), " ".join(str(data.get("description") or "").split()),
                 tuple(b.name for b in benchmarks), data.get("suite"), tuple(runs),
                 tuple((str(a), str(b)) for a, b in compare), world, selection_rule(path, data.get("select"), recipes))


def selection_rule(path: Path, rule: Any, labels) -> dict | None:
    """Return a study file's `select` as {baseline, exclude} (None when absent); a malformed one is a UserError."""
    if rule is None:
        return None
    expected = (f"{path}: 'select' must be {{baseline: LABEL, exclude: [LABEL, ...]}} with recipe labels among "
                f"{', '.join(map(str, labels))}")
    if not isinstance(rule, dict) or not set(rule) <= {"baseline", "exclude"} or str(rule.get("baseline")) not in \
            set(map(str, labels)):
        raise UserError(expected)
    exclude = rule.get("exclude") or []
    if not isinstance(exclude, list) or not all(str(x) in set(map(str, labels)) for x in exclude):
        raise UserError(expected)
    return {"baseline": str(rule["baseline"]), "exclude": [str(x) for x in exclude]}


def run_recipe(run: StudyRun, folder: Path) -> dict[str, Any]:
    """Write the run's recipe file under folder and return it loaded (validated): the named recipe with the
    study's changes, the run's seed, steps for its budget, and no evaluation during training."""
    source = Path(run.recipe) if Path(run.recipe).is_file() else recipes_dir() / f"{run.recipe}.yaml"
    recipe = merged(load_yaml_mapping(source), run.changes)
    batch = (recipe.get("optim") or {}).get("batch_size")
    if not isinstance(batch, int) or batch < 1:
        raise UserError(f"study recipe {run.label}: optim.batch_size must be set to turn images into steps")
    recipe["name"] = run.model_name
    recipe["seed"] = run.seed
    recipe["optim"] = {**recipe["optim"], "steps": math.ceil(run.budget / batch), "eval_every": 0}
    recipe["eval_suite"] = None
    path = folder / f"{run.model_name}.yaml"
    atomic_write_text(path, yaml.safe_dump(recipe, sort_keys=False))
    return load_recipe(str(path))


def trained_from(card: dict, recipe: dict[str, Any]) -> bool:
    """Return whether a card's model was trained from this recipe: the same weights hash (state.py), or for a
    card written before cards carried it, the same objective, optimiser settings and seed."""
    from silc_eval.train.state import trained_weights_hash

    training = card.get("training") or {}
    if "weights_hash" in training:
        return training["weights_hash"] == trained_weights_hash(recipe)
    return all(training.get(key) == recipe.get(key) for key in ("objective", "optim", "seed"))


def write_plan(study: Study, output: Path) -> None:
    """Write OUTPUT/study.json: the study's name, benchmarks and every run's model, label, budget and seed."""
    plan = {"name": study.name, "description": study.description, "benchmarks": list(study.benchmarks),
            "compare": [list(pair) for pair in study.compare], "synthscenes_seed": study.synthscenes_seed,
            "select": study.select,
            "runs": [{"model": r.model_name, "label": r.label, "recipe": r.recipe, "budget_images": r.budget,
                      "seed": r.seed, "set": r.changes} for r in study.runs]}
    atomic_write_text(output / PLAN_FILE, json.dumps(plan, indent=1) + "\n")


def run_study(study_file: Path, output: Path, device: str = "cpu", progress: bool = True,
              train_only: bool = False) -> Path:
    """Train, evaluate and report every run of a study into output (resuming what is done); return the
    report's path (or the models folder with train_only)."""
    from silc_eval.evaluate.runner import RunConfig, run
    from silc_eval.report.study_report import write_study_report
    from silc_eval.train.loop import train

    study = load_study(study_file)
    output = Path(output)
    for folder in ("recipes", "models", "results"):
        (output / folder).mkdir(parents=True, exist_ok=True)
    write_plan(study, output)
    report = output / "models"
    seeds = list(dict.fromkeys(r.seed for r in study.runs))
    for round_number, seed in enumerate(seeds, 1):  # seed by seed, so a partial study already compares recipes
        for one in [r for r in study.runs if r.seed == seed]:
            model = output / "models" / one.model_name
            recipe = run_recipe(one, output / "recipes")
            changed = (model / CARD_FILE).is_file()
            if changed and trained_from(read_card(model / CARD_FILE), recipe):
                continue
            log(f"study {study.name}: training {one.model_name} (seed {round_number} of {len(seeds)}, "
                f"{recipe['optim']['steps']} steps)" + ("; its recipe changed since it was trained" if changed else ""))
            train(recipe, model, device=device, evaluate=False, progress=progress)
        if train_only:
            continue
        done = [r for r in study.runs if (output / "models" / r.model_name / CARD_FILE).is_file()]
        run(RunConfig(benchmarks=resolve_benchmarks(list(study.benchmarks)),
                      models=[f"local-dir:{output / 'models' / r.model_name}" for r in done],
                      output=output / "results", data_root=None, synthscenes_root=None,
                      synthscenes_seed=study.synthscenes_seed, device=device,
                      progress=progress, force=False))
        report = write_study_report(output)
    return report
