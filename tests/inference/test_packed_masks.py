"""Bit-packed instance masks (score/predict/masks.py): the same instances, RLEs and polygons as dense masks.

The reference for the whole merge is the dense implementation that the packed
one replaced (each instance held a bool crop, unions built dense masks): the
digest below is of its records, areas and GeoJSON geometries on the ragged
scene, computed at commit 2706572. The primitives are checked against numpy
and pycocotools on dense arrays.
"""

import score  # noqa: F401, I001  (first: its shims let detectron2 import without detectron2._C)
import hashlib
import json

import numpy as np
import pytest
import torch
from affine import Affine
from detectron2.structures import Instances
from pycocotools import mask as mask_util

from score.predict import masks, merge
from score.predict.geojson import instance_geometry
from score.predict.instances import instance_from_record, instance_record
from score.predict.masks import SceneInstance
from score.predict.merge import tiled_inference

# sha256 of [[instance_record, area, geometry], ...] of the dense implementation on ragged_scene().
DENSE_DIGEST = "8998740a44389af028827558c65585de20c52c783648d67f16f8fb443260f340"


def ragged_scene(height: int = 203, width: int = 197, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def ragged_predictor(tile: np.ndarray) -> Instances:
    """Noise thresholds (ragged masks that continue across every border, as at threshold 0), stripes
    and blocks placed by the tile's corner pixels (pieces that join or not), one small local box."""
    masks = [tile[..., k % 3] > 60 + 40 * k for k in range(4)]
    rows, cols = np.indices(tile.shape[:2])
    masks.append((rows + cols + int(tile[0, 0, 0])) % 5 == 0)
    masks.append((rows // 9 + cols // 11 + int(tile[0, 0, 1])) % 3 == 0)
    y, x = int(tile[0, 1, 2]) % 40, int(tile[0, 0, 2]) % 40
    masks.append((rows >= y) & (rows < y + 7) & (cols >= x) & (cols < x + 13))
    result = Instances(tile.shape[:2])
    result.pred_masks = torch.as_tensor(np.array(masks))
    result.pred_classes = torch.as_tensor([k % 2 for k in range(7)], dtype=torch.int64)
    result.scores = torch.as_tensor([float(m.mean()) for m in masks], dtype=torch.float32)
    return result


@pytest.mark.parametrize("chunk", [1 << 22, 50])
def test_packed_merge_equals_the_dense_implementation(monkeypatch, chunk):
    monkeypatch.setattr(masks, "RLE_CHUNK_PIXELS", chunk)  # 50: unions and RLE in bands of rows / columns
    scene = ragged_scene()
    height, width = scene.shape[:2]
    # Tiles of 64 px with 13 px overlap: pieces start at columns 51, 102, ... (not byte-aligned).
    merged = tiled_inference(ragged_predictor, scene, tile_size=64, overlap=13)
    assert len(merged) == 20 and sum(i.box == (0, 0, width, height) for i in merged) == 7
    out = [[instance_record(i), i.area, instance_geometry(i, Affine.identity())] for i in merged]
    assert hashlib.sha256(json.dumps(out).encode()).hexdigest() == DENSE_DIGEST
    for inst in merged:
        expected = mask_util.encode(np.asfortranarray(inst.to_full_mask(height, width).astype(np.uint8)))
        assert inst.to_coco_rle(height, width)["counts"] == expected["counts"].decode("ascii")


def random_instance(rng, box):
    x0, y0, x1, y1 = box
    mask = rng.random((y1 - y0, x1 - x0)) > 0.5
    return SceneInstance(1, 0.5, box, mask, [box]), mask


@pytest.mark.parametrize("chunk", [1 << 22, 7])
def test_packed_primitives_equal_dense_arrays(monkeypatch, chunk):
    monkeypatch.setattr(masks, "RLE_CHUNK_PIXELS", chunk)
    rng = np.random.default_rng(3)
    boxes = [(3, 5, 20, 11), (0, 0, 8, 4), (13, 2, 30, 29), (5, 17, 6, 18), (9, 1, 40, 35)]
    pieces = [random_instance(rng, box) for box in boxes]
    scene = np.zeros((35, 40), dtype=bool)
    for inst, mask in pieces:
        x0, y0, x1, y1 = inst.box
        assert inst.bits.shape == (y1 - y0, -(-(x1 - x0) // 8))  # 1 bit a pixel, rows padded to bytes
        assert inst.mask.dtype == bool and np.array_equal(inst.mask, mask)
        assert inst.area == int(mask.sum())
        full = np.zeros((35, 40), dtype=bool)
        full[y0:y1, x0:x1] = mask
        scene |= full
        for _ in range(20):  # regions inside, across and off the box
            rx0, rx1 = sorted(rng.integers(-3, 44, 2))
            ry0, ry1 = sorted(rng.integers(-3, 39, 2))
            padded = np.pad(full, 3)[ry0 + 3 : ry1 + 3, rx0 + 3 : rx1 + 3]
            assert np.array_equal(inst.region(rx0, ry0, rx1, ry1), padded)
        assert inst.crop_rle()["counts"] == mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))[
            "counts"
        ].decode("ascii")
        back = instance_from_record(json.loads(json.dumps(instance_record(inst))))
        assert np.array_equal(back.bits, inst.bits)
    union = merge._union([inst for inst, _ in pieces])
    assert union.box == (0, 0, 40, 35)
    assert np.array_equal(union.mask, scene) and union.area == int(scene.sum())
    # Padding bits stay 0, so packed rows can be ORed and counted byte by byte.
    assert not np.unpackbits(union.bits, axis=1)[:, 40:].any()


def test_a_mask_must_fit_its_box():
    with pytest.raises(ValueError, match="expected"):
        SceneInstance(0, 1.0, (0, 0, 5, 4), np.ones((5, 4), dtype=bool))


@pytest.mark.parametrize("chunk", [1, 3, 1 << 22])  # 1: one column a chunk, runs joined across chunks
def test_rle_encoded_chunk_by_chunk_equals_pycocotools(monkeypatch, chunk):
    monkeypatch.setattr(masks, "RLE_CHUNK_PIXELS", chunk * 23)
    rng = np.random.default_rng(chunk)
    height, width = 23, 31
    for density in [0.0, 0.05, 0.5, 0.95, 1.0]:
        for box in [(0, 0, 31, 23), (4, 0, 9, 23), (30, 22, 31, 23), (2, 5, 29, 17), (0, 3, 31, 23)]:
            x0, y0, x1, y1 = box
            mask = rng.random((y1 - y0, x1 - x0)) < density
            inst = SceneInstance(0, 0.5, box, mask, [box])
            full = np.zeros((height, width), dtype=np.uint8)
            full[y0:y1, x0:x1] = mask
            expected = mask_util.encode(np.asfortranarray(full))["counts"].decode("ascii")
            assert inst.to_coco_rle(height, width)["counts"] == expected
            crop = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode("ascii")
            assert inst.crop_rle()["counts"] == crop


def test_counts_encoded_as_pycocotools_does_for_large_runs():
    # Scene-sized images: runs of millions of pixels, differences of either sign.
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 1 << 27, 2001).tolist() + [0, 1, 1 << 31, 7]
    size = sum(counts)
    expected = mask_util.frPyObjects({"counts": counts, "size": [size, 1]}, size, 1)["counts"]
    values = np.array(counts, dtype=np.int64)
    values[3:] -= values[1:-2]
    assert masks._encode_counts(values) == expected
