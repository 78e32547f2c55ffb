"""Sliding-window inference: windows, merging of cut objects and duplicates, crops and RLE.

The fake predictor reads the ground truth out of the pixels: channel 0 holds
the instance id, channel 1 its class. Cut per tile, it returns exactly the
pieces of each object that the tile sees, so whatever is wrong in the output
comes from the tiling and merging.
"""

import score  # noqa: F401, I001  (first: its shims let detectron2 import without detectron2._C)
import numpy as np
import pytest
import torch
from detectron2.structures import Instances
from pycocotools import mask as mask_util

from score.predict import masks as masks_module
from score.predict.masks import SceneInstance
from score.predict.merge import TileMerger, instances_to_scene, tiled_inference
from score.predict.windows import ArrayReader, tile_windows


class LabelPredictor:
    """Instances of a tile from the label image encoded in it; counts its calls and tile shapes."""

    def __init__(self, scores=None):
        self.scores = scores or {}
        self.tile_shapes = []

    def __call__(self, tile: np.ndarray) -> Instances:
        self.tile_shapes.append(tile.shape)
        ids = [int(i) for i in np.unique(tile[..., 0]) if i != 0]
        masks = np.stack([tile[..., 0] == i for i in ids]) if ids else np.zeros((0, *tile.shape[:2]), bool)
        classes = [int(tile[..., 1][tile[..., 0] == i][0]) for i in ids]
        result = Instances(tile.shape[:2])
        result.pred_masks = torch.from_numpy(masks)
        result.scores = torch.tensor([self.scores.get(i, 0.9) for i in ids], dtype=torch.float32)
        result.pred_classes = torch.tensor(classes, dtype=torch.int64)
        return result


def scene_from_labels(labels: np.ndarray, classes: dict) -> np.ndarray:
    image = np.zeros((*labels.shape, 3), dtype=np.uint8)
    image[..., 0] = labels
    for i, c in classes.items():
        image[..., 1][labels == i] = c
    return image


def as_full(inst: SceneInstance, shape) -> np.ndarray:
    return inst.to_full_mask(*shape)


def test_tile_windows_cover_the_scene_with_full_tiles():
    windows = tile_windows(1000, 700, 256, 64)
    covered = np.zeros((1000, 700), dtype=int)
    for x0, y0, x1, y1 in windows:
        assert (x1 - x0, y1 - y0) == (256, 256)
        covered[y0:y1, x0:x1] += 1
    assert covered.min() >= 1
    xs = sorted({w[0] for w in windows})
    assert xs[0] == 0 and xs[-1] == 700 - 256
    assert all(b - a <= 256 - 64 for a, b in zip(xs, xs[1:]))
    # Row-major order.
    assert [w[1] for w in windows] == sorted(w[1] for w in windows)


def test_tile_windows_small_scene_and_errors():
    assert tile_windows(100, 80, 256, 32) == [(0, 0, 80, 100)]
    with pytest.raises(ValueError, match="overlap"):
        tile_windows(100, 100, 64, 64)
    with pytest.raises(ValueError, match="positive"):
        tile_windows(100, 100, 0, 0)


@pytest.mark.parametrize("overlap", [0, 16])
def test_object_cut_by_tile_borders_comes_out_as_one_instance(overlap):
    labels = np.zeros((200, 200), dtype=np.uint8)
    labels[40:90, 50:150] = 1  # crosses the vertical border at x = 100 (and 84 with overlap)
    labels[90:170, 92:110] = 2  # crosses the horizontal and vertical borders
    labels[5:20, 5:20] = 3  # inside one tile
    image = scene_from_labels(labels, {1: 4, 2: 4, 3: 7})
    predictor = LabelPredictor()
    result = tiled_inference(predictor, image, tile_size=100, overlap=overlap)
    assert len(predictor.tile_shapes) == (4 if overlap == 0 else 9)
    assert all(shape == (100, 100, 3) for shape in predictor.tile_shapes)
    assert len(result) == 3
    for inst in result:
        target = labels[inst.box[1] : inst.box[3], inst.box[0] : inst.box[2]]
        object_id = int(np.bincount(target[inst.mask]).argmax())
        np.testing.assert_array_equal(as_full(inst, labels.shape), labels == object_id)
        assert inst.category == {1: 4, 2: 4, 3: 7}[object_id]


def test_object_larger_than_a_tile_and_crossing_a_corner():
    labels = np.zeros((300, 300), dtype=np.uint8)
    labels[20:280, 130:170] = 1  # spans three rows of tiles
    labels[60:140, 20:100] = 2  # crosses the corner at (80, 80)
    image = scene_from_labels(labels, {1: 0, 2: 0})
    result = tiled_inference(LabelPredictor(), image, tile_size=80, overlap=0)
    assert len(result) == 2
    masks = sorted((as_full(inst, labels.shape) for inst in result), key=lambda m: -m.sum())
    np.testing.assert_array_equal(masks[0], labels == 1)
    np.testing.assert_array_equal(masks[1], labels == 2)


def test_duplicates_in_the_overlap_are_merged_with_the_best_score():
    labels = np.zeros((100, 180), dtype=np.uint8)
    labels[30:50, 85:95] = 1  # inside the overlap of both tiles (x in [80, 100))
    image = scene_from_labels(labels, {1: 2})
    scores = iter([0.6, 0.8])

    def predict(tile):
        instances = LabelPredictor()(tile)
        instances.scores = torch.full_like(instances.scores, next(scores))
        return instances

    result = tiled_inference(predict, image, tile_size=100, overlap=20)
    assert len(result) == 1
    assert result[0].score == pytest.approx(0.8)
    assert result[0].windows == [(0, 0, 100, 100), (80, 0, 180, 100)]
    np.testing.assert_array_equal(as_full(result[0], labels.shape), labels == 1)


def test_other_classes_and_separate_objects_are_not_merged():
    labels = np.zeros((100, 200), dtype=np.uint8)
    labels[10:30, 60:140] = 1  # class 0, cut at x = 100
    labels[30:50, 60:140] = 2  # touches object 1 but has another class
    labels[70:90, 20:40] = 3  # class 0, in the left tile only
    labels[70:90, 40:60] = 4  # class 0, touches object 3 inside the same tile
    image = scene_from_labels(labels, {1: 0, 2: 1, 3: 0, 4: 0})
    result = tiled_inference(LabelPredictor(), image, tile_size=100, overlap=0)
    assert len(result) == 4
    found = sorted(tuple(inst.box) for inst in result)
    assert found == [(20, 70, 40, 90), (40, 70, 60, 90), (60, 10, 140, 30), (60, 30, 140, 50)]


def test_score_threshold_drops_instances_before_merging():
    labels = np.zeros((100, 100), dtype=np.uint8)
    labels[10:20, 10:20] = 1
    labels[50:60, 50:60] = 2
    image = scene_from_labels(labels, {1: 0, 2: 0})
    predictor = LabelPredictor({1: 0.3, 2: 0.7})
    result = tiled_inference(predictor, image, tile_size=64, overlap=8, score_threshold=0.5)
    assert [inst.box for inst in result] == [(50, 50, 60, 60)]


def test_instances_keep_cropped_masks_only():
    window = (300, 200, 400, 300)
    masks = torch.zeros(2, 100, 100, dtype=torch.bool)
    masks[0, 10:20, 30:35] = True
    instances = Instances((100, 100))
    instances.pred_masks = masks
    instances.scores = torch.tensor([0.9, 0.8])
    instances.pred_classes = torch.tensor([3, 1])
    scene = instances_to_scene(instances, window)
    assert len(scene) == 1  # the empty mask is dropped
    assert scene[0].box == (330, 210, 335, 220)
    assert scene[0].mask.shape == (10, 5) and scene[0].mask.all()
    assert scene[0].category == 3 and scene[0].windows == [window]


@pytest.mark.parametrize("chunk", [1 << 22, 7])
@pytest.mark.parametrize("box", [(20, 7, 29, 20), (20, 0, 29, 31)])
def test_coco_rle_from_the_crop_equals_pycocotools_on_the_full_mask(monkeypatch, chunk, box):
    monkeypatch.setattr(masks_module, "RLE_CHUNK_PIXELS", chunk)  # 7: one column per chunk
    x0, y0, x1, y1 = box
    rng = np.random.default_rng(0)
    crop = rng.random((y1 - y0, x1 - x0)) > 0.4
    crop[0, :] = crop[:, 0] = True  # the box stays tight
    crop[-1, :] = crop[:, -1] = True
    inst = SceneInstance(category=0, score=1.0, box=box, mask=crop)
    full = np.zeros((31, 40), dtype=np.uint8)
    full[y0:y1, x0:x1] = crop  # with box 2 the crop spans whole columns: runs continue across them
    expected = mask_util.encode(np.asfortranarray(full))
    rle = inst.to_coco_rle(31, 40)
    assert rle["counts"] == expected["counts"].decode("ascii")
    assert rle["size"] == [31, 40]
    assert mask_util.area(expected) == inst.area
    assert inst.bbox_xywh() == [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]
    empty = SceneInstance(0, 1.0, box, np.zeros_like(crop))
    assert mask_util.area(empty.to_coco_rle(31, 40)) == 0


def test_merger_rejects_a_bad_threshold_and_array_reader_checks_shape():
    with pytest.raises(ValueError, match="match_threshold"):
        TileMerger(match_threshold=0.0)
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        ArrayReader(np.zeros((10, 10), dtype=np.uint8))


def piece(window, x0, y0, x1, y1, category=0, confidence=0.9):
    """A rectangular instance of one tile (scene coordinates)."""
    return SceneInstance(category, confidence, (x0, y0, x1, y1), np.ones((y1 - y0, x1 - x0), bool), [window])


def holds(inst: SceneInstance, x: int, y: int) -> bool:
    x0, y0, x1, y1 = inst.box
    return x0 <= x < x1 and y0 <= y < y1 and bool(inst.mask[y - y0, x - x0])


def test_two_instances_of_one_tile_are_never_merged():
    # The repro: one piece in tile A; tile B sees it split in two (upper, lower) instances.
    a, b = (0, 0, 20, 10), (10, 0, 30, 10)
    merger = TileMerger()
    merger.add(a, [piece(a, 10, 0, 20, 10)])
    merger.add(b, [piece(b, 10, 0, 25, 5), piece(b, 10, 5, 25, 10)])
    result = merger.finish()
    assert len(result) == 2
    assert not any(holds(inst, 22, 2) and holds(inst, 22, 7) for inst in result)
    assert sum(holds(inst, 12, 2) for inst in result) == 1


def test_a_chain_across_three_tiles_does_not_join_two_instances_of_one_tile():
    # Tile A has two objects a1 (top), a2 (bottom); B continues a1 only; C is one piece touching
    # both the a1 + B object (overlap with B) and a2 (contact across A's right border).
    a, b, c = (0, 0, 20, 10), (10, 0, 30, 10), (20, 0, 40, 10)
    merger = TileMerger()
    merger.add(a, [piece(a, 12, 0, 20, 4), piece(a, 12, 6, 20, 10)])
    merger.add(b, [piece(b, 12, 0, 30, 4)])
    merger.add(c, [piece(c, 20, 0, 40, 10)])
    result = merger.finish()
    assert not any(holds(inst, 13, 1) and holds(inst, 13, 8) for inst in result)
    assert all(len(inst.windows) == len(set(inst.windows)) for inst in result)
    assert sum(holds(inst, 13, 1) for inst in result) == 1 and sum(holds(inst, 13, 8) for inst in result) == 1
