"""Synthetic aerial scenes in the layout and with the class names of the seven SCORE splits.

Stand-in data for demos and tests where the benchmark (DATASETS.md) is not at
hand. Every split of ``SPLITS`` is written under a root exactly as the authors
distribute it: PNG images (lossless, so that the pixels are exactly what was
drawn) and COCO instance JSON with one polygon per object plus bbox, area and
``iscrowd`` 0.

What the scenes test is SCORE's premise, that context decides the class: a
small set of *concepts*, each a (shape, local surround) recipe, where some
concepts share the object's pixels and differ only in what surrounds them:

* the same hull on a water patch is a ship, on a road strip a small vehicle;
* the same court on green grass is a tennis court, on grey asphalt a
  basketball court;
* the same disk on a light concrete pad is a storage tank, at a road junction
  a roundabout.

Class names map onto concepts by their normalised meaning (``plane`` and
``airplane``, ``Small_Vehicle``, ``vehicle`` and ``Small-Car`` render alike in
every split); which classes count as seen is still decided by the names alone.
A name without a concept gets a recipe derived from a hash of its normalised
name: ship-, vehicle- and aircraft-like names (``Tugboat``, ``Dump-Truck``,
``A330``) keep their family's shape and surround with their own colour and
proportions, any other name a shape, colour and surround of its own.

Each image shows one *scene type* (``SCENE_TYPES``: harbour, airport, parking
lot, sports ground, storage depot, residential area, farmland, highway) that
decides which classes appear in it, where (ships, piers and bridges on a
harbour's water, the rest on land) and how its ground looks, so that the
whole scene, like a real aerial scene, tells which classes are likely; the
objects and their surrounds are drawn alike in every scene type.

Objects of one image never overlap, and no surround covers another object.
The same seed gives byte-identical JSON and images; every split draws from
its own generator, so writing a subset of splits gives the same files.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import math
import os
import re
import zlib
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from score.data.datasets import SPLITS, SplitSpec
from score.vocabulary import canonical_class_name

__all__ = [
    "CONCEPTS",
    "Recipe",
    "SCENE_TYPES",
    "Scene",
    "SceneType",
    "draw_object",
    "draw_surround",
    "recipe_for",
    "render_image",
    "render_scene",
    "scene_types_of",
    "surround_radius",
    "write_split",
    "write_synthetic_datasets",
]

logger = logging.getLogger(__name__)

RGB = tuple[int, int, int]

_WATER: RGB = (38, 72, 112)
_ROAD: RGB = (72, 72, 75)
_ROAD_LINE: RGB = (205, 205, 195)
_GROUND: dict[str, RGB] = {
    "grass": (74, 128, 62),
    "asphalt": (108, 108, 112),
    "concrete": (202, 200, 192),
    "apron": (170, 170, 164),
    "soil": (150, 118, 84),
}
_WHITE: RGB = (240, 240, 235)


@dataclass(frozen=True)
class Recipe:
    """How one concept is drawn.

    Attributes:
        concept: concept name (a normalised class name or ``"hashed: <name>"``).
        shape: outline and interior drawing (``hull``, ``court``, ``disk``...).
        surround: local region drawn under the object (``water``, ``road``,
            ``grass``, ``asphalt``, ``concrete``, ``junction``, ``apron``,
            ``water band``, ``shore``, ``soil`` or ``none``).
        color: main RGB colour of the object.
        length: range of the object's length, as a fraction of the image's shorter side.
        aspect: length / width of the object.
    """

    concept: str
    shape: str
    surround: str
    color: RGB
    length: tuple[float, float]
    aspect: float


_HULL_COLOR: RGB = (222, 222, 214)
_COURT_COLOR: RGB = (176, 84, 62)
_DISK_COLOR: RGB = (226, 224, 216)

CONCEPTS: dict[str, Recipe] = {
    r.concept: r
    for r in (
        Recipe("ship", "hull", "water", _HULL_COLOR, (0.07, 0.12), 3.2),
        Recipe("small vehicle", "hull", "road", _HULL_COLOR, (0.07, 0.12), 3.2),
        Recipe("large vehicle", "box", "road", (200, 168, 60), (0.09, 0.14), 2.6),
        Recipe("plane", "aircraft", "apron", (236, 236, 240), (0.12, 0.18), 1.0),
        Recipe("tennis court", "court", "grass", _COURT_COLOR, (0.11, 0.16), 2.0),
        Recipe("basketball court", "court", "asphalt", _COURT_COLOR, (0.11, 0.16), 2.0),
        Recipe("storage tank", "disk", "concrete", _DISK_COLOR, (0.07, 0.12), 1.0),
        Recipe("roundabout", "disk", "junction", _DISK_COLOR, (0.07, 0.12), 1.0),
        Recipe("intersection", "crossing", "junction", (100, 100, 103), (0.09, 0.13), 1.0),
        Recipe("baseball diamond", "fan", "grass", (198, 158, 110), (0.12, 0.17), 1.0),
        Recipe("ground track field", "track", "none", (168, 72, 58), (0.2, 0.28), 1.7),
        Recipe("soccer ball field", "pitch", "none", (64, 150, 72), (0.15, 0.22), 1.5),
        Recipe("swimming pool", "pool", "grass", (70, 170, 225), (0.06, 0.1), 1.7),
        Recipe("bridge", "deck", "water band", (152, 150, 144), (0.2, 0.28), 6.0),
        Recipe("harbor", "pier", "shore", (186, 180, 170), (0.13, 0.2), 1.0),
    )
}

# Other spellings of a concept's meaning in the seven class lists.
_ALIASES = {
    "vehicle": "small vehicle",
    "small car": "small vehicle",
    "airplane": "plane",
    "other airplane": "plane",
    "other ship": "ship",
    "baseball field": "baseball diamond",
    "football field": "soccer ball field",
}

# Families of names without a concept: they keep the family's shape, surround
# and size; colour and proportions come from the name's hash.
_FAMILIES = (
    (re.compile(r"ship|boat"), "ship", (2.4, 4.0)),
    (re.compile(r"\b(car|truck|bus|van|tractor|trailer|excavator|vehicle)\b"), "large vehicle", (1.8, 3.0)),
    (re.compile(r"plane|helicopter|boeing|^a\d{3}$|^arj\d+$|^c\d{3}$"), "plane", (0.85, 1.2)),
)
_GENERIC_SHAPES = ("rectangle", "ellipse", "triangle", "hexagon", "diamond", "star", "lshape", "cross")
_GENERIC_SURROUNDS = ("none", "concrete", "soil", "grass")


def recipe_for(class_name: str) -> Recipe:
    """The recipe of a class name: its concept's, or one derived from the name's hash."""
    name = canonical_class_name(class_name)
    name = _ALIASES.get(name, name)
    if name in CONCEPTS:
        return CONCEPTS[name]
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    color = tuple(40 + b % 190 for b in digest[:3])
    unit = digest[5] / 255.0
    for pattern, family, (lo, hi) in _FAMILIES:
        if pattern.search(name):
            base = CONCEPTS[family]
            scale = 0.85 + 0.4 * digest[6] / 255.0
            length = (base.length[0] * scale, base.length[1] * scale)
            return Recipe(f"hashed: {name}", base.shape, base.surround, color, length, lo + (hi - lo) * unit)
    shape = _GENERIC_SHAPES[digest[3] % len(_GENERIC_SHAPES)]
    surround = _GENERIC_SURROUNDS[digest[4] % len(_GENERIC_SURROUNDS)]
    return Recipe(f"hashed: {name}", shape, surround, color, (0.08, 0.13), 1.0 + 1.2 * unit)


# ---------------------------------------------------------------------------
# Geometry: outlines in local coordinates (x along the object's length, y
# across it, origin at its centre), placed by a rotation and a translation.


def _rect(x0: float, x1: float, y0: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


def _ellipse(a: float, b: float, n: int = 36, cx: float = 0.0) -> np.ndarray:
    t = np.linspace(0.0, 2.0 * math.pi, n, endpoint=False)
    return np.stack([cx + a * np.cos(t), b * np.sin(t)], axis=1)


def _stadium(length: float, width: float, n: int = 12) -> np.ndarray:
    r = width / 2.0
    half = max(length / 2.0 - r, 0.0)
    right = [(half + r * math.cos(t), r * math.sin(t)) for t in np.linspace(-math.pi / 2, math.pi / 2, n)]
    left = [(-half + r * math.cos(t), r * math.sin(t)) for t in np.linspace(math.pi / 2, 1.5 * math.pi, n)]
    return np.array(right + left, dtype=np.float64)


def _mirrored(upper: list[tuple[float, float]]) -> np.ndarray:
    """Close a polygon given its y <= 0 half from the stern (x < 0) to the nose (y = 0)."""
    pts = np.array(upper, dtype=np.float64)
    lower = pts[::-1] * np.array([1.0, -1.0])
    keep = np.abs(lower[:, 1]) > 1e-9
    return np.concatenate([pts, lower[keep]], axis=0)


def _outline(shape: str, length: float, width: float) -> np.ndarray:
    """Outline polygon (N, 2) of a shape of the given length (x) and width (y)."""
    L, W = length, width
    if shape == "hull":
        bow = [(0.1 * L + 0.4 * L * t, -0.5 * W * math.sqrt(1.0 - t * t)) for t in np.linspace(0, 1, 8)]
        return _mirrored([(-0.5 * L, 0.0), (-0.5 * L, -0.5 * W), *bow])
    if shape == "aircraft":
        f = 0.06 * L
        return _mirrored(
            [
                (-0.5 * L, 0.0),
                (-0.5 * L, -0.2 * W),
                (-0.44 * L, -0.2 * W),
                (-0.34 * L, -f),
                (-0.06 * L, -f),
                (-0.14 * L, -0.5 * W),
                (-0.05 * L, -0.5 * W),
                (0.12 * L, -f),
                (0.42 * L, -f),
                (0.5 * L, 0.0),
            ]
        )
    if shape in ("box", "court", "pitch", "pool", "deck", "crossing", "rectangle"):
        return _rect(-L / 2, L / 2, -W / 2, W / 2)
    if shape == "disk":
        return _ellipse(L / 2, L / 2)
    if shape == "ellipse":
        return _ellipse(L / 2, W / 2)
    if shape == "fan":
        arc = [(L * math.cos(t), L * math.sin(t)) for t in np.linspace(-math.pi / 4, math.pi / 4, 12)]
        return np.array([(0.0, 0.0), *arc]) - np.array([L / 2, 0.0])
    if shape == "track":
        return _stadium(L, W)
    if shape == "pier":
        s, h = 0.09 * L, 0.4 * L
        return np.array(
            [
                (-L / 2, -s),
                (0.3 * L, -s),
                (0.3 * L, -h),
                (L / 2, -h),
                (L / 2, h),
                (0.3 * L, h),
                (0.3 * L, s),
                (-L / 2, s),
            ]
        )
    if shape == "triangle":
        return np.array([(L / 2, 0.0), (-L / 2, -W / 2), (-L / 2, W / 2)])
    if shape == "hexagon":
        return _ellipse(L / 2, W / 2, n=6)
    if shape == "diamond":
        return np.array([(L / 2, 0.0), (0.0, -W / 2), (-L / 2, 0.0), (0.0, W / 2)])
    if shape == "star":
        t = np.linspace(0.0, 2.0 * math.pi, 10, endpoint=False)
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        return np.stack([r * L / 2 * np.cos(t), r * W / 2 * np.sin(t)], axis=1)
    if shape == "lshape":
        return np.array(
            [
                (-L / 2, -W / 2),
                (L / 2, -W / 2),
                (L / 2, -W / 6),
                (-L / 6, -W / 6),
                (-L / 6, W / 2),
                (-L / 2, W / 2),
            ]
        )
    if shape == "cross":
        a, b = L / 6, W / 6
        return np.array(
            [(-L / 2, -b), (-a, -b), (-a, -W / 2), (a, -W / 2), (a, -b), (L / 2, -b),
             (L / 2, b), (a, b), (a, W / 2), (-a, W / 2), (-a, b), (-L / 2, b)]
        )  # fmt: skip
    raise ValueError(f"unknown shape {shape!r}")


def _shade(color: RGB, factor: float) -> RGB:
    return tuple(int(min(255, max(0, round(c * factor)))) for c in color)


def _details(shape: str, length: float, width: float, color: RGB) -> list[tuple[np.ndarray, RGB, int]]:
    """Interior drawing of a shape: (polygon, colour, thickness; -1 fills, >0 draws a closed line)."""
    L, W = length, width
    line = max(1, round(0.04 * min(L, W)))
    if shape == "hull":
        return [(_rect(-0.38 * L, -0.12 * L, -0.28 * W, 0.28 * W), _shade(color, 0.45), -1)]
    if shape == "box":
        return [(_rect(0.28 * L, 0.47 * L, -0.42 * W, 0.42 * W), _shade(color, 0.6), -1)]
    if shape == "aircraft":
        return [(_rect(-0.36 * L, 0.4 * L, -0.015 * L, 0.015 * L), _shade(color, 0.75), -1)]
    if shape == "court":
        return [
            (_rect(-0.44 * L, 0.44 * L, -0.4 * W, 0.4 * W), _WHITE, line),
            (_rect(-0.01 * L, 0.01 * L, -0.4 * W, 0.4 * W), _WHITE, -1),
            (_rect(-0.22 * L, 0.22 * L, -0.25 * W, 0.25 * W), _WHITE, line),
        ]
    if shape == "pitch":
        return [
            (_rect(-0.45 * L, 0.45 * L, -0.43 * W, 0.43 * W), _WHITE, line),
            (_rect(-0.005 * L, 0.005 * L, -0.43 * W, 0.43 * W), _WHITE, -1),
            (_ellipse(0.12 * W, 0.12 * W, n=24), _WHITE, line),
        ]
    if shape == "disk":
        return [
            (_ellipse(0.38 * L, 0.38 * L), _shade(color, 0.72), max(1, round(0.06 * L))),
            (_ellipse(0.07 * L, 0.07 * L, n=12), _shade(color, 0.6), -1),
        ]
    if shape == "fan":
        d = 0.3 * L
        apex = np.array([-L / 2, 0.0])
        diamond = apex + np.array(
            [(0.0, 0.0), (d * 0.7071, -d * 0.7071), (2 * d * 0.7071, 0.0), (d * 0.7071, d * 0.7071)]
        )
        return [(diamond, (92, 150, 70), -1)]
    if shape == "track":
        return [
            (_stadium(L - 0.3 * W, 0.7 * W), (80, 150, 70), -1),
            (_stadium(L - 0.15 * W, 0.85 * W), _WHITE, 1),
        ]
    if shape == "pool":
        return [(_rect(-0.5 * L, 0.5 * L, -0.5 * W, 0.5 * W), _WHITE, max(1, round(0.05 * W)))]
    if shape == "deck":
        return [(_rect(-0.5 * L, 0.5 * L, -0.3 * W, 0.3 * W), _shade(color, 1.2), 1)]
    if shape == "pier":
        return [(_rect(-0.5 * L, 0.3 * L, -0.02 * L, 0.02 * L), _shade(color, 0.8), -1)]
    if shape == "crossing":
        stripes = []
        for k in range(5):
            y = -0.4 * W + k * 0.2 * W
            for x0 in (-0.46 * L, 0.34 * L):
                stripes.append((_rect(x0, x0 + 0.12 * L, y - 0.04 * W, y + 0.04 * W), _WHITE, -1))
        return stripes
    # Hashed shapes: a darker rim, so that the outline reads as one object.
    return [(_outline(shape, 0.8 * L, 0.8 * W), _shade(color, 0.7), line)]


def _surround_parts(surround: str, length: float, width: float) -> list[tuple[np.ndarray, RGB, int]]:
    """Local regions drawn under an object, in drawing order (same format as ``_details``)."""
    L, W = length, width
    if surround == "none":
        return []
    if surround == "water":
        return [(_ellipse(0.95 * L, max(0.75 * L, 1.6 * W)), _WATER, -1)]
    if surround == "road":
        half_w = 0.95 * W + 3.0
        return [
            (_rect(-1.3 * L, 1.3 * L, -half_w, half_w), _ROAD, -1),
            (_rect(-1.3 * L, 1.3 * L, -half_w + 1.5, half_w - 1.5), _ROAD_LINE, 1),
        ]
    if surround == "junction":
        a, b = 1.3 * L, 0.3 * L
        return [
            (_rect(-a, a, -b, b), _ROAD, -1),
            (_rect(-b, b, -a, a), _ROAD, -1),
        ]
    if surround == "water band":
        return [(_rect(-0.32 * L, 0.32 * L, -0.75 * L, 0.75 * L), _WATER, -1)]
    if surround == "shore":
        return [(_rect(-0.2 * L, 0.75 * L, -0.75 * L, 0.75 * L), _WATER, -1)]
    if surround in _GROUND:
        pad = [(_rect(-0.7 * L - 4, 0.7 * L + 4, -0.7 * W - 4, 0.7 * W + 4), _GROUND[surround], -1)]
        if surround == "apron":
            pad.append(
                (_rect(-0.7 * L - 4, 0.7 * L + 4, -0.01 * L - 0.5, 0.01 * L + 0.5), (212, 182, 44), -1)
            )
        return pad
    raise ValueError(f"unknown surround {surround!r}")


def _width(recipe: Recipe, length: float) -> float:
    return length / recipe.aspect


def _place(points: np.ndarray, center: tuple[float, float], angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, s], [-s, c]])
    return points @ rot + np.asarray(center, dtype=np.float64)


def _draw(canvas: np.ndarray, parts, center: tuple[float, float], angle: float) -> None:
    for poly, color, thickness in parts:
        pts = np.round(_place(poly, center, angle) * 16).astype(np.int32)
        if thickness < 0:
            cv2.fillPoly(canvas, [pts], color, lineType=cv2.LINE_AA, shift=4)
        else:
            cv2.polylines(canvas, [pts], True, color, thickness=thickness, lineType=cv2.LINE_AA, shift=4)


def surround_radius(recipe: Recipe, length: float) -> float:
    """Radius of the smallest circle about the object's centre that holds its object and surround."""
    width = _width(recipe, length)
    polys = [_outline(recipe.shape, length, width)]
    polys += [p for p, _, _ in _surround_parts(recipe.surround, length, width)]
    return float(max(np.linalg.norm(p, axis=1).max() for p in polys))


def _object_radius(recipe: Recipe, length: float) -> float:
    return float(np.linalg.norm(_outline(recipe.shape, length, _width(recipe, length)), axis=1).max())


def draw_surround(
    canvas: np.ndarray, recipe: Recipe, center: tuple[float, float], length: float, angle: float
) -> None:
    """Draw the recipe's local surround onto an (H, W, 3) uint8 RGB canvas, in place."""
    _draw(canvas, _surround_parts(recipe.surround, length, _width(recipe, length)), center, angle)


def draw_object(
    canvas: np.ndarray, recipe: Recipe, center: tuple[float, float], length: float, angle: float
) -> np.ndarray:
    """Draw the object onto an (H, W, 3) uint8 RGB canvas, in place; returns its outline (N, 2) in pixels."""
    width = _width(recipe, length)
    outline = _outline(recipe.shape, length, width)
    _draw(canvas, [(outline, recipe.color, -1)], center, angle)
    _draw(canvas, _details(recipe.shape, length, width, recipe.color), center, angle)
    return _place(outline, center, angle)


# ---------------------------------------------------------------------------
# Scenes and splits.


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Neutral earth-toned ground with low-frequency variation, (H, W, 3) float32."""
    base = rng.uniform((118, 110, 92), (168, 160, 142))
    # Mostly brightness variation (shared by the channels), a little tint.
    coarse = rng.normal(0.0, 12.0, size=(6, 6, 1)) + rng.normal(0.0, 4.0, size=(6, 6, 3))
    coarse = cv2.resize(coarse.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    return base.astype(np.float32) + coarse


# ---------------------------------------------------------------------------
# Scene types: what kind of place an image shows. A scene type decides which
# classes appear in it, where (ships and piers on its water, the rest on land)
# and how its ground looks, so that the whole image carries information about
# the object classes, as real aerial scenes do (SCORE's global context). The
# objects themselves and their local surrounds are drawn exactly as in a scene
# without a type: a hull on its water patch is still a ship and on its road
# strip a small vehicle, whatever the scene.


@dataclass(frozen=True)
class SceneType:
    """One kind of place.

    Attributes:
        name: scene-type name (also its first caption name).
        synonyms: other names of the scene type, for captions.
        ground: how the ground is painted (a key of ``_GROUND_PAINTERS``).
    """

    name: str
    synonyms: tuple[str, ...]
    ground: str


SCENE_TYPES: dict[str, SceneType] = {
    t.name: t
    for t in (
        SceneType("harbour", ("harbor", "port", "seaport", "marina"), "coast"),
        SceneType("airport", ("airfield", "aerodrome", "airport apron"), "runway"),
        SceneType("parking lot", ("car park", "parking area", "parking garage roof"), "parking"),
        SceneType("sports ground", ("sports field", "sports complex", "playing fields"), "lawn"),
        SceneType("storage depot", ("tank farm", "oil depot", "industrial area"), "depot"),
        SceneType("residential area", ("neighbourhood", "suburb", "housing estate"), "houses"),
        SceneType("farmland", ("fields", "cropland", "agricultural land"), "fields"),
        SceneType("highway", ("expressway", "motorway", "freeway"), "motorway"),
    )
}

# Scene types of each concept (a concept may belong to several).
_CONCEPT_SCENES: dict[str, tuple[str, ...]] = {
    "ship": ("harbour",),
    "harbor": ("harbour",),
    "bridge": ("harbour", "highway"),
    "small vehicle": ("parking lot", "residential area", "highway"),
    "large vehicle": ("parking lot", "highway", "storage depot"),
    "plane": ("airport",),
    "tennis court": ("sports ground", "residential area"),
    "basketball court": ("sports ground", "residential area"),
    "baseball diamond": ("sports ground",),
    "ground track field": ("sports ground",),
    "soccer ball field": ("sports ground",),
    "swimming pool": ("residential area", "sports ground"),
    "storage tank": ("storage depot",),
    "roundabout": ("residential area", "highway"),
    "intersection": ("residential area", "highway"),
}

# Names without a concept: their scene types by keyword, then by family.
_NAME_SCENES = (
    (re.compile(r"airport|helipad|helicopter"), ("airport",)),
    (re.compile(r"crane|dock|wharf"), ("harbour",)),
    (re.compile(r"chimney|factory|silo"), ("storage depot",)),
    (re.compile(r"windmill|dam|\btractor\b|excavator|farm"), ("farmland",)),
    (re.compile(r"expressway|overpass|toll|service area"), ("highway",)),
    (re.compile(r"golf|stadium|court|field"), ("sports ground",)),
    (re.compile(r"station|house|school|church"), ("residential area",)),
)


def scene_types_of(class_name: str) -> tuple[str, ...]:
    """The scene types in which a class appears.

    A concept's own types; for a hashed name, the types of its keyword (a
    dam on farmland, a chimney in a storage depot), else of its family
    (ships in a harbour), else one type derived from the name's hash.
    """
    recipe = recipe_for(class_name)
    if recipe.concept in _CONCEPT_SCENES:
        return _CONCEPT_SCENES[recipe.concept]
    name = recipe.concept.removeprefix("hashed: ")
    for pattern, scenes in _NAME_SCENES:
        if pattern.search(name):
            return scenes
    for pattern, family, _ in _FAMILIES:
        if pattern.search(name):
            return _CONCEPT_SCENES[family]
    names = list(SCENE_TYPES)
    return (names[zlib.crc32(name.encode("utf-8")) % len(names)],)


def _lines(canvas: np.ndarray, starts: np.ndarray, direction: np.ndarray, color, thickness: int) -> None:
    """Straight lines through each start point (N, 2) along a unit direction, across the whole canvas."""
    reach = 2.0 * max(canvas.shape[:2])
    for p in starts:
        a = np.round((p - reach * direction) * 16).astype(np.int32)
        b = np.round((p + reach * direction) * 16).astype(np.int32)
        # Anti-aliasing only for thin lines: thick ones are bands whose edges the final blur softens.
        line_type = cv2.LINE_AA if thickness <= 2 else cv2.LINE_8
        cv2.line(canvas, tuple(int(v) for v in a), tuple(int(v) for v in b), color, thickness, line_type, 4)


def _ground(
    rng: np.random.Generator, kind: str, height: int, width: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """Paint a scene type's ground: (H, W, 3) float32 canvas and its (H, W) water mask (None if dry)."""
    canvas = _background(rng, height, width)
    angle = float(rng.uniform(0.0, math.pi))
    along = np.array([math.cos(angle), math.sin(angle)])
    across = np.array([-along[1], along[0]])
    centre = np.array([width / 2.0, height / 2.0]) + rng.uniform(-0.2, 0.2, size=2) * (width, height)
    side = min(height, width)

    def tint(color, amount: float) -> None:
        canvas[:] = (1.0 - amount) * canvas + amount * np.asarray(color, np.float32)

    water = None
    if kind == "coast":
        ys, xs = np.mgrid[0:height, 0:width]
        water = ((xs - centre[0]) * across[0] + (ys - centre[1]) * across[1]) > 0
        canvas[water] = np.asarray(_WATER, np.float32) + rng.normal(0.0, 4.0, size=3).astype(np.float32)
    elif kind == "runway":
        tint(_GROUND["apron"], 0.6)
        half = float(rng.uniform(0.06, 0.09)) * side
        strip = np.array([centre - half * across, centre + half * across])
        _lines(canvas, strip.mean(0, keepdims=True), along, (58, 58, 62), int(2 * half))
        for t in np.arange(-1.5, 1.5, 0.08) * side:
            a, b = centre + (t - 0.02 * side) * along, centre + (t + 0.02 * side) * along
            cv2.line(canvas, tuple(int(v) for v in a), tuple(int(v) for v in b), _WHITE, 2)
    elif kind == "parking":
        tint(_GROUND["asphalt"], 0.8)
        step = float(rng.uniform(0.05, 0.08)) * side
        starts = centre + np.arange(-20, 21)[:, None] * step * across
        _lines(canvas, starts, along, (196, 196, 188), 1)
    elif kind == "lawn":
        tint(_GROUND["grass"], 0.75)
        step = float(rng.uniform(0.06, 0.1)) * side
        starts = centre + np.arange(-20, 21, 2)[:, None] * step * across
        _lines(canvas, starts, along, (88, 142, 72), int(step))
    elif kind == "depot":
        tint((196, 186, 160), 0.6)
        step = float(rng.uniform(0.12, 0.2)) * side
        starts = centre + np.arange(-8, 9)[:, None] * step * across
        _lines(canvas, starts, along, (150, 150, 150), 2)
    elif kind == "houses":
        step = float(rng.uniform(0.1, 0.14)) * side
        _lines(canvas, centre[None], along, _ROAD, max(3, int(0.05 * side)))
        _lines(canvas, centre[None], across, _ROAD, max(3, int(0.05 * side)))
        roof = rng.uniform((150, 70, 60), (190, 110, 90))
        for i in range(-8, 9):
            for j in range(-8, 9):
                if rng.random() < 0.45:
                    continue
                c = centre + (i + 0.5) * step * along + (j + 0.5) * step * across
                poly = _place(_rect(-0.25 * step, 0.25 * step, -0.18 * step, 0.18 * step), c, angle)
                shade = tuple(float(v) for v in roof * rng.uniform(0.8, 1.1))
                cv2.fillPoly(canvas, [np.round(poly).astype(np.int32)], shade)
    elif kind == "fields":
        step = float(rng.uniform(0.12, 0.2)) * side
        crops = ((96, 140, 64), (160, 150, 80), (130, 104, 70), (80, 120, 56), (180, 170, 100))
        for k in range(-10, 11):
            c = centre + (k + 0.5) * step * across
            color = crops[int(rng.integers(len(crops)))]
            _lines(canvas, c[None], along, tuple(0.7 * v + 40 for v in color), int(step) + 1)
    elif kind == "motorway":
        half = float(rng.uniform(0.09, 0.13)) * side
        _lines(canvas, centre[None], along, (80, 80, 84), int(2 * half))
        starts = centre + np.array([-0.5, 0.0, 0.5])[:, None] * half * across
        _lines(canvas, starts, along, (210, 210, 200), 1)
    else:
        raise ValueError(f"unknown ground {kind!r}")
    return canvas, water


_WATER_SURROUNDS = ("water", "shore", "water band")


class _Placement(NamedTuple):
    label: int
    recipe: Recipe
    center: tuple[float, float]
    length: float
    angle: float
    r_obj: float  # radius of the object about its centre, pixels
    r_all: float  # radius of object and surround, pixels


class Scene(NamedTuple):
    """One drawn scene: (H, W, 3) uint8 RGB image, per object (class index, outline (N, 2) px), its type."""

    image: np.ndarray
    objects: list[tuple[int, np.ndarray]]
    scene_type: str


def _next_class(class_queue: collections.deque, members: set[int]) -> int | None:
    """Remove and return the first queued class index in ``members`` (None if there is none)."""
    for i, label in enumerate(class_queue):
        if label in members:
            del class_queue[i]
            return label
    return None


def render_scene(
    rng: np.random.Generator,
    height: int,
    width: int,
    class_queue: collections.deque,
    class_names: Sequence[str],
    max_objects: int = 8,
    scene_type: str | None = None,
) -> Scene:
    """Draw one scene of a scene type with objects of the classes that belong to it.

    Args:
        rng: the split's random generator.
        height, width: image size in pixels.
        class_queue: class indices still to draw; refilled with a permutation when
            empty, so that every class appears about equally often over a split.
            The scene takes the first queued class that fits it, then the next
            queued ones of its type.
        class_names: the split's class names.
        max_objects: most objects per image (at least 3 are attempted).
        scene_type: a key of ``SCENE_TYPES``; None takes a type of the first
            queued class.

    Returns:
        The drawn :class:`Scene`.
    """
    members_of = {t: set() for t in SCENE_TYPES}
    for label, name in enumerate(class_names):
        for t in scene_types_of(name):
            members_of[t].add(label)
    if scene_type is None:
        if not class_queue:
            class_queue.extend(int(i) for i in rng.permutation(len(class_names)))
        options = scene_types_of(class_names[class_queue[0]])
        scene_type = options[int(rng.integers(len(options)))]
    elif scene_type not in SCENE_TYPES:
        raise ValueError(f"unknown scene type {scene_type!r}; choose from {list(SCENE_TYPES)}")
    members = members_of[scene_type]
    canvas_f, water = _ground(rng, SCENE_TYPES[scene_type].ground, height, width)
    canvas = np.clip(canvas_f, 0, 255).astype(np.uint8)
    placed: list[_Placement] = []
    side = min(height, width)
    refilled = False
    for _ in range(int(rng.integers(3, max_objects + 1))):
        label = _next_class(class_queue, members)
        if label is None and not refilled:
            # One new round of every class, so that a scene is not left empty.
            class_queue.extend(int(i) for i in rng.permutation(len(class_names)))
            refilled = True
            label = _next_class(class_queue, members)
        if label is None:
            break
        recipe = recipe_for(class_names[label])
        length = float(rng.uniform(*recipe.length)) * side
        angle = float(rng.uniform(0.0, 2.0 * math.pi))
        r_obj, r_all = _object_radius(recipe, length), surround_radius(recipe, length)
        wet = recipe.surround in _WATER_SURROUNDS
        for _attempt in range(30):
            center = (
                float(rng.uniform(r_obj + 1, width - r_obj - 1)),
                float(rng.uniform(r_obj + 1, height - r_obj - 1)),
            )
            # Ships, piers and bridges on the scene's water, everything else on land.
            if water is not None and bool(water[int(center[1]), int(center[0])]) != wet:
                continue
            # No surround may reach another object; surrounds may touch a little.
            if all(
                math.dist(center, p.center) > max(r_all + p.r_obj, p.r_all + r_obj, 0.8 * (r_all + p.r_all))
                for p in placed
            ):
                placed.append(_Placement(label, recipe, center, length, angle, r_obj, r_all))
                break
        else:
            # No room: the class goes back to the front of the queue.
            class_queue.appendleft(label)
            break
    for p in placed:
        draw_surround(canvas, p.recipe, p.center, p.length, p.angle)
    objects = [(p.label, draw_object(canvas, p.recipe, p.center, p.length, p.angle)) for p in placed]
    image = cv2.GaussianBlur(canvas, (3, 3), 0.6).astype(np.float32)
    image += rng.normal(0.0, 3.0, size=image.shape).astype(np.float32)
    return Scene(np.clip(np.round(image), 0, 255).astype(np.uint8), objects, scene_type)


def render_image(
    rng: np.random.Generator,
    height: int,
    width: int,
    class_queue: collections.deque,
    class_names: Sequence[str],
    max_objects: int = 8,
) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """Draw one scene (of the type of the first queued class); see :func:`render_scene`.

    Returns:
        The (H, W, 3) uint8 RGB image and, per object, its class index and outline (N, 2) in pixels.
    """
    scene = render_scene(rng, height, width, class_queue, class_names, max_objects)
    return scene.image, scene.objects


def _annotation(outline: np.ndarray, height: int, width: int) -> dict:
    polygon = [round(float(v), 2) for v in outline.reshape(-1)]
    rle = mask_utils.merge(mask_utils.frPyObjects([polygon], height, width))
    x0, y0 = outline.min(axis=0)
    x1, y1 = outline.max(axis=0)
    return {
        "segmentation": [polygon],
        "area": float(mask_utils.area(rle)),
        "bbox": [
            round(float(x0), 2),
            round(float(y0), 2),
            round(float(x1 - x0), 2),
            round(float(y1 - y0), 2),
        ],
        "iscrowd": 0,
    }


def write_split(
    split: SplitSpec, root: str, num_images: int, *, min_size: int = 256, max_size: int = 512, seed: int = 0
) -> dict:
    """Write one split under ``root`` in its DATASETS.md layout.

    Args:
        split: a row of ``SPLITS``.
        root: dataset root (what ``DETECTRON2_DATASETS`` will point at).
        num_images: images to write.
        min_size, max_size: range of image height and width in pixels (each drawn independently).
        seed: base seed; the split's generator is seeded with (seed, CRC32 of its name).

    Returns:
        The COCO dict written to the split's annotation file.
    """
    if not 32 <= min_size <= max_size:
        raise ValueError(f"need 32 <= min_size <= max_size, got {min_size}, {max_size}")
    rng = np.random.default_rng([seed, zlib.crc32(split.name.encode("utf-8"))])
    image_dir = os.path.join(root, split.image_dir)
    os.makedirs(image_dir, exist_ok=True)
    categories = [
        {"id": i + 1, "name": name, "supercategory": recipe_for(name).concept}
        for i, name in enumerate(split.class_names)
    ]
    images, annotations = [], []
    queue: collections.deque = collections.deque()
    for image_id in range(1, num_images + 1):
        height, width = (int(v) for v in rng.integers(min_size, max_size + 1, size=2))
        image, objects, scene_type = render_scene(rng, height, width, queue, split.class_names)
        file_name = f"{image_id:06d}.png"
        if not cv2.imwrite(os.path.join(image_dir, file_name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
            raise OSError(f"could not write {os.path.join(image_dir, file_name)}")
        images.append(
            {
                "id": image_id,
                "file_name": file_name,
                "height": height,
                "width": width,
                "scene_type": scene_type,
            }
        )
        for label, outline in objects:
            ann = {"id": len(annotations) + 1, "image_id": image_id, "category_id": label + 1}
            ann.update(_annotation(outline, height, width))
            annotations.append(ann)
    coco = {
        "info": {"description": f"SCORE synthetic scenes, split {split.name}", "seed": seed},
        "licenses": [],
        "categories": categories,
        "images": images,
        "annotations": annotations,
    }
    json_path = os.path.join(root, split.json_file)
    with open(json_path, "w", encoding="utf-8") as f:
        json.dump(coco, f, separators=(",", ":"))
    logger.info(
        "Wrote %s: %d images, %d instances -> %s", split.name, len(images), len(annotations), json_path
    )
    return coco


def write_synthetic_datasets(
    root: str,
    *,
    num_train: int = 48,
    num_val: int = 16,
    min_size: int = 256,
    max_size: int = 512,
    seed: int = 0,
    splits: Sequence[str] | None = None,
) -> list[str]:
    """Write synthetic data for the seven SCORE splits (or the named ones) under ``root``.

    Args:
        root: dataset root to write (point ``DETECTRON2_DATASETS`` at it).
        num_train: images per training split.
        num_val: images per validation split.
        min_size, max_size: range of image height and width in pixels.
        seed: base seed; the same seed writes byte-identical files.
        splits: registered names to write; None writes all seven.

    Returns:
        The names of the splits written.
    """
    return write_splits(
        SPLITS, write_split, root, num_train=num_train, num_val=num_val,
        min_size=min_size, max_size=max_size, seed=seed, splits=splits,
    )  # fmt: skip


def write_splits(
    table: Sequence,
    write,
    root: str,
    *,
    num_train: int,
    num_val: int,
    min_size: int,
    max_size: int,
    seed: int,
    splits: Sequence[str] | None,
) -> list[str]:
    """Write the splits of ``table`` named in ``splits`` (None: all) with ``write(split, root, count, ...)``.

    Training splits get ``num_train`` images, the others ``num_val``; an unknown name is an error
    naming the choices. Returns the names written.
    """
    by_name = {s.name: s for s in table}
    names = list(by_name) if splits is None else list(splits)
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ValueError(f"unknown splits {unknown}; choose from {list(by_name)}")
    for name in names:
        split = by_name[name]
        count = num_train if split.subset == "train" else num_val
        write(split, os.fspath(root), count, min_size=min_size, max_size=max_size, seed=seed)
    return names
