#!/usr/bin/env python
"""Write a large synthetic GeoTIFF scene (for tiled inference and its memory check).

The scene is textured ground with rectangular "buildings", round "storage
tanks" and elongated "ships" of random colours, in a projected CRS (UTM 33N
by default, 0.5 m pixels). It is written strip by strip, so even a
20000 x 20000 scene needs only one strip in memory. With ``--landcover`` the
scene is land cover instead (every pixel a class: the texture families, roads,
roof blocks and objects of synthetic_world/landcover.py, LandDiscover50K's
classes), a mosaic of independently drawn square blocks (``--block`` px), one
row of blocks in memory at a time. Examples:

    python tools/make_geotiff_scene.py --output /tmp/scene_8000.tif --size 8000
    python tools/make_geotiff_scene.py --output /tmp/landcover_2000.tif --size 2000 --landcover
"""

from __future__ import annotations

import argparse
import collections
import logging
from typing import List, Tuple

import cv2
import numpy as np
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window

logger = logging.getLogger("make_geotiff_scene")

# Rows written per strip (a multiple of the 256 px internal tiles).
_STRIP = 256
# One object per this many square pixels on average.
_PIXELS_PER_OBJECT = 40_000

Shape = Tuple[str, Tuple[int, int, int], tuple]


def random_objects(height: int, width: int, rng: np.random.Generator) -> List[Shape]:
    """Objects as (kind, colour, geometry) in scene pixels: rectangles, circles, rotated ellipses."""
    objects: List[Shape] = []
    for _ in range(max(1, height * width // _PIXELS_PER_OBJECT)):
        kind = rng.choice(["building", "tank", "ship"])
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        if kind == "building":
            w, h = (int(v) for v in rng.integers(20, 160, size=2))
            objects.append((kind, colour, (x, y, x + w, y + h)))
        elif kind == "tank":
            objects.append((kind, colour, (x, y, int(rng.integers(8, 40)))))
        else:
            axes = (int(rng.integers(25, 90)), int(rng.integers(5, 14)))
            objects.append((kind, colour, (x, y, axes, float(rng.uniform(0, 180)))))
    return objects


def _draw(strip: np.ndarray, row0: int, objects: List[Shape]) -> None:
    """Draw the objects on a strip whose first row is scene row ``row0`` (cv2 clips what lies outside)."""
    for kind, colour, geometry in objects:
        if kind == "building":
            x0, y0, x1, y1 = geometry
            if y1 < row0 or y0 >= row0 + strip.shape[0]:
                continue
            cv2.rectangle(strip, (x0, y0 - row0), (x1, y1 - row0), colour, thickness=-1)
        elif kind == "tank":
            x, y, r = geometry
            if y + r < row0 or y - r >= row0 + strip.shape[0]:
                continue
            cv2.circle(strip, (x, y - row0), r, colour, thickness=-1)
        else:
            x, y, axes, angle = geometry
            if y + axes[0] < row0 or y - axes[0] >= row0 + strip.shape[0]:
                continue
            cv2.ellipse(strip, (x, y - row0), axes, angle, 0, 360, colour, thickness=-1)


def geotiff_profile(size: int, crs: str, pixel_size: float, origin: Tuple[float, float]) -> dict:
    """rasterio profile of a size x size scene on a north-up grid: tiled 256 px, deflate (no bands yet)."""
    return {
        "driver": "GTiff",
        "height": size,
        "width": size,
        "crs": crs,
        "transform": from_origin(origin[0], origin[1], pixel_size, pixel_size),
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "deflate",
    }


def make_scene(
    path: str,
    size: int,
    *,
    seed: int = 0,
    dtype: str = "uint8",
    crs: str = "EPSG:32633",
    pixel_size: float = 0.5,
    origin: Tuple[float, float] = (500_000.0, 5_000_000.0),
) -> int:
    """Write a size x size RGB GeoTIFF (tiled, deflate) and return the number of objects drawn.

    ``dtype`` "uint16" stores 12-bit values (0..4095), as many satellite products do.
    """
    rng = np.random.default_rng(seed)
    objects = random_objects(size, size, rng)
    profile = geotiff_profile(size, crs, pixel_size, origin)
    profile.update(count=3, dtype=dtype, photometric="RGB")
    with rasterio.open(path, "w", **profile) as dst:
        for row0 in range(0, size, _STRIP):
            rows = min(_STRIP, size - row0)
            ground = 110 + 12 * rng.standard_normal((rows, size, 1), dtype=np.float32)
            ground = ground + 6 * rng.standard_normal((rows, size, 3), dtype=np.float32)
            strip = np.clip(ground, 0, 255).astype(np.uint8)
            _draw(strip, row0, objects)
            data = strip.transpose(2, 0, 1)
            if dtype == "uint16":
                data = data.astype(np.uint16) * 16
            dst.write(data, window=Window(0, row0, size, rows))
    return len(objects)


def make_landcover_scene(
    path: str,
    size: int,
    *,
    seed: int = 0,
    block: int = 1000,
    labels: str | None = None,
    crs: str = "EPSG:32633",
    pixel_size: float = 0.5,
    origin: Tuple[float, float] = (500_000.0, 5_000_000.0),
) -> int:
    """Write a size x size RGB land-cover GeoTIFF (tiled, deflate); return the number of blocks drawn.

    Each ``block`` x ``block`` square is one scene of ``render_semantic_scene``
    with LandDiscover50K's classes (the last row and column of blocks are cut
    to the scene). ``labels``: also write the (1-band uint8) class of every
    pixel there, on the same grid (value = index in LandDiscover50K's list).
    """
    from score.data.datasets import SEM_SEG_SPLITS
    from synthetic_world.landcover import painted_names, render_semantic_scene

    split = next(s for s in SEM_SEG_SPLITS if s.name == "landdiscover50k_val_sem_seg")
    names = painted_names(split)
    rng = np.random.default_rng(seed)
    queue: collections.deque = collections.deque()
    profile = geotiff_profile(size, crs, pixel_size, origin)
    label_file = rasterio.open(labels, "w", count=1, dtype="uint8", **profile) if labels else None
    count = 0
    try:
        with rasterio.open(path, "w", count=3, dtype="uint8", photometric="RGB", **profile) as dst:
            for row0 in range(0, size, block):
                rows = min(block, size - row0)
                for col0 in range(0, size, block):
                    cols = min(block, size - col0)
                    scene = render_semantic_scene(rng, rows, cols, queue, names)
                    window = Window(col0, row0, cols, rows)
                    dst.write(scene.image.transpose(2, 0, 1), window=window)
                    if label_file is not None:
                        label_file.write(scene.label, 1, window=window)
                    count += 1
    finally:
        if label_file is not None:
            label_file.close()
    return count


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", required=True, help="GeoTIFF file to write")
    parser.add_argument("--size", type=int, default=8000, help="side of the square scene (px)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=["uint8", "uint16"], default="uint8")
    parser.add_argument("--crs", default="EPSG:32633", help="CRS of the scene (projected, metres)")
    parser.add_argument("--pixel-size", type=float, default=0.5, help="ground sampling distance (CRS units)")
    parser.add_argument("--landcover", action="store_true", help="land cover instead of objects on ground")
    parser.add_argument("--block", type=int, default=1000, help="side of the land-cover blocks (px)")
    parser.add_argument("--labels", help="--landcover: also write the class of every pixel to this GeoTIFF")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.landcover:
        if args.dtype != "uint8":
            parser.error("--landcover scenes are uint8")
        blocks = make_landcover_scene(
            args.output,
            args.size,
            seed=args.seed,
            block=args.block,
            labels=args.labels,
            crs=args.crs,
            pixel_size=args.pixel_size,
        )
        logger.info("wrote %s: %d x %d px land cover, %d blocks", args.output, args.size, args.size, blocks)
        return
    count = make_scene(
        args.output, args.size, seed=args.seed, dtype=args.dtype, crs=args.crs, pixel_size=args.pixel_size
    )
    logger.info("wrote %s: %d x %d px, %d objects", args.output, args.size, args.size, count)


if __name__ == "__main__":
    main()
