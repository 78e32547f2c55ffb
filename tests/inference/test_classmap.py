"""The class-map sink on synthetic class scores: blending, rows, resuming, sharding, no data, outputs."""

import score  # noqa: F401, I001  (first: its shims let detectron2 import without detectron2._C)
import json
import os
import tracemalloc

import numpy as np
import pytest
import rasterio
import rasterio.features
from affine import Affine
from PIL import Image
from rasterio.crs import CRS
from shapely.geometry import shape

from score.predict.classmap import ClassMapSink, row_layout, window_weights
from score.predict.scene import SceneEngine, predict_tiles
from score.predict.sharding import part_path, predict_tile_part, rank_tiles, stream_from_parts
from score.predict.windows import tile_windows

NAMES = ["water, lake", "tree", "building", "road_way"]
H, W, TILE, OVERLAP = 150, 170, 64, 16
TRANSFORM = Affine(0.5, 0, 500000.0, 0, -0.5, 4000000.0)
CRS_UTM = CRS.from_epsg(32631)


def truth(height=H, width=W):
    """The class of every scene pixel: blocks and a diagonal band (regions that cross tile rows)."""
    y, x = np.mgrid[0:height, 0:width]
    labels = ((x // 37) + (y // 23)) % len(NAMES)
    labels[np.abs(x - y) < 6] = 1
    return labels


class ScoreReader:
    """A scene whose 'image' is the position: the fake model below turns windows into class scores."""

    def __init__(self, height=H, width=W, valid=None):
        self.height, self.width = height, width
        self.labels = truth(height, width)
        self._valid = valid
        if valid is not None:
            self.valid = lambda w: self._valid[w[1] : w[3], w[0] : w[2]]

    def read(self, window):
        x0, y0, x1, y1 = window
        image = np.zeros((y1 - y0, x1 - x0, 3), np.uint8)
        image[..., 0] = self.labels[y0:y1, x0:x1]
        return image


def fake_model(image):
    """(K, h, w) scores: 0.8 for the pixel's class, 0.05 elsewhere (0.8 / 0.95 once normalised)."""
    scores = np.full((len(NAMES), *image.shape[:2]), 0.05, np.float32)
    np.put_along_axis(scores, image[None, :, :, 0].astype(np.int64), 0.8, 0)
    return scores


def make_sink(out, reader, windows, **options):
    settings = {"geotiff": True, "transform": TRANSFORM, "crs": CRS_UTM, "canvas": None, **options}
    return ClassMapSink(
        str(out),
        "scene",
        image_id="scene.tif",
        height=reader.height,
        width=reader.width,
        windows=windows,
        class_names=NAMES,
        reader=reader,
        **{"overlap": OVERLAP, **settings},
    )


def random_model(image):
    """(K, h, w) random scores drawn from the window's content (the same window, the same scores)."""
    rng = np.random.default_rng(int(image[..., 0].astype(np.int64).sum()) + image.shape[0] * image.shape[1])
    return rng.random((len(NAMES), *image.shape[:2]), dtype=np.float32)


def blended(reader, windows, overlap, sink, predict=random_model):
    """The class map and winning score computed directly: every window's weighted scores added to
    sums of the whole scene in window order, divided by the summed weights."""
    sums = np.zeros((len(NAMES), reader.height, reader.width), np.float32)
    weights = np.zeros((reader.height, reader.width), np.float32)
    for window in windows:
        x0, y0, x1, y1 = window
        weight = window_weights(window, reader.height, reader.width, overlap)
        sums[:, y0:y1, x0:x1] += sink.tile(window, predict(reader.read(window))).astype(np.float32) * weight
        weights[y0:y1, x0:x1] += weight
    scores = sums / weights
    labels = scores.argmax(axis=0).astype(np.uint8)
    best = np.take_along_axis(scores, labels[None].astype(np.int64), 0)[0]
    labels[best < sink.min_confidence] = 255
    if hasattr(reader, "valid"):
        labels[~reader._valid], best[~reader._valid] = 255, np.nan
    return labels, best


def run(out, reader=None, predict=fake_model, tile=TILE, overlap=OVERLAP, **options):
    reader = reader or ScoreReader()
    windows = tile_windows(reader.height, reader.width, tile, overlap)
    sink = make_sink(out, reader, windows, overlap=overlap, **options)
    engine = SceneEngine(
        str(out),
        "scene",
        sink=sink,
        image_id="scene.tif",
        height=reader.height,
        width=reader.width,
        windows=windows,
        key={"k": 1},
    )
    predict_tiles(predict, reader, engine, progress=False)
    return engine


OUTPUTS = ["classmaps/scene.tif", "classmaps/scene.png", "classmaps/scene.classes.json"]


def test_weights_fall_off_at_inner_borders_only_and_never_reach_zero():
    weights = window_weights((0, 10, 64, 74), 200, 64, 16)
    assert weights.min() > 0 and weights.max() == 1
    assert np.all(weights[:, 0] == weights[:, 32])  # left and right are scene borders: no fall-off
    assert weights[0, 0] == pytest.approx(1 / 17) and weights[-1, 0] == pytest.approx(1 / 17)
    assert np.all(np.diff(weights[:17, 0]) > 0)
    assert np.all(window_weights((0, 0, 64, 64), 64, 64, 16) == 1)


def test_class_map_on_the_input_grid_with_classes_and_colours(tmp_path):
    run(tmp_path, confidence=True, min_confidence=0.0)
    with rasterio.open(tmp_path / "classmaps/scene.tif") as src:
        assert (src.height, src.width, src.crs, src.transform) == (H, W, CRS_UTM, TRANSFORM)
        assert src.dtypes[0] == "uint8" and src.nodata == 255 and src.block_shapes[0] == (256, 256)
        assert src.compression.name.lower() == "deflate"
        labels = src.read(1)
        colour = json.loads(src.tags()["classes"])[2]["colour"]
        assert "#" + "".join(f"{c:02x}" for c in src.colormap(1)[2][:3]) == colour
        assert src.colormap(1)[255][3] == 0  # no data is transparent
        assert src.tags()["CLASS_0"] == "water"
    np.testing.assert_array_equal(labels, truth())
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "classmaps/scene.png")), truth())
    assert Image.open(tmp_path / "classmaps/scene.png").mode == "P"
    classes = json.loads((tmp_path / "classmaps/scene.classes.json").read_text())
    assert classes["nodata"] == 255
    assert [c["name"] for c in classes["classes"]] == ["water", "tree", "building", "road way"]
    assert classes["classes"][0]["synonyms"] == ["water", "lake"]
    with rasterio.open(tmp_path / "classmaps/scene.confidence.tif") as src:
        assert src.transform == TRANSFORM and src.dtypes[0] == "float32"
        np.testing.assert_allclose(src.read(1), 0.8 / 0.95, atol=1e-3)
    # Checkpoint leftovers are gone once the scene is done.
    assert sorted(os.listdir(tmp_path / "scenes/scene")) == ["manifest.json", "progress.jsonl"]


# (H, W, T, O): the last row and column of windows moved back (overlap 26 and 42 px instead of 16);
# overlap > T / 2 (a pixel row in three rows of windows); one window larger than the scene.
LAYOUTS = [(150, 170, 64, 16), (97, 203, 64, 40), (50, 40, 64, 16)]


@pytest.mark.parametrize("height, width, tile, overlap", LAYOUTS)
def test_class_map_is_the_blend_of_all_windows_bit_for_bit(tmp_path, height, width, tile, overlap):
    valid = np.ones((height, width), bool)
    valid[height // 3 : height // 2, width // 4 :] = False
    reader = ScoreReader(height, width, valid=valid)
    options = {"confidence": True, "min_confidence": 0.3}
    run(tmp_path, reader, predict=random_model, tile=tile, overlap=overlap, **options)
    windows = tile_windows(height, width, tile, overlap)
    labels, best = blended(reader, windows, overlap, make_sink(tmp_path, reader, windows, **options))
    assert len(np.unique(labels)) == len(NAMES) + 1  # every class and no data
    with rasterio.open(tmp_path / "classmaps/scene.tif") as src:
        np.testing.assert_array_equal(src.read(1), labels)
    with rasterio.open(tmp_path / "classmaps/scene.confidence.tif") as src:
        assert src.read(1).tobytes() == best.tobytes()


def dies_at_tile(count, model):
    """``model``, interrupted (KeyboardInterrupt) at its ``count``-th call."""
    calls = []

    def predict(image):
        calls.append(1)
        if len(calls) == count:
            raise KeyboardInterrupt
        return model(image)

    return predict


@pytest.mark.parametrize("dies_at", [3, 10, 17])  # 7 windows a row: in rows 0, 1 and 2 (the last)
def test_killed_in_any_row_and_resumed_writes_the_same_bytes(tmp_path, dies_at):
    height, width, tile, overlap = LAYOUTS[1]
    reader = ScoreReader(height, width)
    layout = {"tile": tile, "overlap": overlap, "confidence": True}
    run(tmp_path / "whole", reader, predict=random_model, **layout)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut", reader, predict=dies_at_tile(dies_at, random_model), **layout)
    engine = run(tmp_path / "cut", reader, predict=random_model, **layout)
    assert engine.resumed and len(row_layout(engine.windows, height, width)) == 3
    for name in OUTPUTS + ["classmaps/scene.confidence.tif"]:
        assert (tmp_path / "cut" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name


def test_a_checkpoint_without_a_strip_is_an_error_that_names_the_folder(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, predict=dies_at_tile(6, fake_model))
    manifest = tmp_path / "scenes/scene/manifest.json"
    state = json.loads(manifest.read_text())
    state["band"] = state.pop("strip")  # the sums of a whole row of windows
    manifest.write_text(json.dumps(state))
    with pytest.raises(ValueError, match=r"scenes/scene holds a partial class map of an older layout"):
        run(tmp_path)


def test_memory_does_not_grow_with_the_scene_width(tmp_path):
    """The sums held are one window's, not a row of windows: a 4x wider scene peaks at about the same."""
    peaks = []
    for width in (500, 2000):
        reader = ScoreReader(64, width)
        tracemalloc.start()
        run(tmp_path / str(width), reader, predict=random_model)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    sums_of_a_row = (len(NAMES) + 1) * TILE * 1500 * 4  # what 1500 px more of a row of windows holds
    assert peaks[1] - peaks[0] < sums_of_a_row / 4


def test_windows_that_do_not_tile_the_scene_row_by_row_are_an_error():
    assert row_layout(tile_windows(H, W, TILE, OVERLAP), H, W)[-1] == (8, 11, 86, 150)
    with pytest.raises(ValueError, match="windows 0..1"):
        row_layout([(0, 0, 64, 64), (70, 0, 134, 64)], 64, 134)  # a gap between windows
    with pytest.raises(ValueError, match="windows 2..3"):
        row_layout([(0, 0, 64, 64), (60, 0, 124, 64), (0, 70, 64, 134), (60, 70, 124, 134)], 134, 124)
    with pytest.raises(ValueError, match="windows 0..0"):
        row_layout([(0, 0, 64, 64)], 100, 64)  # rows below the last window


def test_min_confidence_makes_unsure_pixels_no_data(tmp_path):
    run(tmp_path, min_confidence=0.9)
    with rasterio.open(tmp_path / "classmaps/scene.tif") as src:
        assert np.all(src.read(1) == 255)


def test_killed_half_way_and_resumed_writes_the_same_bytes(tmp_path):
    options = {"confidence": True, "vectorize": {"band_rows": 40}}
    run(tmp_path / "whole", **options)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut", predict=dies_at_tile(9, fake_model), **options)
    assert any(n.startswith("strip.") for n in os.listdir(tmp_path / "cut/scenes/scene"))
    calls = []
    engine = run(tmp_path / "cut", predict=lambda image: calls.append(1) or fake_model(image), **options)
    assert engine.resumed and len(calls) < len(engine.windows)
    for name in OUTPUTS + ["classmaps/scene.confidence.tif", "geojson/scene.geojson"]:
        assert (tmp_path / "cut" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name


def test_two_ranks_sharing_rows_write_what_one_writes(tmp_path):
    run(tmp_path / "single")
    reader = ScoreReader()
    windows = tile_windows(H, W, TILE, OVERLAP)
    out = tmp_path / "sharded"
    parts = [part_path(str(out), "scene", k, 2) for k in range(2)]
    for k in range(2):
        sink = make_sink(out, reader, windows)  # only tile() and encode() are used
        predict_tile_part(
            fake_model, reader, windows, rank_tiles(windows, k, 2), parts[k], {"k": 1}, sink=sink
        )
    engine = SceneEngine(
        str(out),
        "scene",
        sink=make_sink(out, reader, windows),
        image_id="scene.tif",
        height=H,
        width=W,
        windows=windows,
        key={"k": 1},
    )
    stream_from_parts(engine, parts)
    for name in OUTPUTS:
        assert (out / name).read_bytes() == (tmp_path / "single" / name).read_bytes(), name


def test_no_data_pixels_are_255_and_nowhere_else(tmp_path):
    valid = np.ones((H, W), bool)
    valid[:, : W // 2] = False
    run(tmp_path, reader=ScoreReader(valid=valid))
    with rasterio.open(tmp_path / "classmaps/scene.tif") as src:
        labels = src.read(1)
    assert np.all(labels[:, : W // 2] == 255)
    np.testing.assert_array_equal(labels[:, W // 2 :], truth()[:, W // 2 :])


def test_polygons_rasterised_back_reproduce_the_class_map(tmp_path):
    run(tmp_path, vectorize={"band_rows": 40})  # 4 bands: regions cross band borders
    lines = (tmp_path / "geojson/scene.geojsonl").read_text().splitlines()
    features = [json.loads(line) for line in lines]
    collection = json.loads((tmp_path / "geojson/scene.geojson").read_text())
    assert len(collection["features"]) == len(features)
    assert collection["crs"]["properties"]["name"] == "urn:ogc:def:crs:EPSG::32631"
    back = rasterio.features.rasterize(
        [(f["geometry"], f["properties"]["value"]) for f in features],
        out_shape=(H, W),
        fill=255,
        transform=TRANSFORM,
        dtype="uint8",
    )
    np.testing.assert_array_equal(back, truth())
    # One feature per connected region: as many as the whole-raster polygonizer finds.
    whole = list(rasterio.features.shapes(truth().astype(np.uint8), connectivity=4))
    assert len(features) == len(whole)
    assert all(shape(f["geometry"]).is_valid for f in features)
    assert {f["properties"]["class"] for f in features} == {"water", "tree", "building", "road way"}


def test_simplify_and_min_area(tmp_path):
    run(tmp_path, vectorize={"band_rows": 40, "min_area": 200, "simplify": 2.0})
    features = [json.loads(line) for line in (tmp_path / "geojson/scene.geojsonl").read_text().splitlines()]
    assert features and all(f["properties"]["area_px"] >= 200 for f in features)
    whole = [s for s in rasterio.features.shapes(truth().astype(np.uint8), connectivity=4)]
    assert len(features) < len(whole)


def test_cog(tmp_path):
    run(tmp_path, cog=True)
    with rasterio.open(tmp_path / "classmaps/scene.tif") as src:
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert src.crs == CRS_UTM
        np.testing.assert_array_equal(src.read(1), truth())
