"""Class maps written out: GeoTIFF (tiled, colour table, class names), COG, palette PNG, polygons.

Shorthand: K classes, H x W the scene. A class map is one band of class
values 0..K-1 (uint8, uint16 past 254 classes) with a no-data value
(:func:`nodata_value`: 255, 65535 for uint16) where the input had no data or
no class was confident enough.

Everything here reads and writes block by block or band by band: a class map
of 12000 x 12000 px is never held whole. The GeoTIFF is written from an
uncompressed raw file of the rows (:func:`write_class_geotiff`), the COG and
the PNG are GDAL copies of that GeoTIFF, and :func:`vectorize` polygonizes
bands of rows and joins the polygons that cross a band border.
"""

from __future__ import annotations

import json
import os
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import rasterio
import rasterio.features
import rasterio.shutil
import shapely.affinity
from affine import Affine
from detectron2.utils.colormap import colormap
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.windows import Window
from shapely.geometry import mapping, shape
from shapely.ops import unary_union

from ..fileio import atomic_write
from ..vocabulary import display_name, normalize_class_name
from .geojson import crs_member, write_feature_collection

__all__ = [
    "BLOCK",
    "class_colours",
    "class_dtype",
    "class_records",
    "gdal_copy",
    "nodata_value",
    "read_reduced",
    "vectorize",
    "write_class_geotiff",
    "write_classes_json",
]

# Side of the GeoTIFF's internal tiles (px); the raw rows are copied BLOCK rows at a time.
BLOCK = 256


def class_dtype(num_classes: int) -> np.dtype:
    """uint8 for up to 254 classes (255 is no data), uint16 past that."""
    return np.dtype(np.uint8) if num_classes < 255 else np.dtype(np.uint16)


def nodata_value(dtype: np.dtype) -> int:
    """The no-data value of a class map: 255 for uint8, 65535 for uint16."""
    return int(np.iinfo(dtype).max) if np.dtype(dtype) == np.uint16 else 255


def class_colours(num_classes: int) -> np.ndarray:
    """(K, 3) uint8 RGB colour of each class: detectron2's palette, as the instance overlays use."""
    palette = colormap(rgb=True, maximum=255).astype(np.uint8)
    return palette[np.arange(num_classes) % len(palette)]


def class_records(class_names: Sequence[str]) -> List[Dict]:
    """value, name (display name), synonyms and colour (#rrggbb) of each class."""
    colours = class_colours(len(class_names))
    return [
        {
            "value": i,
            "name": display_name(name),
            "synonyms": normalize_class_name(name),
            "colour": "#" + "".join(f"{int(c):02x}" for c in colours[i]),
        }
        for i, name in enumerate(class_names)
    ]


def write_classes_json(path: str, class_names: Sequence[str]) -> None:
    """The sidecar ``<stem>.classes.json``: the classes and the no-data value."""
    dtype = class_dtype(len(class_names))
    with atomic_write(path) as f:
        json.dump({"nodata": nodata_value(dtype), "classes": class_records(class_names)}, f, indent=1)
        f.write("\n")


def _raw_rows(path: str, dtype: np.dtype, height: int, width: int) -> np.ndarray:
    """The (H, W) raw file of rows, mapped read-only (nothing is read until sliced)."""
    if height * width == 0:
        return np.zeros((height, width), dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(height, width))


def write_class_geotiff(
    path: str,
    raw: str,
    *,
    height: int,
    width: int,
    dtype: np.dtype,
    nodata: float,
    transform: Optional[Affine],
    crs: Optional[CRS],
    class_names: Optional[Sequence[str]] = None,
) -> None:
    """A tiled, deflate-compressed single-band GeoTIFF from a raw file of (H, W) ``dtype`` rows.

    With ``class_names`` it is a class map: colour table (uint8), the classes
    as the "classes" tag (JSON) and one ``CLASS_<value>`` tag each. Without, a
    float band (the winning score). Written BLOCK rows at a time to ``path``
    (through a temporary name beside it), so its bytes depend on the raw rows only.
    """
    rows = _raw_rows(raw, dtype, height, width)
    profile = {
        "driver": "GTiff",
        "height": height,
        "width": width,
        "count": 1,
        "dtype": np.dtype(dtype).name,
        "nodata": nodata,
        "crs": crs,
        "tiled": True,
        "blockxsize": BLOCK,
        "blockysize": BLOCK,
        "compress": "deflate",
    }
    if transform is not None:
        profile["transform"] = transform
    partial = path + ".part"
    with rasterio.Env(GDAL_PAM_ENABLED="NO"), rasterio.open(partial, "w", **profile) as dst:
        for top in range(0, height, BLOCK):
            bottom = min(top + BLOCK, height)
            dst.write(np.asarray(rows[top:bottom]), 1, window=Window(0, top, width, bottom - top))
        if class_names is not None:
            records = class_records(class_names)
            dst.update_tags(
                classes=json.dumps(records), **{f"CLASS_{r['value']}": r["name"] for r in records}
            )
            dst.set_band_description(1, "class")
            if np.dtype(dtype) == np.uint8:
                colours = class_colours(len(class_names))
                table = {i: (*(int(c) for c in colours[i]), 255) for i in range(len(class_names))}
                table[int(nodata)] = (0, 0, 0, 0)
                dst.write_colormap(1, table)
        else:
            dst.set_band_description(1, "score of the winning class")
    os.replace(partial, path)


def gdal_copy(source: str, path: str, driver: str, **options) -> None:
    """A GDAL CreateCopy of ``source`` (the COG or PNG driver), through a temporary name beside ``path``."""
    partial = path + ".part"
    with rasterio.Env(GDAL_PAM_ENABLED="NO"):
        rasterio.shutil.copy(source, partial, driver=driver, **options)
    os.replace(partial, path)


def read_reduced(path: str, height: int, width: int) -> np.ndarray:
    """Band 1 of a raster read at (height, width), nearest neighbour."""
    with rasterio.open(path) as src:
        return src.read(1, out_shape=(height, width), resampling=Resampling.nearest)


def _band_polygons(data: np.ndarray, top: int, nodata: int) -> Iterator[Tuple[int, object]]:
    """(value, polygon in scene pixel coordinates) of each 4-connected region of one band of rows."""
    for geometry, value in rasterio.features.shapes(
        data, mask=data != nodata, connectivity=4, transform=Affine.translation(0, top)
    ):
        yield int(value), shape(geometry)


def _shares_edge(a, b) -> bool:
    """Whether two polygons share a stretch of border (not only a corner)."""
    return a.bounds[0] < b.bounds[2] and b.bounds[0] < a.bounds[2] and a.intersection(b).length > 0


def _root(parent: List[int], i: int) -> int:
    """The representative of ``i`` in a union-find forest (path halving)."""
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def _regions(path: str, band_rows: int) -> Iterator[Tuple[int, object]]:
    """(value, polygon in pixel coordinates) of each connected region of a class raster, band by band.

    Each band of ``band_rows`` rows is polygonized on its own; a polygon that
    reaches the band's bottom edge is held and joined (union) with the
    polygons of the same class of the next band that share a stretch of that
    edge with it. Memory follows one band and the regions crossing its
    bottom edge, not the scene.
    """
    with rasterio.open(path) as src:
        height, width, nodata = src.height, src.width, int(src.nodata)
        held: List[Tuple[int, object]] = []  # regions reaching the top of the band being read
        for top in range(0, height, band_rows):
            bottom = min(top + band_rows, height)
            data = src.read(1, window=Window(0, top, width, bottom - top))
            pieces = list(_band_polygons(data, top, nodata))
            # Union-find over held regions (0..len(held)-1) and new pieces (len(held)..).
            parent = list(range(len(held) + len(pieces)))
            for j, (value, piece) in enumerate(pieces):
                if piece.bounds[1] > top:
                    continue
                for i, (held_value, region) in enumerate(held):
                    if held_value == value and _shares_edge(region, piece):
                        parent[_root(parent, len(held) + j)] = _root(parent, i)
            groups: Dict[int, List[int]] = {}
            for i in range(len(parent)):
                groups.setdefault(_root(parent, i), []).append(i)
            members = held + pieces
            held = []
            for group in sorted(groups.values()):
                value = members[group[0]][0]
                region = (
                    members[group[0]][1] if len(group) == 1 else unary_union([members[i][1] for i in group])
                )
                if bottom < height and region.bounds[3] >= bottom:
                    held.append((value, region))
                else:
                    yield value, region
        yield from held


def vectorize(
    raster: str,
    lines_path: str,
    collection_path: str,
    class_names: Sequence[str],
    *,
    band_rows: int = 1024,
    simplify: float = 0.0,
    min_area: float = 0.0,
    image: Optional[str] = None,
) -> int:
    """The class map as polygons: one GeoJSON Feature per connected region, in the raster's CRS.

    Writes the Features one per line to ``lines_path`` (newline-delimited
    GeoJSON) and then the FeatureCollection to ``collection_path``; returns the
    number of Features. Properties: "class" (display name), "value" (the class
    map's value) and "area_px" (pixels of the region). Regions of fewer than
    ``min_area`` pixels are left out; ``simplify`` > 0 simplifies the outlines
    (Douglas-Peucker, tolerance in pixels, topology of each polygon kept).
    """
    names = [display_name(n) for n in class_names]
    with rasterio.open(raster) as src:
        transform, crs = src.transform, src.crs
    coefficients = [transform.a, transform.b, transform.d, transform.e, transform.xoff, transform.yoff]
    count = 0
    with atomic_write(lines_path) as f:
        for value, region in _regions(raster, band_rows):
            area = region.area
            if area < min_area:
                continue
            if simplify > 0:
                region = region.simplify(simplify, preserve_topology=True)
            geometry = shapely.affinity.affine_transform(region, coefficients)
            feature = {
                "type": "Feature",
                "geometry": mapping(geometry),
                "properties": {"class": names[value], "value": value, "area_px": int(round(area))},
            }
            f.write(json.dumps(feature) + "\n")
            count += 1
    header: Dict = {"type": "FeatureCollection"}
    if crs is not None:
        header["crs"] = crs_member(crs)
    if image is not None:
        header["image"] = image
    write_feature_collection(lines_path, header, collection_path)
    return count
