"""Synthetic land-cover scenes in the layout and with the class lists of the five semantic splits.

Every pixel of a land-cover scene is labelled. The scene is a partition of the
image into regions of land-cover *covers* (texture families: water ripples,
grass speckle, crop rows, plowed furrows, vineyard rows, canopy blobs...),
roads as bands across it, buildings as blocks of roofs, and the objects of
``synthetic_world.scenes`` (vehicles, ships, planes, pools, tanks...) with
their local surrounds on top. A cover's colour, pattern scale and contrast
vary from image to image within its family, so a class is its texture
statistics, not one colour.

As in the instance world, class names map onto covers by meaning
(``bare soil`` and ``bare land``, ``impervious surface`` and ``pavement``,
``low vegetation`` and ``grass``, ``road-non-flooded`` and ``road`` render
alike), while the seen flags are decided by the names alone; a name that is
neither a cover nor an object concept gets a texture from its name's hash.

The scene type (``synthetic_world.SCENE_TYPES``) decides which covers and
objects appear: crop rows, furrows and vineyards on farmland, roofs and pools
in a residential area, water and ships in a harbour. Labels are the split's
raw values (a class's index in its list; FAST's background 255), ignored
values included (FLAIR's "other", Potsdam's "clutter", FloodNet's
"Background").
"""

from __future__ import annotations

import collections
import hashlib
import logging
import math
import os
import zlib
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import cv2
import numpy as np

from score.data.datasets import SEM_SEG_SPLITS, SPLITS, SemSegSplitSpec
from score.vocabulary import canonical_class_name

from .scenes import (
    SCENE_TYPES,
    draw_object,
    draw_surround,
    recipe_for,
    scene_types_of,
    surround_radius,
    write_split,
    write_splits,
)

__all__ = [
    "COVERS",
    "Cover",
    "SemanticScene",
    "cover_for",
    "paint_cover",
    "render_semantic_scene",
    "IGNORED_NAMES",
    "painted_names",
    "write_semantic_datasets",
    "write_semantic_split",
]

logger = logging.getLogger(__name__)

RGB = tuple[int, int, int]

_ALL = tuple(SCENE_TYPES)


@dataclass(frozen=True)
class Cover:
    """How one land-cover concept is painted.

    Attributes:
        concept: cover name (a normalised class name or ``"hashed: <name>"``).
        color: base RGB colour (varied per image).
        pattern: ``plain``, ``speckle``, ``blobs``, ``stripes``, ``tiles``, ``ripples`` or ``roofs``.
        accent: RGB colour of the pattern.
        scale: pattern size in pixels (stripe period, blob radius, tile side).
        layout: ``area`` (fills regions of the partition), ``band`` (straight bands
            across the image) or ``blocks`` (rectangles of roofs).
        scenes: scene types in which the cover appears.
    """

    concept: str
    color: RGB
    pattern: str
    accent: RGB
    scale: float
    layout: str
    scenes: tuple[str, ...]


COVERS: dict[str, Cover] = {
    c.concept: c
    for c in (
        Cover("background", (140, 132, 115), "plain", (140, 132, 115), 1, "area", _ALL),
        Cover("water", (38, 72, 112), "ripples", (58, 96, 136), 9, "area",
              ("harbour", "farmland", "residential area", "sports ground")),
        Cover("grass", (82, 136, 62), "speckle", (104, 156, 76), 1.5, "area",
              ("sports ground", "residential area", "airport", "parking lot", "farmland", "highway")),
        Cover("road", (72, 72, 75), "plain", (72, 72, 75), 1, "band", _ALL),
        Cover("pavement", (178, 175, 168), "tiles", (146, 144, 138), 12, "area",
              ("parking lot", "airport", "storage depot", "residential area", "harbour", "highway")),
        Cover("tree", (44, 98, 46), "blobs", (30, 74, 34), 6, "area",
              ("residential area", "sports ground", "farmland", "highway")),
        Cover("forest land", (30, 66, 36), "blobs", (20, 48, 26), 3, "area",
              ("farmland", "highway", "harbour")),
        Cover("coniferous", (22, 56, 48), "speckle", (10, 34, 28), 2.5, "area", ("farmland", "highway")),
        Cover("deciduous", (84, 128, 50), "blobs", (104, 150, 62), 9, "area",
              ("farmland", "residential area")),
        Cover("agriculture land", (156, 164, 84), "stripes", (118, 140, 58), 9, "area", ("farmland",)),
        Cover("plowed land", (128, 92, 62), "stripes", (88, 60, 40), 5, "area", ("farmland",)),
        Cover("vineyard", (138, 112, 78), "stripes", (58, 108, 48), 12, "area", ("farmland",)),
        Cover("bare land", (176, 138, 96), "plain", (176, 138, 96), 1, "area",
              ("farmland", "storage depot", "airport", "highway")),
        Cover("barren land", (198, 188, 164), "speckle", (150, 140, 118), 3, "area",
              ("storage depot", "highway", "harbour")),
        Cover("urban land", (150, 140, 136), "roofs", (170, 96, 80), 10, "area",
              ("residential area", "storage depot")),
        Cover("brushwood", (112, 104, 62), "blobs", (58, 74, 36), 3.5, "area", ("farmland", "highway")),
        Cover("herbaceous vegetation", (136, 154, 72), "ripples", (160, 170, 90), 4, "area",
              ("farmland", "sports ground")),
        Cover("pervious surface", (124, 126, 88), "speckle", (96, 110, 70), 4, "area",
              ("residential area", "storage depot")),
        Cover("buildings", (186, 96, 76), "plain", (120, 60, 50), 1, "blocks",
              ("residential area", "harbour", "storage depot", "airport")),
        Cover("building flooded", (150, 138, 118), "speckle", (112, 96, 64), 3, "blocks",
              ("residential area",)),
        Cover("road flooded", (122, 106, 74), "ripples", (140, 124, 88), 6, "band",
              ("residential area", "highway")),
    )
}  # fmt: skip

# Other spellings of a cover's meaning in the five semantic class lists.
_COVER_ALIASES = {
    "bare soil": "bare land",
    "agricultural land": "agriculture land",
    "impervious surface": "pavement",
    "low vegetation": "grass",
    "building": "buildings",
    "building non flooded": "buildings",
    "road non flooded": "road",
}

# Object concepts under other names in the semantic lists (drawn by ``recipe_for``).
_OBJECT_ALIASES = {"car": "small vehicle", "pool": "swimming pool"}

# Names that are land cover although they have no cover of their own: a texture from the name's hash.
_HASHED_COVERS = ("other", "clutter")
_PATTERNS = ("plain", "speckle", "blobs", "stripes", "tiles", "ripples")

# The cover under an object's local surround, when the split has a class of it.
_SURROUND_COVER = {
    "water": "water",
    "water band": "water",
    "shore": "water",
    "road": "road",
    "junction": "road",
    "grass": "grass",
    "asphalt": "pavement",
    "concrete": "pavement",
    "apron": "pavement",
    "soil": "bare land",
}


def _canonical(class_name: str) -> str:
    name = canonical_class_name(class_name).split(",")[0].strip()
    return _COVER_ALIASES.get(name, name)


def cover_for(class_name: str) -> Cover | None:
    """The cover of a land-cover class name (its concept's, or one from its hash); None for objects."""
    name = _canonical(class_name)
    if name in COVERS:
        return COVERS[name]
    if name not in _HASHED_COVERS:
        return None
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    color = tuple(40 + b % 190 for b in digest[:3])
    accent = tuple(40 + b % 190 for b in digest[3:6])
    pattern = _PATTERNS[digest[6] % len(_PATTERNS)]
    return Cover(f"hashed: {name}", color, pattern, accent, 2 + digest[7] % 8, "area", _ALL)


def object_recipe(class_name: str):
    """The ``synthetic_world`` recipe of an object class name of a semantic list."""
    name = canonical_class_name(class_name)
    return recipe_for(_OBJECT_ALIASES.get(name, name))


def _scene_types(class_name: str) -> tuple[str, ...]:
    cover = cover_for(class_name)
    if cover is not None:
        return cover.scenes
    name = canonical_class_name(class_name)
    return scene_types_of(_OBJECT_ALIASES.get(name, name))


# ---------------------------------------------------------------------------
# Textures.


def _jitter(rng: np.random.Generator, color: RGB, spread: float) -> np.ndarray:
    """A colour varied within its family: overall brightness and a little tint."""
    return np.asarray(color, np.float32) * float(rng.uniform(1 - spread, 1 + spread)) + rng.normal(
        0.0, 5.0, size=3
    ).astype(np.float32)


def paint_cover(rng: np.random.Generator, cover: Cover, height: int, width: int) -> np.ndarray:
    """A (H, W, 3) float32 texture of a cover, with this image's variation of its family."""
    base = _jitter(rng, cover.color, 0.08)
    accent = _jitter(rng, cover.accent, 0.08)
    scale = cover.scale * float(rng.uniform(0.8, 1.25))
    tex = np.empty((height, width, 3), np.float32)
    tex[:] = base
    # Low-frequency brightness variation shared by the channels.
    coarse = rng.normal(0.0, 7.0, size=(5, 5, 1)).astype(np.float32)
    tex += cv2.resize(coarse, (width, height), interpolation=cv2.INTER_LINEAR)[..., None]
    angle = float(rng.uniform(0.0, math.pi))
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    along = xs * math.cos(angle) + ys * math.sin(angle)
    if cover.pattern == "speckle":
        dots = (rng.random((height, width)) < 0.25).astype(np.float32)
        dots = cv2.GaussianBlur(dots, (0, 0), scale / 2)
        dots = np.clip(dots / max(float(dots.max()), 1e-6) * 1.6, 0, 1)[..., None]
        tex = (1 - dots) * tex + dots * accent
    elif cover.pattern == "blobs":
        mask = np.zeros((height, width), np.uint8)
        count = int(0.9 * height * width / (math.pi * scale * scale))
        for x, y, r in zip(
            rng.uniform(0, width, count), rng.uniform(0, height, count), rng.uniform(0.7, 1.3, count) * scale
        ):
            cv2.circle(mask, (int(x), int(y)), max(1, int(r)), 1, -1)
        edge = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), max(0.8, scale / 4))[..., None]
        tex = (1 - 0.8 * edge) * tex + 0.8 * edge * accent
    elif cover.pattern == "stripes":
        duty = float(rng.uniform(0.35, 0.55))
        rows = ((along % scale) < duty * scale).astype(np.float32)
        rows = cv2.GaussianBlur(rows, (0, 0), 0.7)[..., None]
        tex = (1 - rows) * tex + rows * accent
    elif cover.pattern == "tiles":
        across = -xs * math.sin(angle) + ys * math.cos(angle)
        lines = (((along % scale) < 1.5) | ((across % scale) < 1.5)).astype(np.float32)[..., None]
        tex = (1 - 0.7 * lines) * tex + 0.7 * lines * accent
    elif cover.pattern == "ripples":
        wave = 0.5 + 0.5 * np.sin(2 * math.pi * along / scale + rng.normal(0, 0.6, size=(height, width)))
        wave = cv2.GaussianBlur(wave.astype(np.float32), (0, 0), 1.0)[..., None]
        tex = (1 - 0.6 * wave) * tex + 0.6 * wave * accent
    elif cover.pattern == "roofs":
        step = max(4, int(round(scale)))
        for y in range(0, height, step):
            for x in range(0, width, step):
                if rng.random() < 0.45:
                    continue
                w, h = (int(v) for v in rng.integers(step // 2, step, size=2))
                roof = accent * float(rng.uniform(0.7, 1.2))
                cv2.rectangle(tex, (x, y), (x + w - 1, y + h - 1), tuple(float(v) for v in roof), -1)
    elif cover.pattern != "plain":
        raise ValueError(f"unknown pattern {cover.pattern!r}")
    tex += rng.normal(0.0, 3.0, size=tex.shape).astype(np.float32)
    return tex


# ---------------------------------------------------------------------------
# Scenes.


class SemanticScene(NamedTuple):
    """One land-cover scene: (H, W, 3) uint8 RGB image, (H, W) uint8 raw label, its scene type."""

    image: np.ndarray
    label: np.ndarray
    scene_type: str


def _partition(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """(H, W) int cell index of a warped Voronoi partition into ``cells`` regions."""
    seeds = rng.uniform((0, 0), (width, height), size=(cells, 2)).astype(np.float32)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    side = min(height, width)
    warp = [
        cv2.resize(rng.normal(0, 0.08 * side, size=(4, 4)).astype(np.float32), (width, height))
        for _ in range(2)
    ]
    dist = (xs[None] + warp[0][None] - seeds[:, 0, None, None]) ** 2 + (
        ys[None] + warp[1][None] - seeds[:, 1, None, None]
    ) ** 2
    return dist.argmin(0)


def _band_mask(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(H, W) bool straight band across the image, 5 to 9 % of its shorter side wide."""
    side = min(height, width)
    mask = np.zeros((height, width), np.uint8)
    angle = float(rng.uniform(0.0, math.pi))
    d = np.array([math.cos(angle), math.sin(angle)])
    c = rng.uniform((0.2 * width, 0.2 * height), (0.8 * width, 0.8 * height))
    a, b = c - 2 * side * d, c + 2 * side * d
    thickness = max(3, int(rng.uniform(0.05, 0.09) * side))
    cv2.line(mask, tuple(int(v) for v in a), tuple(int(v) for v in b), 1, thickness)
    return mask.astype(bool)


def _blocks(rng: np.random.Generator, height: int, width: int) -> list[np.ndarray]:
    """Outlines (4, 2) of 4 to 9 building blocks, all turned by one angle."""
    side = min(height, width)
    angle = float(rng.uniform(0.0, math.pi / 2))
    c, s = math.cos(angle), math.sin(angle)
    blocks = []
    for _ in range(int(rng.integers(4, 10))):
        w, h = rng.uniform(0.05, 0.13, size=2) * side
        corners = np.array([[-w, -h], [w, -h], [w, h], [-w, h]]) / 2
        blocks.append(corners @ np.array([[c, s], [-s, c]]) + rng.uniform((0, 0), (width, height)))
    return blocks


def render_semantic_scene(
    rng: np.random.Generator,
    height: int,
    width: int,
    class_queue: collections.deque,
    class_names: Sequence[str],
    *,
    background: int | None = None,
    max_objects: int = 5,
    scene_type: str | None = None,
) -> SemanticScene:
    """Draw one land-cover scene of a scene type with the covers and objects of the split that belong to it.

    Args:
        rng: the split's random generator.
        height, width: image size in pixels.
        class_queue: class indices still to draw; refilled with a permutation when empty, so
            that every class appears about equally often over a split. The scene takes the
            first queued class, a scene type of it, then the queued classes of that type.
        class_names: the split's class names by raw label value.
        background: raw value of pixels that no class covers (a split without land cover,
            FAST: 255); None paints a partition of the split's covers under everything.
        max_objects: most objects per image.
        scene_type: a key of ``SCENE_TYPES``; None takes a type of the first queued class.

    Returns:
        The drawn :class:`SemanticScene`.
    """
    covers = {i: cover_for(n) for i, n in enumerate(class_names)}
    covers = {i: c for i, c in covers.items() if c is not None}
    if background is None and not covers:
        raise ValueError("a split without land-cover classes needs a background value")
    if not class_queue:
        class_queue.extend(int(i) for i in rng.permutation(len(class_names)))
    if scene_type is None:
        options = _scene_types(class_names[class_queue[0]])
        scene_type = options[int(rng.integers(len(options)))]
    elif scene_type not in SCENE_TYPES:
        raise ValueError(f"unknown scene type {scene_type!r}; choose from {list(SCENE_TYPES)}")
    members = [i for i in range(len(class_names)) if scene_type in _scene_types(class_names[i])]
    queued = [i for i in class_queue if i in members]
    order = queued + [i for i in rng.permutation(members) if int(i) not in queued]

    def of_layout(layout: str, most: int) -> list[int]:
        return [int(i) for i in order if i in covers and covers[i].layout == layout][:most]

    areas = of_layout("area", int(rng.integers(2, 5)))
    bands = of_layout("band", int(rng.integers(0, 3)))
    blocks = of_layout("blocks", int(rng.integers(0, 2)))
    objects = [int(i) for i in order if i not in covers][: int(rng.integers(1, max_objects + 1))]
    if background is None and not areas:
        areas = [int(rng.choice([i for i, c in covers.items() if c.layout == "area"]))]
    for i in areas + bands + blocks + objects:
        if i in class_queue:
            class_queue.remove(i)

    canvas = np.zeros((height, width, 3), np.float32)
    label = np.full((height, width), 255 if background is None else background, np.uint8)
    if areas:
        cells = _partition(rng, height, width, int(rng.integers(len(areas) + 1, len(areas) + 4)))
        owner = [areas[k] for k in range(len(areas))]
        owner += [areas[int(k)] for k in rng.integers(len(areas), size=cells.max() + 1 - len(areas))]
        for cls in areas:
            mask = np.isin(cells, [k for k, o in enumerate(owner) if o == cls])
            canvas[mask] = paint_cover(rng, covers[cls], height, width)[mask]
            label[mask] = cls
    else:
        canvas[:] = paint_cover(rng, COVERS["background"], height, width)
    for cls in bands:
        mask = _band_mask(rng, height, width)
        canvas[mask] = paint_cover(rng, covers[cls], height, width)[mask]
        label[mask] = cls
    for cls in blocks:
        tex = paint_cover(rng, covers[cls], height, width)
        for outline in _blocks(rng, height, width):
            mask = np.zeros((height, width), np.uint8)
            cv2.fillPoly(mask, [np.round(outline).astype(np.int32)], 1)
            mask = mask.astype(bool)
            # Each roof its own shade; a darker rim reads as the building's edge.
            canvas[mask] = tex[mask] * float(rng.uniform(0.8, 1.15))
            cv2.polylines(canvas, [np.round(outline).astype(np.int32)], True, (60, 56, 52), 1)
            label[mask] = cls
    _place_objects(rng, canvas, label, objects, class_names, covers)
    image = cv2.GaussianBlur(canvas, (3, 3), 0.6)
    return SemanticScene(np.clip(np.round(image), 0, 255).astype(np.uint8), label, scene_type)


def _place_objects(rng, canvas, label, objects, class_names, covers) -> None:
    """Draw the objects with their surrounds, without overlap; label objects and surrounds in place."""
    height, width = label.shape
    side = min(height, width)
    by_cover = {c.concept: i for i, c in covers.items()}
    placed: list[tuple[tuple[float, float], float]] = []
    image = np.clip(canvas, 0, 255).astype(np.uint8)
    for cls in objects:
        recipe = object_recipe(class_names[cls])
        length = float(rng.uniform(*recipe.length)) * side
        r_all = surround_radius(recipe, length)
        if 2 * r_all + 2 >= side:
            continue
        for _attempt in range(20):
            center = (
                float(rng.uniform(r_all + 1, width - r_all - 1)),
                float(rng.uniform(r_all + 1, height - r_all - 1)),
            )
            if all(math.dist(center, c) > r_all + r for c, r in placed):
                break
        else:
            continue
        placed.append((center, r_all))
        angle = float(rng.uniform(0.0, 2.0 * math.pi))
        before = image.copy()
        draw_surround(image, recipe, center, length, angle)
        surround_cls = by_cover.get(_SURROUND_COVER.get(recipe.surround, ""))
        if surround_cls is not None:
            label[np.any(image != before, axis=-1)] = surround_cls
        outline = draw_object(image, recipe, center, length, angle)
        mask = np.zeros((height, width), np.uint8)
        cv2.fillPoly(mask, [np.round(outline).astype(np.int32)], 1)
        label[mask.astype(bool)] = cls
    canvas[:] = image


# ---------------------------------------------------------------------------
# Splits.

# Raw values that a split ignores but whose pixels are still painted (FLAIR's "other",
# Potsdam's "clutter"): the name of what is painted there.
IGNORED_NAMES: dict[str, dict[int, str]] = {"flair": {12: "other"}, "potsdam": {5: "clutter"}}


def painted_names(split: SemSegSplitSpec) -> list[str]:
    """The class names a split's scenes are painted with, by raw label value (ignored values included)."""
    values = range(len(split.class_names)) if split.label_values is None else split.label_values
    by_value = dict(zip(values, split.class_names))
    by_value.update(IGNORED_NAMES.get(split.family, {}))
    if sorted(by_value) != list(range(len(by_value))):
        raise ValueError(f"split {split.name}: raw values {sorted(by_value)} are not 0..K-1")
    return [by_value[v] for v in range(len(by_value))]


def write_semantic_split(
    split: SemSegSplitSpec,
    root: str,
    num_images: int,
    *,
    min_size: int = 256,
    max_size: int = 320,
    seed: int = 0,
) -> list[str]:
    """Write one semantic split under ``root`` in its registered layout: images and single-channel
    8-bit PNG labels of the same stem, with the split's raw values.

    A split with land-cover classes is covered everywhere; one without (FAST) is written as
    its synthetic instance split (the same images) with the objects rasterised on 255.

    Returns:
        The image file names written.
    """
    if not 32 <= min_size <= max_size:
        raise ValueError(f"need 32 <= min_size <= max_size, got {min_size}, {max_size}")
    names = painted_names(split)
    if not any(cover_for(n) is not None for n in names):
        return _write_object_labels(split, root, num_images, min_size, max_size, seed)
    rng = np.random.default_rng([seed, zlib.crc32(split.name.encode("utf-8"))])
    image_dir = os.path.join(root, split.image_dir)
    label_dir = os.path.join(root, split.label_dir)
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(label_dir, exist_ok=True)
    queue: collections.deque = collections.deque()
    written = []
    for index in range(1, num_images + 1):
        height, width = (int(v) for v in rng.integers(min_size, max_size + 1, size=2))
        scene = render_semantic_scene(rng, height, width, queue, names)
        stem = f"{index:06d}"
        image_path = os.path.join(image_dir, f"{stem}.{split.image_ext}")
        params = [cv2.IMWRITE_JPEG_QUALITY, 95] if split.image_ext in ("jpg", "jpeg") else []
        if not cv2.imwrite(image_path, cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR), params):
            raise OSError(f"could not write {image_path}")
        label_path = os.path.join(label_dir, f"{stem}.{split.label_ext}")
        if not cv2.imwrite(label_path, scene.label):
            raise OSError(f"could not write {label_path}")
        written.append(os.path.basename(image_path))
    logger.info("Wrote %s: %d images -> %s", split.name, num_images, image_dir)
    return written


def _write_object_labels(
    split: SemSegSplitSpec, root: str, num_images: int, min_size: int, max_size: int, seed: int
) -> list[str]:
    """Labels of an objects-only split (FAST): write (or rewrite byte-identically) the synthetic
    instance split of the same family and images, and rasterise its polygons on 255."""
    instance = next(s for s in SPLITS if s.family == split.family and s.image_dir == split.image_dir)
    if tuple(instance.class_names) != tuple(split.class_names):
        raise ValueError(f"{split.name} and {instance.name} list different classes")
    coco = write_split(instance, root, num_images, min_size=min_size, max_size=max_size, seed=seed)
    label_dir = os.path.join(root, split.label_dir)
    os.makedirs(label_dir, exist_ok=True)
    by_image = collections.defaultdict(list)
    for ann in coco["annotations"]:
        by_image[ann["image_id"]].append(ann)
    for image in coco["images"]:
        label = np.full((image["height"], image["width"]), 255, np.uint8)
        for ann in by_image[image["id"]]:
            polygon = np.round(np.asarray(ann["segmentation"][0]).reshape(-1, 2)).astype(np.int32)
            cv2.fillPoly(label, [polygon], ann["category_id"] - 1)
        path = os.path.join(label_dir, f"{os.path.splitext(image['file_name'])[0]}.{split.label_ext}")
        if not cv2.imwrite(path, label):
            raise OSError(f"could not write {path}")
    logger.info("Wrote %s: labels of %d images of %s", split.name, len(coco["images"]), instance.name)
    return [image["file_name"] for image in coco["images"]]


def write_semantic_datasets(
    root: str,
    *,
    num_train: int = 320,
    num_val: int = 24,
    min_size: int = 256,
    max_size: int = 320,
    seed: int = 0,
    splits: Sequence[str] | None = None,
) -> list[str]:
    """Write synthetic data for the semantic splits (``SEM_SEG_SPLITS``, or the named ones) under ``root``.

    Args:
        root: dataset root to write (point ``DETECTRON2_DATASETS`` at it).
        num_train: images per training split.
        num_val: images per validation split.
        min_size, max_size: range of image height and width in pixels.
        seed: base seed; the same seed writes byte-identical files.
        splits: registered names to write; None writes all.

    Returns:
        The names of the splits written.
    """
    return write_splits(
        SEM_SEG_SPLITS, write_semantic_split, root, num_train=num_train, num_val=num_val,
        min_size=min_size, max_size=max_size, seed=seed, splits=splits,
    )  # fmt: skip
