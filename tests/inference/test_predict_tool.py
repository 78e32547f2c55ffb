"""tools/predict.py end to end on the tiny model (random weights): pictures, a GeoTIFF, errors."""

import score  # noqa: F401, I001  (first: its shims let detectron2 import without detectron2._C)
import json
import logging

import numpy as np
import pytest
import rasterio
import rasterio.features
import torch
from PIL import Image
from pycocotools import mask as mask_util

from tests.conftest import TINY_CONFIG, load_script

# Small test size and tiles: every forward of the tiny model stays short.
FAST_OPTS = ["--opts", "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "160"]


def load_tool(name: str):
    return load_script(f"tools/{name}.py")


@pytest.fixture(scope="module")
def predict_tool():
    return load_tool("predict")


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


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(folder / "a.png")
    Image.fromarray(rng.integers(0, 256, (70, 50), dtype=np.uint8)).save(folder / "gray.jpg")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    load_tool("make_geotiff_scene").make_scene(str(folder / "scene.tif"), 1500, seed=1)
    return folder


def test_pictures_and_geotiff_with_one_unreadable_file(predict_tool, inputs, tmp_path, messages):
    out = tmp_path / "out"
    argv = ["--config-file", str(TINY_CONFIG), "--input", str(inputs), "--output", str(out)]
    argv += ["--vocab", "ship,storage tank,building", "--confidence-threshold", "0"]
    argv += ["--tile-size", "1000", "--tile-overlap", "100", *FAST_OPTS]  # 2 x 2 tiles
    assert predict_tool.main(argv) == 1  # broken.jpg could not be read; the others were processed

    assert any("broken.jpg" in m and "cannot read image" in m for m in messages)
    results = json.loads((out / "predictions.json").read_text())
    assert [c["name"] for c in results["categories"]] == ["ship", "storage tank", "building"]
    assert [c["id"] for c in results["categories"]] == [1, 2, 3]
    sizes = {image["id"]: (image["height"], image["width"]) for image in results["images"]}
    assert sizes == {"a.png": (90, 120), "gray.jpg": (70, 50), "scene.tif": (1500, 1500)}
    annotations = results["annotations"]
    assert {a["image_id"] for a in annotations} == set(sizes)
    assert len({a["id"] for a in annotations}) == len(annotations)
    for a in annotations:
        assert 1 <= a["category_id"] <= 3 and 0.0 <= a["score"] <= 1.0
        assert list(mask_util.decode(a["segmentation"]).shape) == list(sizes[a["image_id"]])
        assert mask_util.area(a["segmentation"]) == a["area"] > 0
    assert sorted(p.name for p in (out / "visualizations").iterdir()) == ["a.jpg", "gray.jpg", "scene.jpg"]
    assert any("scene.tif" in m and "tiled" in m for m in messages)

    collection = json.loads((out / "geojson" / "scene.geojson").read_text())
    assert collection["crs"]["properties"]["name"] == "urn:ogc:def:crs:EPSG::32633"
    scene_annotations = [a for a in annotations if a["image_id"] == "scene.tif"]
    assert len(collection["features"]) == len(scene_annotations)
    with rasterio.open(inputs / "scene.tif") as src:
        left, bottom, right, top = src.bounds
    for feature in collection["features"]:
        polygons = feature["geometry"]["coordinates"]
        if feature["geometry"]["type"] == "Polygon":
            polygons = [polygons]
        points = np.array([p for polygon in polygons for ring in polygon for p in ring])
        assert (points[:, 0] >= left).all() and (points[:, 0] <= right).all()
        assert (points[:, 1] >= bottom).all() and (points[:, 1] <= top).all()
        assert feature["properties"]["area_crs"] == pytest.approx(feature["properties"]["area_px"] * 0.25)


def test_vocabulary_file_glob_and_no_tiling(predict_tool, inputs, tmp_path):
    vocab = tmp_path / "classes.txt"
    vocab.write_text("ship,boat\nharbor\n", encoding="utf-8")
    out = tmp_path / "out"
    argv = ["--config-file", str(TINY_CONFIG), "--input", str(inputs / "*.png"), "--output", str(out)]
    argv += ["--vocab-file", str(vocab), "--confidence-threshold", "0", "--tiling", "never", "--no-vis"]
    assert predict_tool.main(argv + FAST_OPTS) == 0
    results = json.loads((out / "predictions.json").read_text())
    assert results["categories"][0] == {"id": 1, "name": "ship", "synonyms": ["ship", "boat"]}
    assert [image["id"] for image in results["images"]] == ["a.png"]
    assert not (out / "visualizations").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--vocab", " , "], "vocabulary is empty"),
        (
            ["--vocab", "ship", "--opts", "MODEL.WEIGHTS", "/no/such/model_final.pth"],
            "/no/such/model_final.pth",
        ),
        (["--vocab", "ship", "--tile-size", "64", "--tile-overlap", "64"], "--tile-overlap"),
        (["--vocab", "ship", "--band-pixels", "0"], "--band-pixels"),
    ],
)
def test_usage_errors(predict_tool, inputs, tmp_path, messages, extra, message):
    argv = ["--config-file", str(TINY_CONFIG), "--input", str(inputs / "a.png"), "--output", str(tmp_path)]
    assert predict_tool.main(argv + extra) == 2
    assert any(message in m for m in messages), messages


def test_missing_input_is_named(predict_tool, tmp_path, messages):
    argv = [
        "--config-file",
        str(TINY_CONFIG),
        "--input",
        str(tmp_path / "none*.png"),
        "--output",
        str(tmp_path),
    ]
    assert predict_tool.main(argv + ["--vocab", "ship"]) == 2
    assert any("none*.png" in m for m in messages)


def test_image_ids_disambiguate_equal_names(predict_tool, tmp_path):
    paths = [str(tmp_path / "x" / "a.png"), str(tmp_path / "y" / "a.png"), str(tmp_path / "y" / "b.png")]
    assert predict_tool.image_ids(paths) == ["x/a.png", "y/a.png", "y/b.png"]
    assert predict_tool.image_ids(paths[1:]) == ["a.png", "b.png"]
    assert predict_tool.output_stem("x/a.png") == "x__a"


def test_tiling_rule(predict_tool):
    # Test resize of the full model: shortest edge 512, longest at most 800.
    assert not predict_tool.needs_tiling(800, 1000, 512, 800)
    assert predict_tool.needs_tiling(1100, 1100, 512, 800)
    assert predict_tool.needs_tiling(600, 2000, 512, 800)


@pytest.fixture
def no_model(predict_tool, monkeypatch):
    """Fails the test if the tool gets as far as building the model."""

    def refuse(cfg):
        raise AssertionError("the model was built before the usage error was found")

    monkeypatch.setattr(predict_tool, "SCOREPredictor", refuse)


@pytest.mark.parametrize("case", ["output_is_file", "output_uncreatable", "vis_is_file", "geojson_is_file"])
def test_output_usage_errors_come_before_the_model(predict_tool, inputs, tmp_path, messages, no_model, case):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = {"output_is_file": blocker, "output_uncreatable": blocker / "sub"}.get(case, tmp_path / "out")
    named = out
    if case in ("vis_is_file", "geojson_is_file"):
        out.mkdir()
        named = out / case.split("_")[0].replace("vis", "visualizations")
        named.write_text("x")
    argv = ["--config-file", str(TINY_CONFIG), "--input", str(inputs / "a.png"), "--output", str(out)]
    assert predict_tool.main(argv + ["--vocab", "ship"]) == 2
    assert any(str(named) in m for m in messages), messages


def test_cuda_config_falls_back_to_cpu_with_a_warning(predict_tool, inputs, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available: there is nothing to fall back from")
    warnings = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: warnings.append(record.getMessage())
    trainer_logger = logging.getLogger("score.engine.trainer")
    trainer_logger.addHandler(handler)
    try:
        argv = [
            "--config-file",
            str(TINY_CONFIG),
            "--input",
            str(inputs / "a.png"),
            "--output",
            str(tmp_path),
        ]
        argv += ["--vocab", "ship", "--no-vis", *FAST_OPTS, "MODEL.DEVICE", "cuda"]
        assert predict_tool.main(argv) == 0
    finally:
        trainer_logger.removeHandler(handler)
    assert any("CUDA is not available" in m and "MODEL.DEVICE=cpu" in m for m in warnings), warnings
    assert (tmp_path / "predictions.json").is_file()


def test_tiff_without_crs_and_empty_result_are_explained(predict_tool, tmp_path, messages):
    image = tmp_path / "plain.tif"
    data = np.random.default_rng(2).integers(0, 256, (3, 64, 64), dtype=np.uint8)
    with rasterio.open(image, "w", driver="GTiff", width=64, height=64, count=3, dtype="uint8") as dst:
        dst.write(data)
    argv = [
        "--config-file",
        str(TINY_CONFIG),
        "--input",
        str(image),
        "--vocab",
        "ship",
        "--no-vis",
        *FAST_OPTS,
    ]
    assert predict_tool.main(["--output", str(tmp_path / "a"), "--confidence-threshold", "1", *argv]) == 0
    assert not (tmp_path / "a" / "geojson").exists()
    assert any("no CRS" in m and "--pixel-geojson" in m for m in messages), messages
    assert any("best score seen" in m and "--confidence-threshold" in m for m in messages), messages

    assert (
        predict_tool.main(
            [
                "--output",
                str(tmp_path / "b"),
                "--pixel-geojson",
                *argv[: -len(FAST_OPTS)],
                "--confidence-threshold",
                "0",
                *FAST_OPTS,
            ]
        )
        == 0
    )
    collection = json.loads((tmp_path / "b" / "geojson" / "plain.geojson").read_text())
    assert "crs" not in collection and collection["features"]
    for feature in collection["features"]:
        rings = feature["geometry"]["coordinates"]
        rings = (
            [ring for polygon in rings for ring in polygon]
            if feature["geometry"]["type"] != "Polygon"
            else rings
        )
        points = np.array([p for ring in rings for p in ring])
        assert (points >= 0).all() and (points <= 64).all()  # pixel corners (column, row)


def test_16_bit_png_is_stretched_not_saturated(predict_tool, tmp_path):
    """A 16-bit grey PNG of 12-bit values (0..4095) gets the percentile stretch of score.data.image_io."""
    import cv2

    values = np.linspace(0, 4095, 60 * 80).reshape(60, 80).astype(np.uint16)
    path = str(tmp_path / "u16.png")
    assert cv2.imwrite(path, values)
    args = predict_tool.get_parser().parse_args(["--config-file", "c", "--input", path, "--output", "o"])
    image = predict_tool.open_scene(path, args).image
    assert image.shape == (60, 80, 3) and image.dtype == np.uint8
    low, high = np.percentile(values.astype(np.float64), [2, 98])
    scaled = (values.astype(np.float32) - np.float32(low)) * np.float32(255.0 / (high - low))
    expected = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    for channel in range(3):  # one band, read as R, G and B
        np.testing.assert_array_equal(image[..., channel], expected)
    assert (image == 255).mean() < 0.05  # detectron2's (PIL's) reader made 94 % of them 255


@pytest.fixture(scope="module")
def tiny_checkpoints(tmp_path_factory):
    """model_final.pth of a random tiny SCORE, the same file truncated, and one of a 10-query model."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    from tests.conftest import tiny_cfg

    folder = tmp_path_factory.mktemp("weights")
    DetectionCheckpointer(build_model(tiny_cfg()), save_dir=str(folder)).save("model_final")
    data = (folder / "model_final.pth").read_bytes()
    (folder / "truncated").mkdir()
    (folder / "truncated" / "model_final.pth").write_bytes(data[: len(data) // 2])
    other = build_model(tiny_cfg("MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", "10"))
    DetectionCheckpointer(other, save_dir=str(folder)).save("queries10")
    return folder


@pytest.mark.parametrize(
    "weights, expected",
    [
        ("truncated/model_final.pth", "cannot read checkpoint"),
        ("queries10.pth", "query_feat.weight: (10, 32) in the checkpoint, (20, 32) in the model"),
    ],
)
def test_bad_weights_exit_non_zero_naming_the_problem(
    predict_tool, inputs, tmp_path, messages, tiny_checkpoints, weights, expected
):
    path = tiny_checkpoints / weights
    argv = ["--config-file", str(TINY_CONFIG), "--input", str(inputs / "a.png"), "--output", str(tmp_path)]
    argv += ["--vocab", "ship", *FAST_OPTS, "MODEL.WEIGHTS", str(path)]
    assert predict_tool.main(argv) == 2
    error = next(m for m in messages if expected in m)
    assert (str(path) if weights.startswith("truncated") else "MODEL.ALLOW_PARTIAL_WEIGHTS") in error
    # The documented switch loads the partial checkpoint on purpose.
    if weights == "queries10.pth":
        assert predict_tool.main(argv + ["MODEL.ALLOW_PARTIAL_WEIGHTS", "True"]) == 0


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """A checkpoint of one tiny model, so that every run (and every process) predicts the same."""
    from detectron2.modeling import build_model

    from tests.conftest import tiny_cfg

    path = tmp_path_factory.mktemp("weights") / "tiny.pth"
    torch.save({"model": build_model(tiny_cfg()).state_dict()}, path)
    return str(path)


def scene_outputs(out):
    """What a run wrote: COCO results, FeatureCollection, streamed features, overlay bytes."""
    return {
        "coco": json.loads((out / "predictions.json").read_text()),
        "collection": json.loads((out / "geojson" / "scene.geojson").read_text()),
        "features": (out / "geojson" / "scene.geojsonl").read_text(),
        "overlay": (out / "visualizations" / "scene.jpg").read_bytes(),
    }


@pytest.mark.slow  # three runs of the tool (about 90 s on 2 shared cores)
def test_interrupted_scene_resumes_to_the_same_result(predict_tool, tmp_path, tiny_weights, monkeypatch):
    load_tool("make_geotiff_scene").make_scene(str(tmp_path / "scene.tif"), 400, seed=3)
    argv = ["--config-file", str(TINY_CONFIG), "--input", str(tmp_path / "scene.tif")]
    argv += ["--vocab", "building,storage tank,ship", "--confidence-threshold", "0", "--tiling", "always"]
    argv += ["--tile-size", "128", "--tile-overlap", "32", "--vis-max-size", "200"]  # 4 x 4 tiles
    argv += [*FAST_OPTS, "MODEL.WEIGHTS", tiny_weights]
    assert predict_tool.main(["--output", str(tmp_path / "whole"), *argv]) == 0
    whole = scene_outputs(tmp_path / "whole")
    assert whole["coco"]["annotations"] and whole["collection"]["features"]

    class Killed(Exception):
        pass

    calls = []
    predict = predict_tool.SCOREPredictor.__call__

    def dies_at_tile_7(self, image, vocabulary=None):
        if len(calls) == 7:  # in the second row of tiles
            raise Killed
        calls.append(1)
        return predict(self, image, vocabulary)

    monkeypatch.setattr(predict_tool.SCOREPredictor, "__call__", dies_at_tile_7)
    with pytest.raises(Killed):
        predict_tool.main(["--output", str(tmp_path / "resumed"), *argv])
    monkeypatch.setattr(predict_tool.SCOREPredictor, "__call__", predict)
    manifest = json.loads((tmp_path / "resumed" / "scenes" / "scene" / "manifest.json").read_text())
    assert manifest["rows_done"] == 1 and manifest["next_tile"] == 4 and not manifest["complete"]

    assert predict_tool.main(["--output", str(tmp_path / "resumed"), "--resume", *argv]) == 0
    assert scene_outputs(tmp_path / "resumed") == whole
    progress = (tmp_path / "resumed" / "scenes" / "scene" / "progress.jsonl").read_text().splitlines()
    assert [json.loads(line)["tile"] for line in progress] == list(range(16))


def test_malloc_threshold_is_fixed_unless_the_user_set_one(predict_tool, monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", str(4 << 20))
    assert predict_tool.bound_malloc_cache() is False
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    assert predict_tool.bound_malloc_cache() is True  # glibc (Linux)


def test_large_objects_outlined_in_bands_cover_their_masks(predict_tool, tmp_path, tiny_weights):
    """--band-pixels below the objects' size: the same COCO results; the GeoJSON rasterizes to them."""
    load_tool("make_geotiff_scene").make_scene(str(tmp_path / "scene.tif"), 400, seed=3)
    argv = ["--config-file", str(TINY_CONFIG), "--input", str(tmp_path / "scene.tif")]
    argv += ["--vocab", "building,storage tank,ship", "--confidence-threshold", "0", "--tiling", "always"]
    argv += ["--tile-size", "128", "--tile-overlap", "32", "--vis-max-size", "200"]
    argv += [*FAST_OPTS, "MODEL.WEIGHTS", tiny_weights]
    assert predict_tool.main(["--output", str(tmp_path / "whole"), *argv]) == 0
    assert predict_tool.main(["--output", str(tmp_path / "bands"), "--band-pixels", "5000", *argv]) == 0
    whole, bands = scene_outputs(tmp_path / "whole"), scene_outputs(tmp_path / "bands")
    assert bands["coco"] == whole["coco"] and bands["collection"] != whole["collection"]
    with rasterio.open(tmp_path / "scene.tif") as src:
        transform = src.transform
    annotations, features = bands["coco"]["annotations"], bands["collection"]["features"]
    large = 0
    for annotation, feature in zip(annotations, features, strict=True):
        mask = mask_util.decode(annotation["segmentation"]).astype(bool)
        geometry = feature["geometry"]
        parts = geometry["coordinates"] if geometry["type"] == "MultiPolygon" else [geometry["coordinates"]]
        shapes = [({"type": "Polygon", "coordinates": p}, 1) for p in parts]
        covered = rasterio.features.rasterize(shapes, out_shape=mask.shape, transform=transform) > 0
        assert np.array_equal(covered, mask) and feature["properties"]["area_px"] == mask.sum()
        large += annotation["bbox"][2] * annotation["bbox"][3] > 5000
    assert large > 0
