"""GeoTIFF scenes read window by window (through rasterio), stretched to 8 bit.

Windows of the raster are read on demand (never the whole scene), bands
``(1, 2, 3)`` as R, G, B by default (a single band is repeated three times).
uint8 rasters are used as they are; other dtypes are mapped to 0..255 by the
stretch of :mod:`score.data.image_io` (per-band percentiles of a decimated
read, nodata excluded, or the dtype's range), the one stretch of training and
prediction: the percentiles are computed here on a nearest-neighbour
decimated rasterio read of at most 1024 px a side, and every window goes
through the same :func:`score.data.image_io.to_uint8`.

No data: :meth:`GeoTiffReader.valid` tells which pixels of a window hold
data in every band read (GDAL's masks: the nodata value, an internal mask or
``dataset_mask()``, an alpha band of 0; and NaN, which GDAL does not mask
when the nodata value is not NaN). Pixels without data are drawn as 0 in
every band and left out of the stretch's statistics; :attr:`GeoTiffReader.has_data`
says whether the scene has any valid pixel at all.
"""

from __future__ import annotations

import warnings
from typing import Callable, Optional, Sequence, Tuple, TypeVar

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import MaskFlags, Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.windows import Window

from ..data.image_io import SCALINGS, TIFF_SUFFIXES, check_bands, stats_shape, stretch, to_uint8
from .windows import Box

__all__ = ["GEO_SUFFIXES", "GeoTiffReader"]

# Files opened with rasterio (and written out as GeoJSON when georeferenced).
GEO_SUFFIXES = TIFF_SUFFIXES
# Rows of the scene checked at a time when the decimated read finds no valid pixel.
_SCAN_ROWS = 1024

T = TypeVar("T")


def _reason(error: Exception) -> str:
    """rasterio's reason for a failed read: GDAL's message, which rasterio keeps as the cause."""
    cause = error.__cause__
    return str(cause) if cause is not None and str(cause) else str(error)


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
            raise OSError(f"cannot read {path}: {_reason(error)}") from error
        src = self._src
        try:
            self.bands = check_bands(bands, src.count, path)
        except ValueError:
            self.close()
            raise
        self.height, self.width = src.height, src.width
        self.transform: Affine = src.transform
        self.crs: Optional[CRS] = src.crs
        self.dtype = np.dtype(src.dtypes[self.bands[0] - 1])
        self._floating = any(np.issubdtype(np.dtype(src.dtypes[b - 1]), np.floating) for b in self.bands)
        # Nothing can be invalid: no nodata, no mask, no alpha, no NaN (the masks need not be read).
        self._all_valid = not self._floating and all(
            src.mask_flag_enums[b - 1] == [MaskFlags.all_valid] for b in self.bands
        )
        try:
            self._offset, self._scale = self._guarded(lambda: self._scaling(scaling, percentiles))
            self.has_data = self._guarded(self._any_valid)
        except (OSError, ValueError):
            self.close()
            raise

    @property
    def georeferenced(self) -> bool:
        """Whether the raster has a CRS (otherwise GeoJSON coordinates would be pixels)."""
        return self.crs is not None

    def _guarded(self, read: Callable[[], T]) -> T:
        """``read()``, a failed read of the raster (a damaged or truncated file) as an OSError naming it."""
        try:
            return read()
        except RasterioIOError as error:
            raise OSError(f"cannot read {self.path}: {_reason(error)}") from error

    def _scaling(self, scaling: str, percentiles: Tuple[float, float]) -> Tuple[np.ndarray, np.ndarray]:
        """Per-band (offset, scale) of :func:`score.data.image_io.stretch`, on a decimated read."""
        sample = None
        if self.dtype != np.uint8 and scaling == "percentile":
            shape = (3, *stats_shape(self.height, self.width))
            sample = self._src.read(self.bands, out_shape=shape, resampling=Resampling.nearest, masked=True)
        return stretch(sample, self.dtype, scaling, percentiles, self.path)

    def _valid(self, data: Optional[np.ndarray], **read) -> np.ndarray:
        """(h, w) bool: valid in every band read; ``data``: (3, h, w) the bands read with the same ``read``
        arguments, for NaN (needed for floating-point rasters only)."""
        valid = (self._src.read_masks(self.bands, **read) > 0).all(axis=0)
        if self._floating:
            valid &= ~np.isnan(data).any(axis=0)
        return valid

    def _any_valid(self) -> bool:
        """Whether any pixel is valid: on a decimated read, and row by row when that finds none."""
        if self._all_valid:
            return True
        read = {"out_shape": (3, *stats_shape(self.height, self.width)), "resampling": Resampling.nearest}
        if self._valid(self._src.read(self.bands, **read), **read).any():
            return True
        for top in range(0, self.height, _SCAN_ROWS):
            if self.valid((0, top, self.width, min(self.height, top + _SCAN_ROWS))).any():
                return True
        return False

    def valid(self, window: Box) -> np.ndarray:
        """(y1 - y0, x1 - x0) bool: True where window (x0, y0, x1, y1) holds data in every band read."""
        if self._all_valid:
            return np.ones((window[3] - window[1], window[2] - window[0]), dtype=bool)
        x0, y0, x1, y1 = window
        read = {"window": Window(x0, y0, x1 - x0, y1 - y0)}
        data = self._guarded(lambda: self._src.read(self.bands, **read)) if self._floating else None
        return self._guarded(lambda: self._valid(data, **read))

    def read(self, window: Box) -> np.ndarray:
        """The pixels of window (x0, y0, x1, y1) as (y1 - y0, x1 - x0, 3) uint8 RGB, no data as 0."""
        x0, y0, x1, y1 = window
        read = {"window": Window(x0, y0, x1 - x0, y1 - y0)}
        data = self._guarded(lambda: self._src.read(self.bands, **read))
        if self._all_valid:
            return to_uint8(data, self._offset, self._scale)
        return to_uint8(data, self._offset, self._scale, self._guarded(lambda: self._valid(data, **read)))

    def read_preview(self, max_side: int) -> Tuple[np.ndarray, float]:
        """The whole raster decimated to at most ``max_side`` px a side, and the scale (preview / raster)."""
        scale = min(1.0, max_side / max(self.height, self.width))
        shape = (3, max(1, round(self.height * scale)), max(1, round(self.width * scale)))
        # GDAL's average leaves nodata out; a preview pixel is drawn when its nearest raster pixel is valid.
        data = self._guarded(
            lambda: self._src.read(self.bands, out_shape=shape, resampling=Resampling.average)
        )
        if self._all_valid:
            return to_uint8(data, self._offset, self._scale), scale
        valid = self._guarded(lambda: self._valid(data, out_shape=shape, resampling=Resampling.nearest))
        return to_uint8(data, self._offset, self._scale, valid), scale

    def close(self) -> None:
        self._src.close()

    def __enter__(self) -> GeoTiffReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
