"""tools/predict.py --task semantic on the tiny semantic model (random weights): class maps."""

import score  # noqa: F401, I001  (first: its shims let detectron2 import without detectron2._C)
import json
import os

import numpy as np
import pytest
import rasterio
from PIL import Image

from tests.conftest import REPO, TINY_CONFIG
from tests.inference.test_predict_tool import FAST_OPTS, load_tool

SEMANTIC_CONFIG = REPO / "configs" / "tiny" / "score_tiny_landdiscover_semantic.yaml"
VOCAB = ["--vocab", "water,tree,building"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(folder / "a.png")
    load_tool("make_geotiff_scene").make_scene(str(folder / "scene.tif"), 300, seed=1)
    return folder


def test_class_maps_of_a_picture_and_a_tiled_geotiff(predict_tool, inputs, tmp_path):
    out = tmp_path / "out"
    argv = ["--config-file", str(SEMANTIC_CONFIG), "--input", str(inputs), "--output", str(out), *VOCAB]
    argv += ["--tiling", "always", "--tile-size", "128", "--tile-overlap", "32", "--vectorize"]
    argv += ["--confidence", *FAST_OPTS]
    assert predict_tool.main(argv) == 0  # the task comes from the config (SEMANTIC_ON only)
    assert not (out / "predictions.json").exists()
    picture = np.asarray(Image.open(out / "classmaps/a.png"))
    assert Image.open(out / "classmaps/a.png").mode == "P" and picture.shape == (90, 120)
    assert set(np.unique(picture)) <= {0, 1, 2}
    assert not (out / "classmaps/a.tif").exists()  # pictures have no grid to keep
    with rasterio.open(inputs / "scene.tif") as src, rasterio.open(out / "classmaps/scene.tif") as dst:
        assert (dst.crs, dst.transform, dst.height, dst.width) == (
            src.crs,
            src.transform,
            src.height,
            src.width,
        )
        labels = dst.read(1)
        assert dst.tags()["CLASS_2"] == "building"
    assert set(np.unique(labels)) <= {0, 1, 2}
    np.testing.assert_array_equal(np.asarray(Image.open(out / "classmaps/scene.png")), labels)
    with rasterio.open(out / "classmaps/scene.confidence.tif") as src:
        assert src.transform.almost_equals(dst.transform) and np.all(src.read(1) > 0)
    classes = json.loads((out / "classmaps/scene.classes.json").read_text())
    assert [c["name"] for c in classes["classes"]] == ["water", "tree", "building"]
    collection = json.loads((out / "geojson/scene.geojson").read_text())
    assert collection["features"] and "crs" in collection
    for name in ("a.jpg", "scene.jpg"):
        overlay = np.asarray(Image.open(out / "visualizations" / name))
        assert overlay.shape[1] > {"a.jpg": 120, "scene.jpg": 300}[name]  # the legend beside the picture


def test_explicit_task_semantic_on_an_instance_config(predict_tool, inputs, tmp_path):
    out = tmp_path / "out"
    argv = ["--config-file", str(TINY_CONFIG), "--input", str(inputs / "a.png"), "--output", str(out)]
    argv += [*VOCAB, "--task", "semantic", "--no-vis", "--min-confidence", "1", *FAST_OPTS]
    assert predict_tool.main(argv) == 0
    assert np.all(np.asarray(Image.open(out / "classmaps/a.png")) == 255)  # nothing that sure
    assert not os.path.exists(out / "visualizations/a.jpg")


def test_no_data_half_of_a_geotiff_is_255_and_nowhere_else(predict_tool, inputs, tmp_path):
    """uint8 bands with nodata 0 over the left half: GeoTiffReader.valid marks it; the class map follows."""
    with rasterio.open(inputs / "scene.tif") as src:
        profile, data = src.profile, src.read()
    data[data == 0] = 1  # no 0 outside the left half, so that only the left half is no data
    data[:, :, : data.shape[2] // 2] = 0
    scene = tmp_path / "half.tif"
    with rasterio.open(scene, "w", **{**profile, "nodata": 0}) as dst:
        dst.write(data)
    out = tmp_path / "out"
    argv = ["--config-file", str(SEMANTIC_CONFIG), "--input", str(scene), "--output", str(out), *VOCAB]
    argv += ["--tiling", "always", "--tile-size", "128", "--tile-overlap", "32", "--no-vis", *FAST_OPTS]
    assert predict_tool.main(argv) == 0
    with rasterio.open(out / "classmaps/half.tif") as src:
        labels = src.read(1)
        assert src.nodata == 255
    half = labels.shape[1] // 2
    assert np.all(labels[:, :half] == 255)
    assert not np.any(labels[:, half:] == 255)


@pytest.fixture
def no_model(predict_tool, monkeypatch):
    """Building the model is an error: a usage error must come before it."""

    def refuse(cfg):
        raise AssertionError("the model was built")

    monkeypatch.setattr(predict_tool, "SCOREPredictor", refuse)


@pytest.mark.parametrize(
    "config, extra, message",
    [
        (TINY_CONFIG, ["--vectorize"], "--vectorize: options of class maps"),
        (SEMANTIC_CONFIG, ["--task", "instance", "--cog"], "--cog: options of class maps"),
        (SEMANTIC_CONFIG, ["--min-confidence", "1.5"], "--min-confidence must be in [0, 1]"),
        (SEMANTIC_CONFIG, ["--vectorize", "--simplify", "-1"], "--simplify must be >= 0"),
        (
            SEMANTIC_CONFIG,
            ["--min-area", "10"],
            "--min-area: an option of the polygons, which need --vectorize",
        ),
    ],
)
def test_usage_errors_come_before_the_model(
    predict_tool,
    inputs,
    tmp_path,
    no_model,
    messages,
    config,
    extra,
    message,  # noqa: F811
):
    argv = ["--config-file", str(config), "--input", str(inputs / "a.png"), "--output", str(tmp_path / "o")]
    assert predict_tool.main(argv + extra) == 2
    assert any(message in m for m in messages), messages
