"""Pictures with more than 8 bits per channel, stretched to 8 bit: the one stretch of training and prediction.

Shorthand: C bands of a file, H x W a picture, h x w the decimated sample
that statistics are computed on (at most :data:`STATS_SIZE` px a side).

detectron2's ``read_image`` (PIL) saturates or truncates 16-bit PNG, 16-bit
or float TIFF and 16-bit PNM; :func:`read_image_uint8` reads them whole and
maps them to 0..255, either by per-band percentiles (``"percentile"``,
default: the 2nd and 98th percentiles of a nearest-neighbour decimation of at
most 1024 px a side, invalid pixels and NaN excluded, clipped) or by the dtype's
range (``"dtype"``: 0..max of the integer type, e.g. / 65535 for uint16).
Invalid pixels (no data) and NaN are drawn as 0 in every band, whatever the
file's nodata value, so that they look the same in every picture.
Satellite products often store 11 or 12 bits in uint16, which the dtype range
would render almost black; hence percentiles by default. 8-bit files keep
detectron2's reader (EXIF orientation included).

The stretch itself (:func:`stats_shape`, :func:`stretch`, :func:`to_uint8`)
is plain numpy: :class:`score.predict.geotiff.GeoTiffReader` computes the
same statistics on a decimated rasterio read of a GeoTIFF and maps its
windows with the same :func:`to_uint8`. A file read here and the same file
read by ``GeoTiffReader`` give the same picture when GDAL's nearest-neighbour
decimation picks the pixels that :func:`decimate` picks (pixel centres), and
always for pictures of at most 1024 px a side.

Files are read with OpenCV (``IMREAD_UNCHANGED``), except TIFFs: OpenCV
reads a multi-band uint16 TIFF of the usual "minisblack" layout as one band
and a band-interleaved one with its bands mixed up, so TIFFs are read with
rasterio, imported only when a TIFF is read (training on PNG or JPEG, and
``import score``, do not need it). Invalid pixels are the nodata and mask
of a TIFF (rasterio's ``masked=True``) and the pixels of alpha 0 of a PNG (as
GDAL's alpha mask); a PNG's tRNS colour key is not read.
"""

from __future__ import annotations

import logging
import warnings
from typing import Optional, Sequence, Tuple

import cv2
import numpy as np
from detectron2.data.detection_utils import read_image
from detectron2.utils.logger import log_first_n
from PIL import Image

__all__ = [
    "SCALINGS",
    "STATS_SIZE",
    "TIFF_SUFFIXES",
    "check_bands",
    "decimate",
    "high_bit_depth",
    "read_image_uint8",
    "stats_shape",
    "stretch",
    "to_uint8",
]

logger = logging.getLogger(__name__)

SCALINGS = ("percentile", "dtype")
# Longest side of the decimated picture that percentile statistics are computed on.
STATS_SIZE = 1024
TIFF_SUFFIXES = (".tif", ".tiff")
# PIL modes of pictures with more than 8 bits per channel (16-bit grey PNG / PNM, 32-bit int and float).
_HIGH_BIT_PIL_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_GREY_ALPHA = 4  # IHDR colour type


def check_bands(bands: Optional[Sequence[int]], count: int, path: str) -> Tuple[int, int, int]:
    """The 1-based bands of a C-band file read as R, G, B: ``bands``, or (1, 2, 3), or (1, 1, 1) for grey.

    Raises:
        ValueError: ``bands`` is not three indices in 1..C, or C = 2 and none are given.
    """
    if bands is None:
        if count >= 3:
            bands = (1, 2, 3)
        elif count == 1:
            bands = (1, 1, 1)
        else:
            raise ValueError(f"{path} has {count} bands; give three band indices to read as RGB")
    if len(bands) != 3 or not all(1 <= b <= count for b in bands):
        raise ValueError(f"bands must be three indices in 1..{count} for {path}, got {list(bands)}")
    return tuple(int(b) for b in bands)


def stats_shape(height: int, width: int) -> Tuple[int, int]:
    """(h, w) of the decimated picture that percentiles are computed on: at most STATS_SIZE px a side."""
    factor = min(1.0, STATS_SIZE / max(height, width))
    return max(1, round(height * factor)), max(1, round(width * factor))


def decimate(data: np.ndarray, shape: Tuple[int, int]) -> np.ndarray:
    """(C, H, W) -> (C, h, w) by nearest neighbour at pixel centres (row floor((i + 0.5) * H / h))."""
    height, width = data.shape[-2:]
    rows = ((np.arange(shape[0]) + 0.5) * (height / shape[0])).astype(np.int64)
    cols = ((np.arange(shape[1]) + 0.5) * (width / shape[1])).astype(np.int64)
    return data[:, rows][:, :, cols]


def stretch(
    sample: Optional[np.ma.MaskedArray],
    dtype: np.dtype,
    scaling: str,
    percentiles: Tuple[float, float],
    path: str,
) -> Tuple[np.ndarray, np.ndarray]:
    """Per-band (offset, scale) with value_8bit = clip((value - offset) * scale, 0, 255).

    Args:
        sample: (3, h, w) the decimated bands, invalid pixels masked (read for "percentile" only);
            NaN and infinite values are ignored too.
        dtype: the file's dtype: uint8 is kept as it is.
        scaling: "percentile" (``percentiles`` of each band's valid pixels to 0 and 255)
            or "dtype" (0..max of the integer type to 0..255).
        percentiles: low and high percentiles mapped to 0 and 255.
        path: the file, named in errors.
    """
    if scaling not in SCALINGS:
        raise ValueError(f"scaling must be one of {SCALINGS}, not {scaling!r}")
    if dtype == np.uint8:
        return np.zeros(3), np.ones(3)
    if scaling == "dtype":
        if not np.issubdtype(dtype, np.integer):
            raise ValueError(
                f'{path} is {dtype}: the dtype range is only defined for integers; use scaling "percentile"'
            )
        return np.zeros(3), np.full(3, 255.0 / np.iinfo(dtype).max)
    offsets, scales = np.zeros(3), np.ones(3)
    for i, band in enumerate(sample):
        values = band.compressed().astype(np.float64)
        values = values[np.isfinite(values)]
        if values.size == 0:
            continue
        low, high = np.percentile(values, percentiles)
        offsets[i] = low
        scales[i] = 255.0 / (high - low) if high > low else 1.0
    # Debug only: the training mappers read through here at every iteration.
    logger.debug("%s (%s): scaled by percentiles %s", path, dtype, percentiles)
    return offsets, scales


def to_uint8(
    data: np.ndarray, offset: np.ndarray, scale: np.ndarray, valid: Optional[np.ndarray] = None
) -> np.ndarray:
    """(3, h, w) values -> (h, w, 3) uint8 by the (offset, scale) of :func:`stretch` (uint8 kept as it is).

    Pixels where ``valid`` ((h, w) bool) is False, and NaN values, are 0.
    """
    if data.dtype != np.uint8:
        data = (data.astype(np.float32) - offset[:, None, None].astype(np.float32)) * scale[
            :, None, None
        ].astype(np.float32)
        data = np.clip(np.nan_to_num(np.rint(data), nan=0.0), 0, 255).astype(np.uint8)
    image = np.ascontiguousarray(data.transpose(1, 2, 0))
    if valid is not None and not valid.all():
        image = np.where(valid[:, :, None], image, np.uint8(0))
    return image


def high_bit_depth(path: str) -> bool:
    """Whether an image file stores more than 8 bits per channel; reads its header only.

    TIFFs: the raster dtype (rasterio). PNGs: the IHDR bit depth (byte 24 of the
    file, after the signature and the IHDR length, type, width and height);
    PIL opens a 16-bit RGB PNG as "RGB" and keeps only the high byte of each
    value. Other formats: PIL's mode.
    """
    if path.lower().endswith(TIFF_SUFFIXES):
        with _open_tiff(path) as src:
            return any(np.dtype(d) != np.uint8 for d in src.dtypes)
    with open(path, "rb") as f:
        header = f.read(26)
    if header[:8] == _PNG_SIGNATURE and len(header) == 26:
        return header[24] > 8
    with Image.open(path) as img:
        return img.mode in _HIGH_BIT_PIL_MODES


def _open_tiff(path: str):
    import rasterio  # only where a TIFF is read (see the module docstring)
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(path)
    except RasterioIOError as error:
        raise OSError(f"cannot read raster {path}: {error}") from error


def _read_bands(path: str, bands: Optional[Sequence[int]]) -> np.ma.MaskedArray:
    """The three bands of a file read as R, G, B: (3, H, W) in the file's dtype, invalid pixels masked."""
    if path.lower().endswith(TIFF_SUFFIXES):
        with _open_tiff(path) as src:
            return src.read(check_bands(bands, src.count, path), masked=True)
    picture = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if picture is None:
        raise OSError(f"cannot read image {path}")
    # OpenCV's order (B, G, R, A) to the file's (R, G, B, A), as GDAL numbers the bands.
    if picture.ndim == 2:
        data = picture[None]
    else:
        data = picture.transpose(2, 0, 1)[[2, 1, 0, 3][: picture.shape[2]]]
    with open(path, "rb") as f:
        header = f.read(26)
    if header[:8] == _PNG_SIGNATURE and len(header) == 26 and header[25] == _PNG_GREY_ALPHA:
        data = data[[0, 3]]  # OpenCV expands grey + alpha to four channels; the file has two
    alpha = len(data) in (2, 4)
    valid = data[-1] > 0 if alpha else np.ones(data.shape[1:], dtype=bool)
    chosen = check_bands(bands, len(data), path)
    # GDAL masks the colour bands by the alpha band (pixels of alpha 0), not the alpha band itself.
    mask = np.stack([~valid if alpha and b != len(data) else np.zeros_like(valid) for b in chosen])
    return np.ma.MaskedArray(data[[b - 1 for b in chosen]], mask=mask)


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
    whole picture, its ``bands`` (1-based, see :func:`check_bands`) stretched by
    ``scaling`` and ``percentiles`` (see the module docstring), in "RGB" or "BGR" order.

    Raises:
        OSError: the file cannot be read (the message names it).
        ValueError: a high-bit-depth file asked in a format other than RGB / BGR, or
            stretched by an unknown ``scaling``.
    """
    if not high_bit_depth(path):
        return read_image(path, format=image_format)
    if image_format not in ("RGB", "BGR"):
        raise ValueError(
            f"{path} has more than 8 bits per channel: it can be read as RGB or BGR, not {image_format!r}"
        )
    data = _read_bands(path, bands)
    sample = decimate(data, stats_shape(*data.shape[1:]))
    offset, scale = stretch(sample, data.dtype, scaling, percentiles, path)
    image = to_uint8(data.data, offset, scale, valid=~np.ma.getmaskarray(data).any(axis=0))
    log_first_n(
        logging.WARNING,
        f"Images with more than 8 bits per channel are stretched to 8 bit by {scaling!r} "
        f"(first one: {path}, {data.dtype}); see score/data/image_io.py",
        n=1,
        key="caller",
    )
    return image if image_format == "RGB" else np.ascontiguousarray(image[:, :, ::-1])
