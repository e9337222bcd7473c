"""The SynthScenes world: classes, textures, scene rendering with dense labels, and captions.

A scene is one or two "stuff" backgrounds (split by a wavy horizontal boundary) with
one to three filled shapes on top. Every shape is drawn once as a boolean mask without
anti-aliasing; that mask paints both the image and the label map, so the two agree
pixel for pixel. Writing scenes to disk lives in ``synthscenes.py``.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field
from typing import NamedTuple, Sequence

import numpy as np
from PIL import Image, ImageDraw

VERSION = "synthscenes-v3"

OBJECT_CLASSES = ("circle", "square", "triangle", "star", "cross",
                  "ring", "diamond", "hexagon", "arrow", "crescent")
STUFF_CLASSES = ("sky", "grass", "sand", "water", "wall")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 220, 40),
    "purple": (140, 60, 180),
    "orange": (245, 140, 30),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
COLOUR_JITTER = 15
# As in natural images, an object's colour is informative of its class but not decisive: each
# class takes its typical colour with probability TYPICAL_COLOUR_SHARE, any colour otherwise.
# Two pairs share a typical colour (crescent/star, hexagon/triangle), so only shape tells
# them apart. Without this, a tiny ViT trained contrastively for minutes learns colour and
# background but not shape, and zero-shot classification stays at chance (measured in
# synthscenes-v2 development: 11% after 90k pairs).
TYPICAL_COLOURS = {"arrow": "white", "circle": "orange", "crescent": "yellow", "cross": "red", "diamond": "blue",
                   "hexagon": "green", "ring": "purple", "square": "black", "star": "yellow", "triangle": "green"}
TYPICAL_COLOUR_SHARE = 0.6
UNSEEN_CLASSES = ("star", "crescent")
SEEN_CLASSES = tuple(c for c in OBJECT_CLASSES if c not in UNSEEN_CLASSES)
# Label id of a pixel = index in this tuple; 255 (core/labels.py IGNORE_INDEX) is reserved and not produced.
SEGMENTATION_CLASSES = STUFF_CLASSES + OBJECT_CLASSES

SIZE_WORDS = ("small", "medium", "large")
# Object radius as a fraction of the image's shorter side, per size word.
SIZE_RANGES = {"small": (0.11, 0.16), "medium": (0.17, 0.23), "large": (0.24, 0.31)}
POSITION_WORDS = ("left", "right", "top", "bottom", "centre")

CLASSIFICATION_TEMPLATES = (
    "a {c}.",
    "a photo of a {c}.",
    "a picture of a {c}.",
    "there is a {c}.",
    "a {c} on grass.",
    "a {c} in the sky.",
)

_POSITION_PHRASES = {"left": "on the left", "right": "on the right", "top": "at the top",
                     "bottom": "at the bottom", "centre": "in the centre"}
_STUFF_PHRASES = {
    "sky": ("in the sky", "against the sky"),
    "grass": ("on grass", "on the grass"),
    "sand": ("on sand", "on the sand"),
    "water": ("on water", "over the water"),
    "wall": ("in front of a wall", "against a wall"),
}
_STUFF_NOUNS = {"sky": "the sky", "grass": "grass", "sand": "sand", "water": "water", "wall": "a wall"}
_TWO_STUFF_PHRASES = ("with {top} above {bottom}", "in front of {top} and {bottom}",
                      "where {top} meets {bottom}")
_COUNT_WORDS = ("one", "two", "three")
_COUNT_NOUNS = ("object", "objects")
_RELATIONS = ("above", "below", "to the left of", "to the right of")
_CAPTION_TEMPLATES = {
    "plain": "{objects} {background}.",
    "photo": "a photo of {objects} {background}.",
    "picture": "a picture of {objects} {background}.",
    "there": "there is {objects} {background}.",
    "image": "an image of {objects} {background}.",
    "count": "{count} {noun}, {objects}, {background}.",
    "scene": "{scene} with {objects}.",
    "bare": "{objects}.",
    "relation": "{first} {relation} {second} {background}.",
}
SHAPES_ONLY_SHARE = 0.3
_ARTICLES = ("a", "an")
_JOINERS = ("and",)


class SceneObject(NamedTuple):
    """One object of a scene; ``area`` is its visible pixel count in the final mask."""

    cls: str
    colour: str
    size: str
    position: str
    area: int
    rgb: tuple[int, int, int]
    centre: tuple[float, float]


@dataclass
class Scene:
    """A rendered scene: RGB image, uint8 label mask (H, W), its objects and backgrounds."""

    image: Image.Image
    mask: np.ndarray
    objects: list[SceneObject]
    stuff: list[str]
    main_class: str
    size: tuple[int, int] = field(default=(0, 0))

    def captions(self, rng: np.random.Generator, n: int) -> list[str]:
        """Return n distinct captions of this scene (see ``make_captions``)."""
        return make_captions(self, rng, n)


# ----------------------------------------------------------------------------- textures

@functools.lru_cache(maxsize=8)
def _grid(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    xs.setflags(write=False)
    ys.setflags(write=False)
    return xs, ys


def _noise(rng: np.random.Generator, width: int, height: int, sigma: float) -> np.ndarray:
    return rng.standard_normal((height, width, 1), dtype=np.float32) * np.float32(sigma)


def _tint(rng: np.random.Generator, rgb: tuple[int, int, int], spread: float) -> np.ndarray:
    return np.asarray(rgb, np.float32) + rng.uniform(-spread, spread, 3).astype(np.float32)


def _sky(rng: np.random.Generator, width: int, height: int, scale: float) -> np.ndarray:
    top = _tint(rng, (100, 160, 230), 10)
    bottom = _tint(rng, (185, 215, 245), 8)
    t = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    return top * (1 - t) + bottom * t + _noise(rng, width, height, 2.5)


def _grass(rng: np.random.Generator, width: int, height: int, scale: float) -> np.ndarray:
    base = _tint(rng, (70, 150, 55), 10)
    img = np.broadcast_to(base, (height, width, 3)) + _noise(rng, width, height, 9)
    blade = max(3, round(4 * scale))
    field_ = rng.random((height // blade + 2, width))
    offset = rng.integers(0, blade, width)
    rows = (np.arange(height)[:, None] + offset[None, :]) // blade
    dark = field_[rows, np.arange(width)[None, :]] < 0.3
    return np.where(dark[..., None], img * 0.62, img)


def _sand(rng: np.random.Generator, width: int, height: int, scale: float) -> np.ndarray:
    base = _tint(rng, (215, 190, 135), 8)
    img = np.broadcast_to(base, (height, width, 3)) + _noise(rng, width, height, 6)
    speckle = rng.random((height, width)) < 0.07
    return np.where(speckle[..., None], np.array([160, 130, 85], np.float32), img)


def _water(rng: np.random.Generator, width: int, height: int, scale: float) -> np.ndarray:
    xs, ys = _grid(width, height)
    base = _tint(rng, (25, 55, 125), 8)
    img = np.broadcast_to(base, (height, width, 3)) + _noise(rng, width, height, 4)
    period = 7.0 * scale * rng.uniform(0.85, 1.15)
    sway = 1.5 * scale * np.sin(2 * math.pi * xs / (22.0 * scale) + rng.uniform(0, 2 * math.pi))
    wave = np.sin(2 * math.pi * (ys + sway) / period + rng.uniform(0, 2 * math.pi))
    return np.where((wave > 0.8)[..., None], np.array([95, 145, 205], np.float32), img)


def _wall(rng: np.random.Generator, width: int, height: int, scale: float) -> np.ndarray:
    brick_h = max(4, round(8 * scale))
    brick_w = 2 * brick_h
    ys = np.arange(height) + rng.integers(0, brick_h)
    row = ys // brick_h
    odd = (row % 2 == 1)[:, None]
    xs = np.arange(width) + rng.integers(0, brick_w)
    xs_odd = xs + brick_w // 2
    col = np.where(odd, (xs_odd // brick_w)[None, :], (xs // brick_w)[None, :])
    jitter = rng.standard_normal((row.max() + 1, col.max() + 1, 1), dtype=np.float32) * np.float32(12)
    base = _tint(rng, (155, 65, 45), 8)
    img = base + jitter[row[:, None], col] + _noise(rng, width, height, 3)
    vertical = np.where(odd, (xs_odd % brick_w == 0)[None, :], (xs % brick_w == 0)[None, :])
    mortar = (ys % brick_h == 0)[:, None] | vertical
    return np.where(mortar[..., None], np.array([195, 190, 180], np.float32), img)


_TEXTURES = {"sky": _sky, "grass": _grass, "sand": _sand, "water": _water, "wall": _wall}


def stuff_texture(name: str, rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Return a float32 (H, W, 3) texture of the stuff class ``name`` (values roughly 0-255)."""
    return _TEXTURES[name](rng, width, height, min(width, height) / 64.0)


def _background(rng: np.random.Generator, width: int,
                height: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Return (float image, uint8 label map, stuff names top to bottom)."""
    if rng.random() < 0.5:
        name = STUFF_CLASSES[rng.integers(len(STUFF_CLASSES))]
        labels = np.full((height, width), SEGMENTATION_CLASSES.index(name), np.uint8)
        return stuff_texture(name, rng, width, height), labels, [name]
    top = STUFF_CLASSES[rng.integers(len(STUFF_CLASSES))]
    lower = [s for s in STUFF_CLASSES if s not in (top, "sky")]
    bottom = lower[rng.integers(len(lower))]
    xs, ys = _grid(width, height)
    level = height * rng.uniform(0.35, 0.65)
    amplitude = height * rng.uniform(0.0, 0.06)
    wavelength = width * rng.uniform(0.6, 1.5)
    boundary = level + amplitude * np.sin(2 * math.pi * xs / wavelength + rng.uniform(0, 2 * math.pi))
    is_top = ys < boundary
    img = np.where(is_top[..., None], stuff_texture(top, rng, width, height),
                   stuff_texture(bottom, rng, width, height))
    labels = np.where(is_top, SEGMENTATION_CLASSES.index(top), SEGMENTATION_CLASSES.index(bottom))
    return img, labels.astype(np.uint8), [top, bottom]


# ----------------------------------------------------------------------------- shapes

def _regular(n: int, radius: float = 1.0, start_deg: float = -90.0) -> list[tuple[float, float]]:
    return [(radius * math.cos(math.radians(start_deg + 360.0 * k / n)),
             radius * math.sin(math.radians(start_deg + 360.0 * k / n))) for k in range(n)]


def _star() -> list[tuple[float, float]]:
    outer, inner = _regular(5, 1.0), _regular(5, 0.45, -90.0 + 36.0)
    return [p for pair in zip(outer, inner) for p in pair]


_W = 0.3  # half-width of a cross arm
# Polygons in unit coordinates (y points down), scaled by the object's radius.
_POLYGONS = {
    "square": [(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)],
    "triangle": _regular(3, 1.05),
    "star": _star(),
    "cross": [(-_W, -1), (_W, -1), (_W, -_W), (1, -_W), (1, _W), (_W, _W), (_W, 1), (-_W, 1),
              (-_W, _W), (-1, _W), (-1, -_W), (-_W, -_W)],
    "diamond": [(0, -1), (0.62, 0), (0, 1), (-0.62, 0)],
    "hexagon": _regular(6, 0.92, 0.0),
    "arrow": [(-1, -0.22), (0.15, -0.22), (0.15, -0.62), (1, 0), (0.15, 0.62), (0.15, 0.22), (-1, 0.22)],
}


def _disk(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, fill: int) -> None:
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)


def shape_mask(cls: str, cx: float, cy: float, radius: float, rotation: float,
               width: int, height: int) -> np.ndarray:
    """Return a bool (H, W) mask of shape ``cls`` centred at (cx, cy), drawn without anti-aliasing."""
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    if cls == "circle":
        _disk(draw, cx, cy, 0.92 * radius, 1)
    elif cls == "ring":
        _disk(draw, cx, cy, 0.95 * radius, 1)
        _disk(draw, cx, cy, 0.55 * radius, 0)
    elif cls == "crescent":
        _disk(draw, cx, cy, 0.95 * radius, 1)
        dx, dy = 0.42 * radius * math.cos(rotation), 0.42 * radius * math.sin(rotation)
        _disk(draw, cx + dx, cy + dy, 0.8 * radius, 0)
    else:
        cos, sin = math.cos(rotation), math.sin(rotation)
        points = [(cx + radius * (x * cos - y * sin), cy + radius * (x * sin + y * cos))
                  for x, y in _POLYGONS[cls]]
        draw.polygon(points, fill=1)
    return np.asarray(canvas, dtype=np.uint8) > 0


def position_word(cx: float, cy: float, width: int, height: int) -> str:
    """Return left/right/top/bottom/centre for a point, by its offset from the image centre."""
    nx, ny = (cx - width / 2) / (width / 2), (cy - height / 2) / (height / 2)
    if max(abs(nx), abs(ny)) < 1 / 3:
        return "centre"
    if abs(nx) >= abs(ny):
        return "left" if nx < 0 else "right"
    return "top" if ny < 0 else "bottom"


# ----------------------------------------------------------------------------- scenes

class _Placed(NamedTuple):
    cls: str
    colour: str
    size: str
    rgb: tuple[int, int, int]
    centre: tuple[float, float]
    full_area: int


def _jittered(rng: np.random.Generator, colour: str) -> tuple[int, int, int]:
    jitter = rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, 3).tolist()
    return tuple(min(255, max(0, c + j)) for c, j in zip(COLOURS[colour], jitter))


def _try_place(rng, cls, size, owner, placed, width, height) -> tuple[np.ndarray, tuple[float, float]] | None:
    """Draw up to 10 placements; return the first (mask, centre) that keeps every earlier
    object at least 60% visible and itself non-empty, or None."""
    radius_frac = rng.uniform(*SIZE_RANGES[size])
    radius = radius_frac * min(width, height)
    rotation = math.radians(rng.uniform(-12, 12))
    if cls == "crescent":
        rotation += math.pi * rng.integers(2)
    margin = 0.9 * radius
    for _ in range(10):
        cx = rng.uniform(margin, width - margin)
        cy = rng.uniform(margin, height - margin)
        mask = shape_mask(cls, cx, cy, radius, rotation, width, height)
        if not mask.any():
            continue
        remaining = owner.copy()
        remaining[mask] = -1
        if all((remaining == k).sum() >= 0.6 * p.full_area for k, p in enumerate(placed)):
            return mask, (cx, cy)
    return None


def object_colour(rng: np.random.Generator, cls: str) -> str:
    """Return the colour name of a new object of class cls (its typical colour or a random one)."""
    if rng.random() < TYPICAL_COLOUR_SHARE:
        return TYPICAL_COLOURS[cls]
    return tuple(COLOURS)[rng.integers(len(COLOURS))]


def _pick_objects(rng: np.random.Generator, main_class: str | None) -> list[tuple[str, str]]:
    """Return (class, size) pairs in drawing order; a forced main class comes first and biggest."""
    count = int(rng.choice([1, 2, 3], p=[0.4, 0.35, 0.25]))
    pool = [c for c in OBJECT_CLASSES if c != main_class]
    classes = [pool[i] for i in rng.permutation(len(pool))[:count]]
    if main_class is None:
        return [(c, SIZE_WORDS[rng.integers(3)]) for c in classes]
    main_size = int(rng.integers(1, 3))
    others = [(c, SIZE_WORDS[rng.integers(main_size)]) for c in classes[:count - 1]]
    return [(main_class, SIZE_WORDS[main_size])] + others


def _compose(rng: np.random.Generator, width: int, height: int, main_class: str | None) -> Scene:
    image, labels, stuff = _background(rng, width, height)
    owner = np.full((height, width), -1, np.int16)
    placed: list[_Placed] = []
    for cls, size in _pick_objects(rng, main_class):
        colour = object_colour(rng, cls)
        rgb = _jittered(rng, colour)
        found = _try_place(rng, cls, size, owner, placed, width, height)
        if found is None:
            continue
        mask, centre = found
        owner[mask] = len(placed)
        image[mask] = rgb
        labels[mask] = SEGMENTATION_CLASSES.index(cls)
        placed.append(_Placed(cls, colour, size, rgb, centre, int(mask.sum())))
    objects = [SceneObject(p.cls, p.colour, p.size, position_word(*p.centre, width, height),
                           int((owner == k).sum()), p.rgb, p.centre) for k, p in enumerate(placed)]
    return Scene(image=Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)), mask=labels,
                 objects=objects, stuff=stuff, main_class=main_class_of(labels), size=(width, height))


def main_class_of(mask: np.ndarray) -> str:
    """Return the object class with the most pixels in a label mask (ties: first in OBJECT_CLASSES)."""
    counts = np.bincount(mask.ravel(), minlength=len(SEGMENTATION_CLASSES))[len(STUFF_CLASSES):]
    return OBJECT_CLASSES[int(np.argmax(counts[:len(OBJECT_CLASSES)]))]


def render_scene(rng: np.random.Generator, size: int | tuple[int, int],
                 main_class: str | None = None) -> Scene:
    """Return a random Scene of ``size`` (W, H) (an int means square).

    With ``main_class`` the scene is redrawn until that class has the largest visible area.
    """
    width, height = (size, size) if isinstance(size, int) else size
    if main_class is not None and main_class not in OBJECT_CLASSES:
        raise ValueError(f"unknown object class {main_class!r}")
    for _ in range(100):
        scene = _compose(rng, width, height, main_class)
        if scene.objects and (main_class is None or scene.main_class == main_class):
            return scene
    raise RuntimeError(f"could not render a scene with main class {main_class!r} at {width}x{height}")


# ----------------------------------------------------------------------------- captions

def _with_article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _object_phrase(rng: np.random.Generator, obj: SceneObject, position: bool | None = None) -> str:
    words = []
    if rng.random() < 0.5:
        words.append(obj.size)
    if rng.random() < 0.75:
        words.append(obj.colour)
    words.append(obj.cls)
    phrase = _with_article(" ".join(words))
    if position is None:
        position = rng.random() < 0.25
    if position:
        phrase += " " + _POSITION_PHRASES[obj.position]
    return phrase


def _join(phrases: Sequence[str]) -> str:
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _background_phrase(rng: np.random.Generator, stuff: Sequence[str]) -> str:
    if len(stuff) == 1:
        options = _STUFF_PHRASES[stuff[0]]
        return options[rng.integers(len(options))]
    template = _TWO_STUFF_PHRASES[rng.integers(len(_TWO_STUFF_PHRASES))]
    return template.format(top=_STUFF_NOUNS[stuff[0]], bottom=_STUFF_NOUNS[stuff[1]])


def _scene_noun(stuff: Sequence[str]) -> str:
    return " and ".join(_STUFF_NOUNS[s] for s in stuff)


def _relation(first: SceneObject, second: SceneObject) -> str:
    dx = first.centre[0] - second.centre[0]
    dy = first.centre[1] - second.centre[1]
    if abs(dy) > abs(dx):
        return "above" if dy < 0 else "below"
    return "to the left of" if dx < 0 else "to the right of"


def _shapes_only(scene: Scene, rng: np.random.Generator) -> str:
    """Return a terse caption that names the objects' shapes and nothing else ("a star and a ring.")."""
    order = [scene.objects[i] for i in rng.permutation(len(scene.objects))]
    return _join([_with_article(o.cls) for o in order]) + "."


def _one_caption(scene: Scene, rng: np.random.Generator) -> str:
    # Terse alt-text: without it, colour and background identify an image among a batch so
    # often that a contrastive model has little reason to learn shape.
    if rng.random() < SHAPES_ONLY_SHARE:
        return _shapes_only(scene, rng)
    names = [k for k in _CAPTION_TEMPLATES if k != "relation" or len(scene.objects) == 2]
    kind = names[rng.integers(len(names))]
    order = [scene.objects[i] for i in rng.permutation(len(scene.objects))]
    background = _background_phrase(rng, scene.stuff)
    if kind == "relation":
        first, second = order
        return _CAPTION_TEMPLATES[kind].format(
            first=_object_phrase(rng, first, False), second=_object_phrase(rng, second, False),
            relation=_relation(first, second), background=background)
    objects = _join([_object_phrase(rng, o, True if kind == "count" else None) for o in order])
    return _CAPTION_TEMPLATES[kind].format(
        objects=objects, background=background, scene=_scene_noun(scene.stuff),
        count=_COUNT_WORDS[len(order) - 1], noun=_COUNT_NOUNS[len(order) > 1])


def make_captions(scene: Scene, rng: np.random.Generator, n: int) -> list[str]:
    """Return n distinct lower-case captions naming the scene's objects and background."""
    captions: list[str] = []
    for _ in range(200 * max(n, 1)):
        if len(captions) == n:
            break
        caption = _one_caption(scene, rng)
        if caption not in captions:
            captions.append(caption)
    if len(captions) < n:
        raise RuntimeError(f"could only make {len(captions)} distinct captions, {n} requested")
    return captions


_WORD_RE = re.compile(r"[a-z]+|[.,]")


def caption_tokens(text: str) -> list[str]:
    """Return the words and '.'/',' marks of a caption, in order (the tokenizer's split)."""
    return _WORD_RE.findall(text.lower())


def vocabulary() -> list[str]:
    """Return every word that can appear in a caption, class name or template, plus '.' and ','."""
    texts: list[str] = [*OBJECT_CLASSES, *STUFF_CLASSES, *COLOURS, *SIZE_WORDS, *POSITION_WORDS,
                        *_POSITION_PHRASES.values(), *_STUFF_NOUNS.values(), *_COUNT_WORDS,
                        *_COUNT_NOUNS, *_RELATIONS, *_ARTICLES, *_JOINERS, ".", ","]
    texts += [p for phrases in _STUFF_PHRASES.values() for p in phrases]
    templates = [*_TWO_STUFF_PHRASES, *_CAPTION_TEMPLATES.values(), *CLASSIFICATION_TEMPLATES]
    texts += [re.sub(r"\{[a-z]+\}", " ", t) for t in templates]
    return sorted({tok for text in texts for tok in caption_tokens(text)})
