"""GeoTIFF scenes in, GeoJSON detections out (through rasterio).

Reading (:class:`GeoTiffReader`): windows of the raster are read on demand
(never the whole scene), bands ``(1, 2, 3)`` as R, G, B by default (a single
band is repeated three times). uint8 rasters are used as they are; other
dtypes are mapped to 0..255 either by per-band percentiles (``"percentile"``,
default: the 2nd and 98th percentiles of a decimated read of at most
1024 px a side, nodata excluded, clipped) or by the dtype's range
(``"dtype"``: 0..max of the integer type, e.g. / 65535 for uint16). Satellite
products often store 11 or 12 bits in uint16, which the dtype range would
render almost black; hence percentiles by default.

Pictures with more than 8 bits per channel (16-bit PNG, 16-bit or float
TIFF, 16-bit PNM), which detectron2's ``read_image`` (PIL) would saturate or
truncate, go through the same reader and stretch: :func:`read_image_uint8` is
the one image reader of ``tools/predict.py`` and of the dataset mappers;
8-bit files keep detectron2's reader (EXIF orientation included).

Writing (:func:`instances_to_geojson`): one Feature per instance. Its geometry
is the outline of the mask's pixels (``rasterio.features.shapes``: pixel
edges, holes as inner rings, one Polygon per 4-connected part, a
MultiPolygon when there are several; for a mask whose box holds more than
``band_pixels`` pixels, those of each band of rows, below) mapped to map coordinates by the
raster's affine transform, which takes pixel *corners* (col, row) to (x, y):
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
:data:`score.predict.tiling.BAND_PIXELS`, 2^22 = 2048 x 2048) are outlined band by
band: the box is cut into bands of ``band_pixels // width`` rows and each
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
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import warnings
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import rasterio
import rasterio.features
import rasterio.warp
from affine import Affine
from detectron2.data.detection_utils import read_image
from detectron2.utils.logger import log_first_n
from PIL import Image
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.windows import Window

from .tiling import BAND_PIXELS, Box, SceneInstance

__all__ = [
    "GEO_SUFFIXES",
    "FeatureMaker",
    "GeoTiffReader",
    "SCALINGS",
    "crs_member",
    "high_bit_depth",
    "instance_geometry",
    "instances_to_geojson",
    "read_image_uint8",
    "write_geojson",
]

logger = logging.getLogger(__name__)

# Files opened with rasterio (and written out as GeoJSON when georeferenced).
GEO_SUFFIXES = (".tif", ".tiff")
SCALINGS = ("percentile", "dtype")
# Longest side of the decimated read that percentile statistics are computed on.
_STATS_SIZE = 1024


class GeoTiffReader:
    """Windows of a (Geo)TIFF as (h, w, 3) uint8 RGB, with the raster's transform and CRS.

    Use as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        path: str,
        *,
        bands: Optional[Sequence[int]] = None,
        scaling: str = "percentile",
        percentiles: Tuple[float, float] = (2.0, 98.0),
    ):
        """
        Args:
            path: raster file.
            bands: 1-based band indices read as R, G, B; default (1, 2, 3), or (1, 1, 1)
                for a single-band raster.
            scaling: how non-uint8 rasters become 8 bit: "percentile" or "dtype".
            percentiles: low and high percentiles mapped to 0 and 255 ("percentile").
        """
        if scaling not in SCALINGS:
            raise ValueError(f"scaling must be one of {SCALINGS}, not {scaling!r}")
        self.path = path
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                self._src = rasterio.open(path)
        except RasterioIOError as error:
            raise OSError(f"cannot read raster {path}: {error}") from error
        src = self._src
        if bands is None:
            if src.count >= 3:
                bands = (1, 2, 3)
            elif src.count == 1:
                bands = (1, 1, 1)
            else:
                self.close()
                raise ValueError(f"{path} has {src.count} bands; give three band indices to read as RGB")
        if len(bands) != 3 or not all(1 <= b <= src.count for b in bands):
            self.close()
            raise ValueError(f"bands must be three indices in 1..{src.count} for {path}, got {list(bands)}")
        self.bands = tuple(int(b) for b in bands)
        self.height, self.width = src.height, src.width
        self.transform: Affine = src.transform
        self.crs: Optional[CRS] = src.crs
        self.dtype = np.dtype(src.dtypes[self.bands[0] - 1])
        self._offset, self._scale = self._scaling(scaling, percentiles)

    @property
    def georeferenced(self) -> bool:
        """Whether the raster has a CRS (otherwise GeoJSON coordinates would be pixels)."""
        return self.crs is not None

    def _scaling(self, scaling: str, percentiles: Tuple[float, float]) -> Tuple[np.ndarray, np.ndarray]:
        """Per-band (offset, scale) with value_8bit = clip((value - offset) * scale, 0, 255)."""
        if self.dtype == np.uint8:
            return np.zeros(3), np.ones(3)
        if scaling == "dtype":
            if not np.issubdtype(self.dtype, np.integer):
                raise ValueError(
                    f"{self.path} is {self.dtype}: the dtype range is only defined for integers; "
                    'use scaling "percentile"'
                )
            return np.zeros(3), np.full(3, 255.0 / np.iinfo(self.dtype).max)
        factor = min(1.0, _STATS_SIZE / max(self.height, self.width))
        shape = (3, max(1, round(self.height * factor)), max(1, round(self.width * factor)))
        sample = self._src.read(self.bands, out_shape=shape, resampling=Resampling.nearest, masked=True)
        offsets, scales = np.zeros(3), np.ones(3)
        for i, band in enumerate(sample):
            values = band.compressed().astype(np.float64)
            if values.size == 0:
                continue
            low, high = np.percentile(values, percentiles)
            offsets[i] = low
            scales[i] = 255.0 / (high - low) if high > low else 1.0
        # Debug only: the training mappers read through here at every iteration.
        logger.debug(
            "%s (%s): bands %s scaled by percentiles %s", self.path, self.dtype, self.bands, percentiles
        )
        return offsets, scales

    def _to_uint8(self, data: np.ndarray) -> np.ndarray:
        """(3, h, w) raster values -> (h, w, 3) uint8."""
        if self.dtype != np.uint8:
            data = (data.astype(np.float32) - self._offset[:, None, None].astype(np.float32)) * self._scale[
                :, None, None
            ].astype(np.float32)
            data = np.clip(np.rint(data), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(data.transpose(1, 2, 0))

    def read(self, window: Box) -> np.ndarray:
        """The pixels of window (x0, y0, x1, y1) as (y1 - y0, x1 - x0, 3) uint8 RGB."""
        x0, y0, x1, y1 = window
        try:
            data = self._src.read(self.bands, window=Window(x0, y0, x1 - x0, y1 - y0))
        except RasterioIOError as error:
            raise OSError(f"cannot read window {window} of {self.path}: {error}") from error
        return self._to_uint8(data)

    def read_preview(self, max_side: int) -> Tuple[np.ndarray, float]:
        """The whole raster decimated to at most ``max_side`` px a side, and the scale (preview / raster)."""
        scale = min(1.0, max_side / max(self.height, self.width))
        shape = (3, max(1, round(self.height * scale)), max(1, round(self.width * scale)))
        data = self._src.read(self.bands, out_shape=shape, resampling=Resampling.average)
        return self._to_uint8(data), scale

    def close(self) -> None:
        self._src.close()

    def __enter__(self) -> GeoTiffReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# PIL modes of pictures with more than 8 bits per channel (16-bit grey PNG / PNM, 32-bit int and float).
_HIGH_BIT_PIL_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def high_bit_depth(path: str) -> bool:
    """Whether an image file stores more than 8 bits per channel; reads its header only.

    TIFFs: the raster dtype (rasterio). PNGs: the IHDR bit depth (byte 24 of the
    file, after the signature and the IHDR length, type, width and height);
    PIL opens a 16-bit RGB PNG as "RGB" and keeps only the high byte of each
    value. Other formats: PIL's mode.
    """
    if path.lower().endswith(GEO_SUFFIXES):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                with rasterio.open(path) as src:
                    return any(np.dtype(d) != np.uint8 for d in src.dtypes)
        except RasterioIOError as error:
            raise OSError(f"cannot read raster {path}: {error}") from error
    with open(path, "rb") as f:
        header = f.read(25)
    if header[:8] == _PNG_SIGNATURE and len(header) == 25:
        return header[24] > 8
    with Image.open(path) as img:
        return img.mode in _HIGH_BIT_PIL_MODES


def read_image_uint8(
    path: str,
    image_format: str = "RGB",
    *,
    scaling: str = "percentile",
    percentiles: Tuple[float, float] = (2.0, 98.0),
    bands: Optional[Sequence[int]] = None,
) -> np.ndarray:
    """An image file as (H, W, 3) uint8, files of more than 8 bits per channel stretched.

    8-bit files: detectron2's ``read_image`` in ``image_format``. Others: the
    whole raster through :class:`GeoTiffReader` (its ``scaling`` and
    ``percentiles``, the stretch of GeoTIFF input), in "RGB" or "BGR" order.

    Raises:
        OSError: the file cannot be read (the message names it).
        ValueError: a high-bit-depth file asked in a format other than RGB / BGR.
    """
    if not high_bit_depth(path):
        return read_image(path, format=image_format)
    if image_format not in ("RGB", "BGR"):
        raise ValueError(
            f"{path} has more than 8 bits per channel: it can be read as RGB or BGR, not {image_format!r}"
        )
    with GeoTiffReader(path, bands=bands, scaling=scaling, percentiles=percentiles) as reader:
        image = reader.read((0, 0, reader.width, reader.height))
        dtype = reader.dtype
    log_first_n(
        logging.WARNING,
        f"Images with more than 8 bits per channel are stretched to 8 bit by {scaling!r} "
        f"(first one: {path}, {dtype}); see score/geo.py",
        n=1,
        key="caller",
    )
    return image if image_format == "RGB" else np.ascontiguousarray(image[:, :, ::-1])


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
