"""score/data/image_io.py: the training reader of high-bit-depth files gives GeoTiffReader's picture."""

import score  # noqa: F401, I001  (first: its shims let detectron2 import without detectron2._C)
import subprocess
import sys

import cv2
import numpy as np
import pytest
import rasterio

from score.data.image_io import read_image_uint8
from score.predict.geotiff import GeoTiffReader
from tests.conftest import REPO


def write_tiff(path, data, **profile):
    count, height, width = data.shape
    with rasterio.open(
        path, "w", driver="GTiff", height=height, width=width, count=count, dtype=data.dtype, **profile
    ) as dst:
        dst.write(data)
    return str(path)


def ramp_bands(height, width, dtype=np.uint16, seed=0):
    """(3, H, W) 12-bit values: noise on gradients, a darker third band (percentiles differ by band)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    data = np.stack([x * 3000 // width, y * 3000 // height, (x + y) * 1000 // (height + width)])
    return (data + rng.integers(0, 1000, data.shape)).astype(dtype)


@pytest.mark.parametrize("scaling", ["percentile", "dtype"])
@pytest.mark.parametrize("size", [(90, 70), (1500, 2100)])  # 2100 px: statistics on a 1024 px decimation
def test_16_bit_tiff_and_png_read_for_training_equal_the_geotiff_reader(tmp_path, scaling, size):
    data = ramp_bands(*size)
    tiff = write_tiff(tmp_path / "a.tif", data)
    png = str(tmp_path / "a.png")
    assert cv2.imwrite(png, data.transpose(1, 2, 0)[:, :, ::-1])  # cv2 writes BGR
    with GeoTiffReader(tiff, scaling=scaling) as reader:
        expected = reader.read((0, 0, reader.width, reader.height))
    assert expected.std() > (30 if scaling == "percentile" else 2)  # stretched, not black or saturated
    # The same pixels and the same decimation (nearest at pixel centres): the same bytes.
    np.testing.assert_array_equal(read_image_uint8(tiff, scaling=scaling), expected)
    np.testing.assert_array_equal(read_image_uint8(png, scaling=scaling), expected)
    np.testing.assert_array_equal(read_image_uint8(png, "BGR", scaling=scaling), expected[:, :, ::-1])


def test_nodata_and_alpha_are_left_out_of_the_percentiles(tmp_path):
    data = ramp_bands(60, 80)
    data[:, :20] = 65535  # invalid pixels that would move the 98th percentile
    tiff = write_tiff(tmp_path / "n.tif", data, nodata=65535)
    with GeoTiffReader(tiff) as reader:
        expected = reader.read((0, 0, 80, 60))
    np.testing.assert_array_equal(read_image_uint8(tiff), expected)
    rgba = np.concatenate([data, np.where(data[:1] == 65535, 0, 65535).astype(np.uint16)])
    png = str(tmp_path / "a.png")
    assert cv2.imwrite(png, rgba.transpose(1, 2, 0)[:, :, [2, 1, 0, 3]])
    np.testing.assert_array_equal(read_image_uint8(png)[:, 20:], expected[:, 20:])


def test_a_minisblack_multi_band_tiff_keeps_its_bands(tmp_path):
    """OpenCV reads such a TIFF as one band: TIFFs go through rasterio."""
    data = ramp_bands(30, 40)
    tiff = write_tiff(tmp_path / "m.tif", data, photometric="MINISBLACK")
    image = read_image_uint8(tiff, scaling="dtype")
    np.testing.assert_array_equal(image, np.rint(data.transpose(1, 2, 0) * np.float32(255 / 65535)))


@pytest.mark.parametrize(
    "modules",
    ["score.engine, score.data.mappers, score.evaluation", "score.predict.predictor"],
)
def test_training_and_the_predictor_import_without_rasterio(modules):
    code = f"import sys, {modules}; assert 'rasterio' not in sys.modules, 'rasterio imported'"
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
