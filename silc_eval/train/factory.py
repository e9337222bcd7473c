"""The objective factory: a recipe's `objective:` section (or bare name) -> an objective instance.

The registry of objectives lives here, apart from the classes it builds, so that the base
classes (train/objectives.py) and the objectives built on them (train/sfclip.py) never
import each other in a cycle.

Registered: clip, siglip (open_clip's losses), views-only (extra views through the
image-text loss, no distillation), silc (image-text loss on every global view plus
local-to-global self-distillation from an EMA teacher), dino (self-distillation alone:
the `vision-ssl` recipe), and sfclip (contrastive plus masked distillation from frozen
unimodal teachers).
"""

from __future__ import annotations

from typing import Any, Callable

from silc_eval.core.errors import UserError
from silc_eval.train.augment import ViewSpec
from silc_eval.train.objectives import SILC_VIEWS, ContrastiveObjective, DinoObjective, SilcObjective
from silc_eval.train.photometric import photometric_from
from silc_eval.train.sfclip import SfClipObjective


def view_spec(section: dict[str, Any] | None, image_size: int, default: dict[str, Any]) -> ViewSpec:
    """Return the ViewSpec of an objective's `views:` section over a default, at the model's image size."""
    values = {**default, **(section or {})}
    unknown = set(values) - set(ViewSpec.__dataclass_fields__)
    if unknown:
        raise UserError(f"unknown views parameter '{sorted(unknown)[0]}'; allowed: "
                        f"{', '.join(ViewSpec.__dataclass_fields__)}")
    values.setdefault("global_size", image_size)
    values.setdefault("local_size", max(8, image_size // 2))
    for key in ("global_scale", "local_scale", "ratio"):
        if key in values:
            values[key] = tuple(values[key])
    values["photometric"] = photometric_from(values.get("photometric"))
    return ViewSpec(**values)


def _distributed(common: dict[str, int | None]) -> dict[str, int]:
    return {"rank": common["rank"], "world_size": common["world_size"]}


def _contrastive(name: str) -> Callable:
    def build(section: dict[str, Any], views, image_size: int, common: dict[str, int | None]):
        return ContrastiveObjective(name, view_spec(views, image_size, {}), **section, **_distributed(common))
    return build


def _views_only(section: dict[str, Any], views, image_size: int, common: dict[str, int | None]):
    section.setdefault("contrastive_views", "all")
    return ContrastiveObjective(section.pop("contrastive", "clip"), view_spec(views, image_size, SILC_VIEWS),
                                **section, **_distributed(common))


def _silc(section: dict[str, Any], views, image_size: int, common: dict[str, int | None]):
    return SilcObjective(section.pop("contrastive", "clip"), view_spec(views, image_size, SILC_VIEWS),
                         **section, **common)


def _dino(section: dict[str, Any], views, image_size: int, common: dict[str, int | None]):
    return DinoObjective(view_spec(views, image_size, SILC_VIEWS), **section, **common)


def _sfclip(section: dict[str, Any], views, image_size: int, common: dict[str, int | None]):
    return SfClipObjective(view_spec(views, image_size, {}), **section, **_distributed(common))


# name -> builder(section without name/views, views section, image size, {rank, world_size, batch_size})
OBJECTIVES: dict[str, Callable] = {
    "clip": _contrastive("clip"),
    "siglip": _contrastive("siglip"),
    "views-only": _views_only,
    "silc": _silc,
    "dino": _dino,
    "sfclip": _sfclip,
}


def build_objective(section: dict[str, Any] | str, image_size: int, rank: int = 0, world_size: int = 1,
                    batch_size: int | None = None):
    """Return the objective a recipe's `objective:` section (or bare name) describes (batch_size: the global
    batch, which turns an EMA horizon in images into a momentum)."""
    section = {"name": section} if isinstance(section, str) else dict(section)
    name = section.pop("name", None)
    views = section.pop("views", None)
    builder = OBJECTIVES.get(name) if isinstance(name, str) else None
    if builder is None:
        raise UserError(f"unknown objective '{name}'; expected one of {', '.join(OBJECTIVES)}")
    try:
        return builder(section, views, image_size, {"rank": rank, "world_size": world_size, "batch_size": batch_size})
    except TypeError as exc:
        raise UserError(f"objective {name}: {exc}") from None
