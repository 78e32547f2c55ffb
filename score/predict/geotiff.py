"""GeoTIFF scenes read window by window (through rasterio), stretched to 8 bit.

Windows of the raster are read on demand (never the whole scene), bands
``(1, 2, 3)`` as R, G, B by default (a single band is repeated three times).
uint8 rasters are used as they are; other dtypes are mapped to 0..255 by the
stretch of :mod:`score.data.image_io` (per-band percentiles of a decimated
read, nodata excluded, or the dtype's range), the one stretch of training and
prediction: the percentiles are computed here on a nearest-neighbour
decimated rasterio read of at most 1024 px a side, and every window goes
through the same :func:`score.data.image_io.to_uint8`.
"""

from __future__ import annotations

import warnings
from typing import Optional, Sequence, Tuple

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.windows import Window

from ..data.image_io import SCALINGS, TIFF_SUFFIXES, check_bands, stats_shape, stretch, to_uint8
from .windows import Box

__all__ = ["GEO_SUFFIXES", "GeoTiffReader"]

# Files opened with rasterio (and written out as GeoJSON when georeferenced).
GEO_SUFFIXES = TIFF_SUFFIXES


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
        try:
            self.bands = check_bands(bands, src.count, path)
        except ValueError:
            self.close()
            raise
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
        """Per-band (offset, scale) of :func:`score.data.image_io.stretch`, on a decimated read."""
        sample = None
        if self.dtype != np.uint8 and scaling == "percentile":
            shape = (3, *stats_shape(self.height, self.width))
            sample = self._src.read(self.bands, out_shape=shape, resampling=Resampling.nearest, masked=True)
        return stretch(sample, self.dtype, scaling, percentiles, self.path)

    def _to_uint8(self, data: np.ndarray) -> np.ndarray:
        """(3, h, w) raster values -> (h, w, 3) uint8."""
        return to_uint8(data, self._offset, self._scale)

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
