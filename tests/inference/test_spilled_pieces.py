"""Merged objects kept as pieces in a file (score/predict/spill.py PieceStore, SpilledInstance).

The reference is the in-memory merge (each merged object holds its packed
mask): with a store, the merger must find the same objects, with the same
masks, scores and boxes, and the streamed outputs must be the same bytes.
"""

import score  # noqa: F401, I001  (first: its shims let detectron2 import without detectron2._C)
import json

import numpy as np
import pytest
import rasterio.features
from affine import Affine

from score.predict import merge as merge_module
from score.predict import masks, spill
from score.predict.geojson import FeatureMaker, instance_geometry
from score.predict.instances import InstanceSink, instance_from_record, instance_record
from score.predict.masks import SceneInstance
from score.predict.merge import TileMerger, instances_to_scene, tiled_inference
from score.predict.predictor import _reduced_mask
from score.predict.scene import SceneEngine, predict_tiles
from score.predict.spill import PieceStore, SpilledInstance
from score.predict.windows import ArrayReader, hull, intersect, near, tile_windows
from tests.inference.test_packed_masks import ragged_predictor, ragged_scene
from tests.inference.test_streaming import Interrupt, interrupting

CLASSES = ["even", "odd"]


def merge(scene, tile_size, overlap, store=None):
    """tiled_inference's loop, with the merger given ``store``."""
    merger = TileMerger(store=store)
    for window in tile_windows(*scene.shape[:2], tile_size, overlap):
        merger.add(
            window,
            instances_to_scene(ragged_predictor(scene[window[1] : window[3], window[0] : window[2]]), window),
        )
    return merger.finish()


def dense(inst):
    """What an instance is, whatever holds its mask: class, score, box, windows (as a set), mask."""
    return inst.category, inst.score, inst.box, sorted(inst.windows), inst.mask.tobytes()


def piece(window, x0, y0, x1, y1):
    return SceneInstance(0, 0.9, (x0, y0, x1, y1), np.ones((y1 - y0, x1 - x0), bool), [window])


@pytest.mark.parametrize("chunk", [1 << 22, 50])
def test_spilled_merge_equals_the_in_memory_merge(tmp_path, monkeypatch, chunk):
    for module in (masks, spill):
        monkeypatch.setattr(module, "RLE_CHUNK_PIXELS", chunk)
    scene = ragged_scene()
    height, width = scene.shape[:2]
    # 64 px tiles, 13 px overlap: pieces overlap each other and start off byte boundaries.
    expected = tiled_inference(ragged_predictor, scene, tile_size=64, overlap=13)
    store = PieceStore(str(tmp_path / "pieces.bin"))
    got = merge(scene, 64, 13, store)
    spilled = [i for i in got if isinstance(i, SpilledInstance)]
    # 7 chains as large as the scene, of 9 to 16 pieces (one per tile at most), none in memory.
    assert len(spilled) == 7 and all(i.box == (0, 0, width, height) for i in spilled)
    assert sorted(len(i.pieces) for i in spilled) == [9, 12, 15, 15, 16, 16, 16]
    assert all(len(i.pieces) == len(i.windows) for i in spilled)
    assert [dense(i) for i in got] == [dense(i) for i in expected]
    for a, b in zip(got, expected):
        assert a.area == b.area
        assert a.to_coco_rle(height, width) == b.to_coco_rle(height, width)
        assert a.crop_rle() == b.crop_rle()
        assert np.array_equal(a.bits, b.bits)
        assert instance_geometry(a, Affine.identity()) == instance_geometry(b, Affine.identity())
        for region in [(0, 0, 5, 5), (40, 30, 120, 77), (-3, 190, 60, 210)]:
            assert np.array_equal(a.region(*region), b.region(*region))
        assert a.windows_near((60, 60, 70, 70)) == [w for w in a.windows if near(w, (60, 60, 70, 70))]
        back = instance_from_record(json.loads(json.dumps(instance_record(a))), store)
        assert dense(back) == dense(a)


def test_a_chain_across_three_tiles_spilled(tmp_path):
    # Three 20 x 10 tiles overlapping by 10 px; one bar continues through all of them, one is
    # only in the first two, and a piece of the third is another object (it touches nothing).
    a, b, c = (0, 0, 20, 10), (10, 0, 30, 10), (20, 0, 40, 10)
    tiles = [
        (a, [piece(a, 3, 0, 20, 4), piece(a, 5, 6, 20, 9)]),
        (b, [piece(b, 10, 0, 30, 4), piece(b, 10, 6, 23, 9)]),
        (c, [piece(c, 20, 0, 37, 4), piece(c, 33, 7, 40, 10)]),
    ]
    results = []
    for store in (None, PieceStore(str(tmp_path / "pieces.bin"))):
        merger = TileMerger(store=store)
        for window, pieces in tiles:
            merger.add(window, pieces)
        results.append(merger.finish())
    memory, spilled = results
    assert [dense(i) for i in spilled] == [dense(i) for i in memory]
    chain = [i for i in spilled if i.box == (3, 0, 37, 4)]
    assert len(chain) == 1 and isinstance(chain[0], SpilledInstance)
    assert sorted(chain[0].windows) == [a, b, c] and len(chain[0].pieces) == 3
    assert sorted(i.box for i in spilled) == [(3, 0, 37, 4), (5, 6, 23, 9), (33, 7, 40, 10)]


def open_stream(folder, windows, scene):
    sink = InstanceSink(
        str(folder),
        "ragged",
        image_id="ragged.tif",
        height=scene.shape[0],
        width=scene.shape[1],
        class_names=CLASSES,
        features=FeatureMaker(CLASSES, transform=Affine.identity(), crs=None),
        canvas=lambda: (scene[::2, ::2].copy(), 0.5),
    )
    size = dict(height=scene.shape[0], width=scene.shape[1])
    key = {"scene": "ragged"}
    return SceneEngine(
        str(folder), "ragged", sink=sink, image_id="ragged.tif", **size, windows=windows, key=key
    )


@pytest.mark.parametrize("after", [None, 5, 10])
def test_streamed_ragged_scene_equals_the_in_memory_merge_and_resumes(tmp_path, after):
    scene = ragged_scene()
    height, width = scene.shape[:2]
    windows = tile_windows(height, width, 64, 13)
    expected = tiled_inference(ragged_predictor, scene, tile_size=64, overlap=13)
    folder = tmp_path / "out"
    if after is not None:
        with pytest.raises(Interrupt):
            predict_tiles(
                interrupting(ragged_predictor, after),
                ArrayReader(scene),
                open_stream(folder, windows, scene),
                progress=False,
            )
        held = (folder / "scenes" / "ragged" / "manifest.json").read_text()
        name = json.loads(held)["held"]
        records = [json.loads(line)["instance"] for line in (folder / "scenes" / "ragged" / name).open()]
        assert any("pieces" in r for r in records)  # merged objects are held as pieces on disk
    stream = open_stream(folder, windows, scene)
    assert stream.resumed == (after is not None)
    predict_tiles(ragged_predictor, ArrayReader(scene), stream, progress=False)

    results = [json.loads(line) for line in (folder / "scenes" / "ragged" / "detections.jsonl").open()]
    key = lambda r: (r["category_id"], r["score"], r["bbox"], r["area"], r["segmentation"]["counts"])  # noqa: E731
    assert sorted(map(key, results)) == sorted(
        (i.category + 1, round(i.score, 6), i.bbox_xywh(), i.area, i.to_coco_rle(height, width)["counts"])
        for i in expected
    )
    maker = FeatureMaker(CLASSES, transform=Affine.identity(), crs=None)
    features = [line for line in (folder / "geojson" / "ragged.geojsonl").read_text().splitlines()]
    assert sorted(features) == sorted(json.dumps(maker.feature(i)) for i in expected)
    assert not (folder / "scenes" / "ragged" / "pieces.bin").exists()
    if after is not None:  # byte for byte the uninterrupted run
        whole = tmp_path / "whole"
        predict_tiles(
            ragged_predictor, ArrayReader(scene), open_stream(whole, windows, scene), progress=False
        )
        for name in ["scenes/ragged/detections.jsonl", "geojson/ragged.geojson", "visualizations/ragged.jpg"]:
            assert (folder / name).read_bytes() == (whole / name).read_bytes(), name


@pytest.mark.parametrize("cell", [1, 7, 256])
def test_box_grid_finds_the_boxes_near_a_box(cell):
    rng = np.random.default_rng(cell)
    grid, boxes = spill._BoxGrid(cell), []
    for x, y, w, h in rng.integers(0, 60, (200, 4)):
        boxes.append((int(x), int(y), int(x + w // 3 + 1), int(y + h // 3 + 1)))
        grid.add(boxes[-1])
    for x, y, w, h in rng.integers(-5, 70, (100, 4)):
        query = (int(x), int(y), int(x + abs(w) // 4), int(y + abs(h) // 4))
        assert grid.near(query) == [i for i, b in enumerate(boxes) if near(b, query)]


@pytest.mark.parametrize("spill", [False, True])
def test_share_a_window_equals_the_intersection_of_the_window_sets(tmp_path, spill):
    """Chains of thousands of windows are compared by corner first (merge_module._share_a_window)."""
    rng = np.random.default_rng(3)
    grid = [(x, y, x + 256, y + 256) for y in range(0, 24000, 192) for x in range(0, 24000, 192)]
    store = PieceStore(str(tmp_path / "pieces.bin"))

    def chain(windows):
        if not spill:
            return SceneInstance(0, 0.5, (0, 0, 1, 1), np.ones((1, 1), bool), windows)
        return SpilledInstance(0, 0.5, (0, 0, 1, 1), windows, [], store)

    cases = []
    for n, m in [(3, 3000), (9, 9), (40, 3000), (3000, 3000)]:
        a = [grid[i] for i in rng.choice(len(grid), n, replace=False)]
        others = [w for w in grid if w not in set(a)]
        b = [others[i] for i in rng.choice(len(others), m, replace=False)]
        cases.append((a, b))  # disjoint
        cases.append((a, b + [a[len(a) // 2]]))  # one shared window, neither recent in a nor in b
        # Same top-left corners, other windows (another tiling): not shared.
        cases.append((a, [(x0, y0, x1 + 1, y1) for x0, y0, x1, y1 in a]))
    for a, b in cases:
        expected = bool(set(a) & set(b))
        assert merge_module._share_a_window(chain(a), chain(b)) == expected
        assert merge_module._share_a_window(chain(b), chain(a)) == expected
    assert sum(bool(set(a) & set(b)) for a, b in cases) == 4


def reference_ratio(a, b, window, shape):
    """The match ratio of TileMerger's docstring, on whole masks (padded by 1 px for the lines outside)."""
    if a.category != b.category or not near(a.box, b.box) or window in a.windows:
        return 0.0
    pad = [np.pad(i.to_full_mask(*shape), 1) for i in (a, b)]

    def at(mask, box):
        x0, y0, x1, y1 = box
        return mask[y0 + 1 : y1 + 1, x0 + 1 : x1 + 1]

    def ratio(common, p, q):
        return common / min(p, q) if min(p, q) > 0 else 0.0

    best = 0.0
    region = intersect(window, hull([a.box, b.box]))
    if region[0] < region[2] and region[1] < region[3]:
        seen = np.zeros_like(pad[0])
        for w in a.windows:
            if w != window:
                at(seen, w)[:] = True
        inside = np.zeros_like(seen)
        at(inside, region)[:] = True
        a_seen, b_seen = pad[0] & seen & inside, pad[1] & seen & inside
        best = ratio(np.count_nonzero(a_seen & b_seen), np.count_nonzero(a_seen), np.count_nonzero(b_seen))
    for (p, p_box, p_windows), (q, q_box) in [
        ((pad[0], a.box, [w for w in a.windows if near(w, b.box)]), (pad[1], b.box)),
        ((pad[1], b.box, [window]), (pad[0], a.box)),
    ]:
        for x0, y0, x1, y1 in p_windows:
            sides = [
                ((x1 - 1, y0, x1, y1), (x1, y0, x1 + 1, y1)),
                ((x0, y0, x0 + 1, y1), (x0 - 1, y0, x0, y1)),
                ((x0, y1 - 1, x1, y1), (x0, y1, x1, y1 + 1)),
                ((x0, y0, x1, y0 + 1), (x0, y0 - 1, x1, y0)),
            ]
            for inner, outer in sides:
                if near(p_box, inner) and near(q_box, outer):
                    p_line, q_line = at(p, inner).ravel(), at(q, outer).ravel()
                    common = np.count_nonzero(p_line & q_line)
                    best = max(best, ratio(common, np.count_nonzero(p_line), np.count_nonzero(q_line)))
    return best


@pytest.mark.parametrize("spill", [False, True])
def test_match_ratios_of_a_tile_equal_their_definition_on_whole_masks(tmp_path, spill):
    """The merger reads each held object once per tile (merge_module._Remembered): the ratios are the same."""
    scene = ragged_scene()
    shape = scene.shape[:2]
    merger = TileMerger(store=PieceStore(str(tmp_path / "pieces.bin")) if spill else None)
    checked = 0
    for window in tile_windows(*shape, 64, 13):
        tile = scene[window[1] : window[3], window[0] : window[2]]
        pieces = instances_to_scene(ragged_predictor(tile), window)
        views = [merge_module._Remembered(p, keep_crop=True) for p in pieces]
        for _, held in merger.held:
            got = merger._match_ratios(merge_module._Remembered(held), views, window)
            assert got == pytest.approx([reference_ratio(held, p, window, shape) for p in pieces], abs=0)
            checked += sum(r > 0 for r in got)
        merger.add(window, pieces)
    assert checked > 50


def test_scene_sized_chains_outlined_and_reduced_band_by_band(tmp_path):
    """Chains as large as the scene, read from their pieces in bands: outline and overlay mask."""
    scene = ragged_scene()
    shape = scene.shape[:2]
    expected = tiled_inference(ragged_predictor, scene, tile_size=64, overlap=13)
    got = merge(scene, 64, 13, PieceStore(str(tmp_path / "pieces.bin")))
    chains = [(a, b) for a, b in zip(got, expected) if isinstance(a, SpilledInstance)]
    assert len(chains) == 7
    for spilled, in_memory in chains:
        geometry = instance_geometry(spilled, Affine.identity(), band_pixels=1000)  # bands of 5 rows
        assert geometry == instance_geometry(in_memory, Affine.identity(), band_pixels=1000)
        polygons = [({"type": "Polygon", "coordinates": p}, 1) for p in geometry["coordinates"]]
        covered = rasterio.features.rasterize(polygons, out_shape=shape, dtype=np.uint8) > 0
        assert np.array_equal(covered, spilled.to_full_mask(*shape))
        reduced = _reduced_mask(spilled, 0.3, 1000)
        assert np.array_equal(reduced[0], _reduced_mask(in_memory, 0.3, 10**9)[0])
        assert reduced[1] == (0, 0) and reduced[0].shape == (61, 59)
