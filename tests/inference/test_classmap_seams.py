"""Tiled and untiled class maps of a 2000 x 2000 scene agree, and the blended windows leave no seam.

The "model" is a deterministic stand-in with the failure a real model has at
window borders: it box-filters the window's colours with zero padding, so that
near a window's edge the colours fade and a constant-score class wins. The
class scores of the real ClassMapSink and SceneEngine are blended over the
tiles; the untiled map is the whole scene shrunk to the test size (shortest
edge 320) and the scores brought back to full
size, as SCOREPredictor.semantic does. The same figures for the trained
tiny-world model are in docs/PREDICT.md (tools/bench/classmap_seams.py).
"""

import score  # noqa: F401, I001  (first: its shims let detectron2 import without detectron2._C)

import cv2
import numpy as np
from PIL import Image

from score.predict.classmap import ClassMapSink
from score.predict.scene import SceneEngine, predict_tiles
from score.predict.windows import tile_windows
from tests.conftest import load_script

NAMES = ["red", "green", "blue", "dark"]
SIZE, TEST_SIZE, OVERLAP = 2000, 320, 80  # the tool's defaults: tile = test size, overlap = tile / 4
BORDER = 4  # px either side of an inner window edge
# The untiled map fades over 6.25 x the stand-in's reach (7 px) at the scene's border: left out.
FRAME = 40


class FieldReader:
    """A scene of smooth colour fields (regions hundreds of px across) with a little pixel noise."""

    def __init__(self, size=SIZE):
        self.height = self.width = size
        y, x = np.mgrid[0:size, 0:size].astype(np.float32)
        fields = [np.sin(x / 230 + 0.3 * np.cos(y / 170)), np.sin(y / 260 + 1.1), np.cos((x + y) / 310)]
        image = 128 + 70 * np.stack(fields, axis=-1)
        image += np.random.default_rng(0).normal(0, 6, image.shape)
        self.image = np.clip(image, 0, 255).astype(np.uint8)

    def read(self, window):
        x0, y0, x1, y1 = window
        return self.image[y0:y1, x0:x1]


def stand_in_model(image):
    """(K, h, w) class scores from the window's box-filtered colours (zero padding: edges fade)."""
    colours = cv2.boxFilter(image.astype(np.float32) / 255, -1, (15, 15), borderType=cv2.BORDER_CONSTANT)
    logits = np.concatenate([colours.transpose(2, 0, 1), np.full((1, *image.shape[:2]), 0.45, np.float32)])
    scores = np.exp(12 * (logits - logits.max(axis=0, keepdims=True)))
    return scores / scores.sum(axis=0, keepdims=True)


def untiled_model(image):
    """The stand-in on the whole image shrunk to shortest edge TEST_SIZE, scores back at full size."""
    height, width = image.shape[:2]
    scale = TEST_SIZE / min(height, width)
    small = cv2.resize(image, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_LINEAR)
    scores = stand_in_model(small)
    return np.stack([cv2.resize(s, (width, height), interpolation=cv2.INTER_LINEAR) for s in scores])


def class_map(out, reader, windows, model):
    sink = ClassMapSink(
        str(out),
        "scene",
        image_id="scene",
        height=reader.height,
        width=reader.width,
        windows=windows,
        class_names=NAMES,
        overlap=OVERLAP,
        reader=reader,
    )
    engine = SceneEngine(
        str(out),
        "scene",
        sink=sink,
        image_id="scene",
        height=reader.height,
        width=reader.width,
        windows=windows,
        key={"k": 1},
    )
    predict_tiles(model, reader, engine, progress=False)
    return np.asarray(Image.open(out / "classmaps/scene.png"))


def disagreement(tiled, untiled, windows):
    """Share of pixels (FRAME px from the scene's border or more) that differ: all, near inner window
    edges, elsewhere."""
    differ = (tiled != untiled)[FRAME:-FRAME, FRAME:-FRAME]
    # The bench's measure (tools/bench/classmap_seams.py), so that test and bench count the same pixels.
    near_edges = load_script("tools/bench/classmap_seams.py").near_inner_window_edges
    near = near_edges(windows, *tiled.shape, border=BORDER)[FRAME:-FRAME, FRAME:-FRAME]
    return differ.mean(), differ[near].mean(), differ[~near].mean()


def test_tiled_and_untiled_class_maps_agree_without_seams(tmp_path):
    reader = FieldReader()
    windows = tile_windows(SIZE, SIZE, TEST_SIZE, OVERLAP)
    tiled = class_map(tmp_path / "tiled", reader, windows, stand_in_model)
    untiled = class_map(tmp_path / "untiled", reader, [(0, 0, SIZE, SIZE)], untiled_model)
    assert len(set(np.unique(untiled))) == len(NAMES)  # every class has regions
    overall, border, rest = disagreement(tiled, untiled, windows)
    print(f"disagreement {overall:.4f}; near window edges {border:.4f}, elsewhere {rest:.4f}")
    assert overall <= 0.02
    # No seam: within 4 px of an inner window edge the maps differ at most twice as often as elsewhere.
    assert border <= 2 * max(rest, 0.002)
