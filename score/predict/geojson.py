"""GeoJSON detections of a georeferenced scene (through rasterio): Features, collections, line files.

One Feature per instance (:class:`FeatureMaker`, :func:`instances_to_geojson`).
Its geometry is the outline of the mask's pixels (``rasterio.features.shapes``:
pixel edges, holes as inner rings, one Polygon per 4-connected part, a
MultiPolygon when there are several; for a mask whose box holds more than
``band_pixels`` pixels, those of each band of rows, below) mapped to map
coordinates by the raster's affine transform, which takes pixel *corners* (col, row) to (x, y):
pixel (c, r) covers the square with corners transform @ (c, r) and
transform @ (c + 1, r + 1). Properties: ``class`` (the vocabulary entry),
``category_id`` (1-based, as in the COCO file), ``score``, ``area_px`` and
``area_crs`` (area in CRS units squared, ``area_px * |det(transform)|``, only
when the CRS is projected; null for a geographic CRS, whose degrees squared
mean nothing). RFC 7946 GeoJSON is WGS84 longitude/latitude: with
``to_wgs84=True`` the geometries are reprojected to it and no "crs" member is
written; otherwise (default) they stay in the raster's CRS, which is named in
a "crs" member (the pre-RFC 7946 form that GDAL and QGIS read).

Objects larger than ``band_pixels`` (box pixels, default
:data:`score.predict.masks.BAND_PIXELS`, 2^22 = 2048 x 2048) are outlined
band by band: the box is cut into bands of ``band_pixels // width`` rows and each
band's mask is polygonized on its own, so memory follows the band, not the
object (GDAL's polygonizer holds every polygon of what it is given: +469 MiB
for a ragged 12000 x 4480 px object at once). The geometry is then a
MultiPolygon of the parts of each band, band after band: a part that
crosses a band border is two polygons sharing that border's edge. They
cover exactly the mask's pixels (rasterized back, they give the mask), so
a GIS reads the same area; strict Simple Features validity (``is_valid``)
rejects polygons of a MultiPolygon that share an edge, and a dissolve
(``shapely.unary_union``, QGIS "Dissolve") joins them into the rings the
whole mask would have given. Objects of a trained model are far below the
threshold and keep the exact outline.

A scene's Features are streamed to a newline-delimited GeoJSON file as its
instances become final; :func:`write_feature_collection` joins that file into
a FeatureCollection block by block.
"""

from __future__ import annotations

import itertools
import json
import os
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np
import rasterio.features
import rasterio.warp
from affine import Affine
from rasterio.crs import CRS

from ..fileio import atomic_write
from .masks import BAND_PIXELS, SceneInstance

__all__ = [
    "FeatureMaker",
    "crs_member",
    "instance_geometry",
    "instances_to_geojson",
    "write_feature_collection",
    "write_geojson",
]


def _polygons(instance: SceneInstance, transform: Affine, band_pixels: int = BAND_PIXELS) -> Iterator[list]:
    """GeoJSON Polygon coordinates of the 4-connected parts of an instance's mask, one at a time.

    A mask whose box holds more than ``band_pixels`` pixels is outlined in bands
    of rows (at most ``band_pixels`` pixels each, ``band_pixels // width`` rows):
    the parts of each band, band after band. GDAL's polygonizer holds every
    polygon of what it is given, and a ragged mask as large as the scene has
    millions of them; a band's cost its own.
    """
    x0, y0, x1, y1 = instance.box
    height, width = y1 - y0, x1 - x0
    if height * width <= band_pixels:
        bands = [(y0, y1, instance.mask)]
    else:
        rows = max(1, band_pixels // width)
        bands = ((y, min(y + rows, y1), None) for y in range(y0, y1, rows))
    for top, bottom, mask in bands:
        if mask is None:
            mask = instance.region(x0, top, x1, bottom)
        for geometry, _ in rasterio.features.shapes(
            mask.view(np.uint8), mask=mask, connectivity=4, transform=transform @ Affine.translation(x0, top)
        ):
            yield geometry["coordinates"]


def _geometry(polygons: List[list]) -> dict:
    if len(polygons) == 1:
        return {"type": "Polygon", "coordinates": polygons[0]}
    return {"type": "MultiPolygon", "coordinates": polygons}


def instance_geometry(
    instance: SceneInstance, transform: Affine, band_pixels: int = BAND_PIXELS
) -> Optional[dict]:
    """GeoJSON geometry of an instance's mask: pixel-edge outline mapped by ``transform``.

    A Polygon for one 4-connected part, a MultiPolygon for several; holes are
    inner rings. None for an empty mask. A mask whose box holds more than
    ``band_pixels`` pixels is outlined band by band (see the module docstring):
    a MultiPolygon of the parts of each band of rows.
    """
    polygons = list(_polygons(instance, transform, band_pixels))
    return _geometry(polygons) if polygons else None


def crs_member(crs: CRS) -> dict:
    """The GeoJSON "crs" member naming ``crs`` (an OGC URN when it has an EPSG code, else its WKT)."""
    epsg = crs.to_epsg()
    name = f"urn:ogc:def:crs:EPSG::{epsg}" if epsg is not None else crs.to_wkt()
    return {"type": "name", "properties": {"name": name}}


class FeatureMaker:
    """One GeoJSON Feature per instance, and the collection's members other than "features".

    Args:
        class_names: the vocabulary; ``category`` indexes it.
        transform: the raster's affine transform (pixel corners -> map coordinates).
        crs: the raster's CRS; None writes map coordinates without a "crs" member.
        to_wgs84: reproject to WGS84 longitude/latitude (RFC 7946) instead of keeping ``crs``.
        image: source file name, recorded as a foreign member.
        band_pixels: masks whose box holds more pixels are outlined band by band
            (see :func:`instance_geometry`).
    """

    def __init__(
        self,
        class_names: Sequence[str],
        *,
        transform: Affine,
        crs: Optional[CRS],
        to_wgs84: bool = False,
        image: Optional[str] = None,
        band_pixels: int = BAND_PIXELS,
    ):
        if to_wgs84 and crs is None:
            raise ValueError("cannot reproject to WGS84: the raster has no CRS")
        self.class_names = list(class_names)
        self.transform = transform
        self.crs = crs
        self.to_wgs84 = to_wgs84
        self.image = image
        self.projected = crs is not None and crs.is_projected
        self.pixel_area = abs(transform.determinant)
        self.band_pixels = band_pixels

    def header(self) -> Dict:
        """The FeatureCollection's members before "features" (type, crs, units, image)."""
        collection: Dict = {"type": "FeatureCollection"}
        if self.crs is not None and not self.to_wgs84:
            collection["crs"] = crs_member(self.crs)
        if self.projected:
            collection["crs_linear_units"] = self.crs.linear_units
        if self.image is not None:
            collection["image"] = self.image
        return collection

    def _polygons(self, inst: SceneInstance) -> Iterator[list]:
        for polygon in _polygons(inst, self.transform, self.band_pixels):
            if self.to_wgs84:
                # Reprojection is point by point: a part alone gives what the whole geometry would.
                polygon = rasterio.warp.transform_geom(
                    self.crs, "EPSG:4326", {"type": "Polygon", "coordinates": polygon}
                )["coordinates"]
            yield polygon

    def _properties(self, inst: SceneInstance) -> Dict:
        area = inst.area
        return {
            "class": self.class_names[inst.category],
            "category_id": inst.category + 1,
            "score": round(float(inst.score), 6),
            "area_px": area,
            "area_crs": area * self.pixel_area if self.projected else None,
        }

    def feature(self, inst: SceneInstance) -> Optional[Dict]:
        """The Feature of one instance; None for an empty mask."""
        polygons = list(self._polygons(inst))
        if not polygons:
            return None
        return {"type": "Feature", "geometry": _geometry(polygons), "properties": self._properties(inst)}

    def feature_json(self, inst: SceneInstance) -> Iterator[str]:
        """``json.dumps(self.feature(inst))`` in pieces, one polygon at a time; nothing for an empty mask.

        The outline of a ragged mask as large as the scene has millions of
        vertices, hundreds of MB as Python lists: a line file of Features is
        written from these pieces without ever holding a whole geometry.
        """
        polygons = self._polygons(inst)
        first, second = next(polygons, None), next(polygons, None)
        if first is None:
            return
        if second is None:
            geometry = _geometry([first])
            yield json.dumps({"type": "Feature", "geometry": geometry, "properties": self._properties(inst)})
            return
        yield '{"type": "Feature", "geometry": {"type": "MultiPolygon", "coordinates": ['
        yield json.dumps(first)
        for polygon in itertools.chain([second], polygons):
            yield ", " + json.dumps(polygon)
        yield ']}, "properties": ' + json.dumps(self._properties(inst)) + "}"


def instances_to_geojson(
    instances: Sequence[SceneInstance],
    class_names: Sequence[str],
    *,
    transform: Affine,
    crs: Optional[CRS],
    to_wgs84: bool = False,
    image: Optional[str] = None,
) -> Dict:
    """A GeoJSON FeatureCollection with one Feature per instance (see the module docstring and
    :class:`FeatureMaker` for the arguments)."""
    maker = FeatureMaker(class_names, transform=transform, crs=crs, to_wgs84=to_wgs84, image=image)
    features = [maker.feature(inst) for inst in instances]
    collection = maker.header()
    collection["features"] = [f for f in features if f is not None]
    return collection


def write_geojson(path: str, collection: Dict) -> None:
    """Write a FeatureCollection (UTF-8 JSON), creating the folder."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(collection, f)


def write_feature_collection(lines_path: str, header: Dict, path: str, chunk: int = 1 << 20) -> int:
    """Write a FeatureCollection from a newline-delimited GeoJSON file; the feature count.

    ``header`` holds the collection's other members (type, crs...); "features"
    is written last. The lines are copied in blocks of ``chunk`` bytes, each
    newline but the last becoming the comma between two Features: one Feature
    of a ragged scene-sized mask is tens of MB, never read as one string. A
    last line without its newline (cut by a kill) is left out.
    """
    prefix = json.dumps({**header, "features": []})[:-2]  # everything up to the empty list's "]}"
    count = 0
    with atomic_write(path, "wb") as out:
        out.write(prefix.encode())
        if os.path.isfile(lines_path):
            with open(lines_path, "rb") as f:
                end = _last_newline(f, chunk)
                f.seek(0)
                while f.tell() < end:
                    block = f.read(min(chunk, end - f.tell()))
                    count += block.count(b"\n")
                    out.write(block.replace(b"\n", b","))
                count += end >= 0
        out.write(b"]}")
    return count


def _last_newline(f, chunk: int) -> int:
    """Offset of the last newline of binary file ``f`` (-1 when it has none)."""
    position = f.seek(0, os.SEEK_END)
    while position > 0:
        start = max(0, position - chunk)
        f.seek(start)
        found = f.read(position - start).rfind(b"\n")
        if found >= 0:
            return start + found
        position = start
    return -1
