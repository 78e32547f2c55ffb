"""The window grid of a scene far larger than the model's input (aerial scenes of 10^4 px a side).

Shorthand: T tile side (px), O overlap of neighbouring tiles (px), H x W the
scene. Boxes are integer pixel edges (x0, y0, x1, y1), end-exclusive, in
scene coordinates.

The scene is cut into T x T windows (row-major, stride T - O; the last
window of a row or column is moved back so that it ends at the scene border
instead of being padded). Each window is read on its own from a
:class:`SceneReader`: a numpy slice (:class:`ArrayReader`) or a rasterio
window of a GeoTIFF (:class:`score.predict.geotiff.GeoTiffReader`).
"""

from __future__ import annotations

from typing import List, Protocol, Sequence, Tuple

import numpy as np

__all__ = ["ArrayReader", "Box", "SceneReader", "hull", "intersect", "near", "row_starts", "tile_windows"]

Box = Tuple[int, int, int, int]


class SceneReader(Protocol):
    """What tiled inference needs from a scene: its size and windows of it as (h, w, 3) uint8."""

    height: int
    width: int

    def read(self, window: Box) -> np.ndarray: ...


class ArrayReader:
    """A scene already in memory: windows are numpy slices (views, no copy)."""

    def __init__(self, image: np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) image, got shape {image.shape}")
        self.image = image
        self.height, self.width = image.shape[:2]

    def read(self, window: Box) -> np.ndarray:
        x0, y0, x1, y1 = window
        return self.image[y0:y1, x0:x1]


def tile_windows(height: int, width: int, tile_size: int, overlap: int) -> List[Box]:
    """Row-major windows (x0, y0, x1, y1) of side ``tile_size`` covering an H x W scene.

    Neighbours overlap by at least ``overlap`` px; the last window of each row
    and column ends at the scene border (moved back, not padded), so all
    windows are T x T unless the scene itself is smaller than T.
    """
    if tile_size <= 0:
        raise ValueError(f"tile size must be positive, got {tile_size}")
    if not 0 <= overlap < tile_size:
        raise ValueError(f"tile overlap must be in [0, tile size {tile_size}), got {overlap}")

    def starts(length: int) -> List[int]:
        if length <= tile_size:
            return [0]
        positions = list(range(0, length - tile_size, tile_size - overlap))
        return positions + [length - tile_size]

    return [
        (x, y, min(x + tile_size, width), min(y + tile_size, height))
        for y in starts(height)
        for x in starts(width)
    ]


def intersect(a: Box, b: Box) -> Box:
    """The common part of two boxes (x0 >= x1 or y0 >= y1 when they do not overlap)."""
    return max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])


def hull(boxes: Sequence[Box]) -> Box:
    """The smallest box holding all ``boxes``."""
    return (
        min(b[0] for b in boxes),
        min(b[1] for b in boxes),
        max(b[2] for b in boxes),
        max(b[3] for b in boxes),
    )


def near(a: Box, b: Box) -> bool:
    """Boxes that overlap or touch (share an edge or a corner)."""
    return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]


def row_starts(windows: Sequence[Box]) -> List[int]:
    """Indices of the first tile of each row of row-major ``windows``."""
    return [i for i, w in enumerate(windows) if i == 0 or w[1] != windows[i - 1][1]]
