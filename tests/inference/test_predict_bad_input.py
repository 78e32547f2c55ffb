"""tools/predict.py on bad input: finished results of another run, no data, NaN, truncated TIFFs."""

import score  # noqa: F401, I001  (first: its shims let detectron2 import without detectron2._C)
import json
import logging
import os

import numpy as np
import pytest
import rasterio
import torch
from detectron2.structures import Instances
from PIL import Image
from pycocotools import mask as mask_util
from rasterio.transform import from_origin

from score.data.image_io import stretch
from score.predict.geotiff import GeoTiffReader
from score.predict.instances import clip_to_valid
from tests.conftest import TINY_CONFIG, load_script

# Small test size: every forward of the tiny model stays short.
FAST_OPTS = ["--opts", "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "160"]


@pytest.fixture(scope="module")
def predict_tool():
    return load_script("tools/predict.py")


@pytest.fixture
def messages():
    """Records of the tool's logger (detectron2's setup_logger stops propagation, so caplog may miss them)."""

    class Collect(logging.Handler):
        def __init__(self):
            super().__init__(logging.INFO)
            self.records = []

        def emit(self, record):
            self.records.append(record.getMessage())

    handler = Collect()
    tool_logger = logging.getLogger("score.predict")
    tool_logger.addHandler(handler)
    old_level = tool_logger.level
    tool_logger.setLevel(logging.INFO)
    yield handler.records
    tool_logger.removeHandler(handler)
    tool_logger.setLevel(old_level)


def write_tiff(path, data, **profile):
    """(C, H, W) data as a GeoTIFF in UTM 33N, 1 m pixels."""
    count, height, width = data.shape
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        height=height,
        width=width,
        count=count,
        dtype=data.dtype,
        crs="EPSG:32633",
        transform=from_origin(500000, 4000000, 1, 1),
        **profile,
    ) as dst:
        dst.write(data)
    return str(path)


def picture(path, seed, size=(90, 120)):
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
    return str(path)


def run(tool, inputs, out, vocab, *extra):
    torch.manual_seed(0)  # the same random weights every run: the same model for the run's key
    argv = ["--config-file", str(TINY_CONFIG), "--input", *map(str, inputs), "--output", str(out)]
    return tool.main(
        [
            *argv,
            "--vocab",
            vocab,
            "--confidence-threshold",
            "0",
            "--no-vis",
            "--allow-untrained",
            *extra,
            *FAST_OPTS,
        ]
    )


def snapshot(folder):
    """Every file under ``folder``: relative path -> bytes."""
    files = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, folder)] = f.read()
    return files


# Finished results ------------------------------------------------------------------------------------


def test_finished_run_of_another_vocabulary_is_never_replaced_unasked(predict_tool, tmp_path, messages):
    scene = picture(tmp_path / "a.png", 0)
    out = tmp_path / "out"
    assert run(predict_tool, [scene], out, "ship,harbor") == 0
    before = snapshot(out)
    assert json.loads(before["predictions.json"])["annotations"]

    for extra in ([], ["--resume"], ["--no-resume"]):
        messages.clear()
        assert run(predict_tool, [scene], out, "ship,tank", *extra) == 2
        assert snapshot(out) == before  # nothing written, nothing removed
        complete = [m for m in messages if "complete output of another run" in m]
        assert complete and os.path.join(str(out), "scenes", "a") in complete[0], messages
        assert "vocabulary" in complete[0] and any("--overwrite" in m for m in messages), messages

    assert run(predict_tool, [scene], out, "ship,tank", "--overwrite") == 0
    results = json.loads((out / "predictions.json").read_text())
    assert [c["name"] for c in results["categories"]] == ["ship", "tank"]
    assert [image["id"] for image in results["images"]] == ["a.png"]


def test_predictions_json_joins_the_finished_scenes_of_the_same_run(predict_tool, tmp_path):
    out = tmp_path / "out"
    assert run(predict_tool, [picture(tmp_path / "a.png", 0)], out, "ship") == 0
    first = json.loads((out / "predictions.json").read_text())
    assert run(predict_tool, [picture(tmp_path / "b.png", 1, (60, 80))], out, "ship") == 0
    results = json.loads((out / "predictions.json").read_text())
    assert [image["id"] for image in results["images"]] == ["b.png", "a.png"]
    assert results["images"][1] == first["images"][0]
    earlier = [a for a in results["annotations"] if a["image_id"] == "a.png"]
    assert len(earlier) == len(first["annotations"]) > 0
    assert sorted(a["id"] for a in results["annotations"]) == list(range(1, len(results["annotations"]) + 1))


def test_finished_scene_of_another_run_not_among_the_inputs_refuses_the_folder(predict_tool, tmp_path):
    out = tmp_path / "out"
    assert run(predict_tool, [picture(tmp_path / "a.png", 0)], out, "ship") == 0
    before = snapshot(out)
    assert run(predict_tool, [picture(tmp_path / "b.png", 1)], out, "tank") == 2
    assert snapshot(out) == before


# No data ---------------------------------------------------------------------------------------------


def test_reader_valid_mask_nodata_internal_mask_alpha_and_nan(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(8, 256, (3, 40, 60), dtype=np.uint8)
    data[:, :, :20] = 7
    with GeoTiffReader(write_tiff(tmp_path / "nodata.tif", data, nodata=7)) as reader:
        valid = reader.valid((10, 5, 50, 25))
        assert valid.shape == (20, 40) and valid.dtype == bool
        assert not valid[:, :10].any() and valid[:, 10:].all()
        assert (reader.read((0, 0, 60, 40))[:, :20] == 0).all()  # no data drawn as 0, not 7

    path = write_tiff(tmp_path / "mask.tif", data)
    with rasterio.open(path, "r+") as dst:
        mask = np.full((40, 60), 255, np.uint8)
        mask[30:] = 0
        dst.write_mask(mask)
    with GeoTiffReader(path) as reader:
        valid = reader.valid((0, 0, 60, 40))
        assert not valid[30:].any() and valid[:30].all()

    rgba = np.concatenate([data, np.full((1, 40, 60), 255, np.uint8)])
    rgba[3, :5] = 0
    with GeoTiffReader(write_tiff(tmp_path / "alpha.tif", rgba, photometric="RGB", alpha="YES")) as reader:
        valid = reader.valid((0, 0, 60, 40))
        assert not valid[:5].any() and valid[5:].all()

    values = rng.uniform(100, 200, (3, 40, 60)).astype(np.float32)
    values[1, :, :30] = np.nan  # one band NaN: the pixel is not valid in the bands read
    with GeoTiffReader(write_tiff(tmp_path / "nan.tif", values)) as reader:
        valid = reader.valid((0, 0, 60, 40))
        assert not valid[:, :30].any() and valid[:, 30:].all()
        assert (reader.read((0, 0, 60, 40))[:, :30] == 0).all()
        assert np.isfinite(reader._offset).all() and np.isfinite(reader._scale).all()
        assert reader.has_data


def test_stretch_ignores_nan_like_masked_pixels():
    rng = np.random.default_rng(1)
    band = rng.uniform(1000, 2000, (3, 20, 20))
    with_nan = band.copy()
    with_nan[:, :, :10] = np.nan
    offsets, scales = stretch(np.ma.masked_array(with_nan), np.dtype("float32"), "percentile", (2, 98), "x")
    masked = np.ma.masked_array(band, mask=np.isnan(with_nan))
    expected = stretch(masked, np.dtype("float32"), "percentile", (2, 98), "x")
    np.testing.assert_allclose(offsets, expected[0])
    np.testing.assert_allclose(scales, expected[1])


def test_clip_to_valid_drops_instances_mostly_in_no_data_and_clips_the_rest():
    valid = np.zeros((10, 10), dtype=bool)
    valid[:, 5:] = True
    masks = torch.zeros(3, 10, 10, dtype=torch.bool)
    masks[0, 0:4, 0:4] = True  # all in no data: dropped
    masks[1, 0:4, 3:9] = True  # 2 of 6 columns in no data: kept, clipped
    masks[2, 5:9, 2:6] = True  # 3 of 4 columns in no data: dropped
    instances = Instances((10, 10), pred_masks=masks, scores=torch.tensor([0.9, 0.8, 0.7]))
    instances.pred_classes = torch.tensor([0, 1, 2])
    kept = clip_to_valid(instances, valid)
    assert kept.pred_classes.tolist() == [1]
    expected = torch.zeros(10, 10, dtype=torch.bool)
    expected[0:4, 5:9] = True
    assert torch.equal(kept.pred_masks[0], expected)


def test_left_half_nodata_gets_no_detection(predict_tool, tmp_path):
    """A 768 px uint8 scene whose left half is nodata 0: random weights at threshold 0 detect everywhere
    else, and nothing there."""
    data = np.random.default_rng(3).integers(1, 256, (3, 768, 768), dtype=np.uint8)
    data[:, :, :384] = 0
    scene = write_tiff(tmp_path / "half.tif", data, nodata=0)
    out = tmp_path / "out"
    assert run(predict_tool, [scene], out, "ship,building", "--tile-size", "384", "--tile-overlap", "64") == 0
    annotations = json.loads((out / "predictions.json").read_text())["annotations"]
    assert annotations  # the model finds things in the data
    for a in annotations:
        mask = mask_util.decode(a["segmentation"])
        assert not mask[:, :384].any()
        assert a["bbox"][0] >= 384


def test_all_nan_scene_is_skipped_with_a_warning(predict_tool, tmp_path, messages):
    empty = write_tiff(tmp_path / "empty.tif", np.full((3, 64, 64), np.nan, np.float32))
    good = picture(tmp_path / "good.png", 0)
    out = tmp_path / "out"
    assert run(predict_tool, [empty, good], out, "ship") == 0
    assert any(empty in m and "no valid pixel" in m for m in messages), messages
    results = json.loads((out / "predictions.json").read_text())
    assert [image["id"] for image in results["images"]] == ["good.png"]
    assert not (out / "scenes" / "empty").exists()


# Unreadable input ------------------------------------------------------------------------------------


def test_truncated_tiff_is_named_with_gdals_reason_and_leaves_no_folder(predict_tool, tmp_path, messages):
    data = np.random.default_rng(4).integers(0, 256, (3, 600, 600), dtype=np.uint8)
    whole = write_tiff(tmp_path / "whole.tif", data, tiled=True, blockxsize=256, blockysize=256)
    truncated = tmp_path / "inputs" / "cut.tif"
    truncated.parent.mkdir()
    with open(whole, "rb") as f:
        content = f.read()
    truncated.write_bytes(content[: len(content) // 2])
    good = picture(tmp_path / "inputs" / "good.png", 0)
    out = tmp_path / "out"
    # One window: the scene fails before any row of tiles is finished (a later failure leaves a resumable
    # partial output).
    assert run(predict_tool, [truncated, good], out, "ship", "--tiling", "never") == 1
    named = [m for m in messages if f"cannot read {truncated}: " in m]
    assert named and "Read failed. See previous exception" not in named[0], messages
    assert "TIFFReadEncodedTile" in named[0] or "IReadBlock" in named[0], named
    assert not (out / "scenes" / "cut").exists()
    assert not (out / "geojson" / "cut.geojsonl").exists()
    assert [image["id"] for image in json.loads((out / "predictions.json").read_text())["images"]] == [
        "good.png"
    ]
