"""Predict with a trained SCORE model on your own images and with your own class names.

:class:`SCOREPredictor` is detectron2's ``DefaultPredictor`` for SCORE: it
builds the model from a config, loads ``MODEL.WEIGHTS``, applies the test
resize (``ResizeShortestEdge(MIN_SIZE_TEST, MAX_SIZE_TEST)``) and returns
the instances of one image at its original size. Unlike ``DefaultPredictor``
it takes **RGB** arrays by default (what PIL, rasterio and the model use);
pass ``input_format="BGR"`` for arrays from ``cv2.imread``. The vocabulary
can be changed at any time: only the text classifier depends on it, so the
model is kept and the classifier of a new vocabulary is computed once (or
read from the on-disk cache, see :func:`default_cache_dir`).

:func:`parse_vocabulary` reads class names the way the command line
(``tools/predict.py``) takes them: ``--vocab "ship,storage tank"`` (commas
separate classes) or a file with one class per line, where a line may list
synonyms separated by commas (``ship,boat``). :func:`coco_annotations` and
:func:`draw_instances` turn instances kept as crops
(:class:`score.predict.masks.SceneInstance`) into COCO results and overlays.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from detectron2.config import CfgNode, configurable
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from detectron2.structures import Instances
from detectron2.utils.colormap import colormap
from torch import nn

from ..checkpoint import SCORECheckpointer
from ..vocabulary import display_name
from .masks import BAND_PIXELS, SceneInstance

__all__ = [
    "SCOREPredictor",
    "check_weights",
    "coco_annotations",
    "default_cache_dir",
    "draw_instances",
]

logger = logging.getLogger(__name__)

# Environment variable naming the root of SCORE's caches (default ~/.cache/score).
CACHE_ENV = "SCORE_CACHE_DIR"
_INPUT_FORMATS = ("RGB", "BGR")
# Checkpoint references that are not local paths (fetched by detectron2's path manager).
_REMOTE_PREFIXES = ("detectron2://", "http://", "https://", "s3://", "gs://", "manifold://")


def default_cache_dir() -> str:
    """Folder of the on-disk text-classifier cache when MODEL.SCORE.TEXT_CLASSIFIER_CACHE_DIR is empty.

    ``$SCORE_CACHE_DIR/text_classifiers`` when the variable is set, else
    ``~/.cache/score/text_classifiers``.
    """
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "score")
    return os.path.join(root, "text_classifiers")


def check_weights(weights: str) -> None:
    """Fail early, naming the place looked at, when MODEL.WEIGHTS is a local path that does not exist.

    An empty value is allowed (the model keeps the weights it was built with,
    e.g. the tiny test model) but logged as a warning.
    """
    if not weights:
        logger.warning("MODEL.WEIGHTS is empty: the model keeps the weights it was built with (untrained)")
        return
    if weights.startswith(_REMOTE_PREFIXES):
        return
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"MODEL.WEIGHTS: no checkpoint file at {path.resolve()} (from {weights!r}); "
            "set it with --opts MODEL.WEIGHTS /path/to/model_final.pth"
        )


class SCOREPredictor:
    """One image (H, W, 3) uint8 -> ``Instances`` at the image's size, with a changeable vocabulary.

    Build it from a config (``SCOREPredictor(cfg)``) or from a model
    (``SCOREPredictor(model=..., min_size_test=..., max_size_test=...)``).
    """

    @configurable
    def __init__(
        self,
        *,
        model: nn.Module,
        min_size_test: int,
        max_size_test: int,
        input_format: str = "RGB",
        model_format: str = "RGB",
    ):
        """
        Args:
            model: a SCORE model (``set_vocabulary``, detectron2 inputs and outputs);
                it is put in eval mode.
            min_size_test, max_size_test: the test resize (INPUT.MIN_SIZE_TEST,
                INPUT.MAX_SIZE_TEST), px.
            input_format: channel order of the arrays given to ``__call__``, "RGB" or "BGR".
            model_format: channel order the model expects (INPUT.FORMAT).
        """
        for name, value in (("input_format", input_format), ("model_format", model_format)):
            if value not in _INPUT_FORMATS:
                raise ValueError(f"{name} must be one of {_INPUT_FORMATS}, not {value!r}")
        self.model = model.eval()
        self.aug = T.ResizeShortestEdge([min_size_test, min_size_test], max_size_test)
        self.input_format = input_format
        self.model_format = model_format

    @classmethod
    def from_config(cls, cfg: CfgNode, input_format: str = "RGB"):
        cfg = cfg.clone()
        check_weights(cfg.MODEL.WEIGHTS)
        if not cfg.MODEL.SCORE.TEXT_CLASSIFIER_CACHE_DIR:
            cfg.defrost()
            cfg.MODEL.SCORE.TEXT_CLASSIFIER_CACHE_DIR = default_cache_dir()
        model = build_model(cfg)
        SCORECheckpointer(model, require_complete=not cfg.MODEL.ALLOW_PARTIAL_WEIGHTS).load(cfg.MODEL.WEIGHTS)
        return {
            "model": model,
            "min_size_test": cfg.INPUT.MIN_SIZE_TEST,
            "max_size_test": cfg.INPUT.MAX_SIZE_TEST,
            "input_format": input_format,
            "model_format": cfg.INPUT.FORMAT,
        }

    @property
    def class_names(self) -> List[str]:
        """The current vocabulary (``pred_classes`` index it)."""
        return list(self.model.test_class_names)

    def set_vocabulary(self, class_names: Sequence[str]) -> None:
        """Use ``class_names`` from now on; the model is kept, only its text classifier changes."""
        names = [name.strip() for name in class_names if name.strip()]
        if not names:
            raise ValueError("the vocabulary is empty: give at least one class name")
        if names != self.model.test_class_names:
            self.model.set_vocabulary(names)
            logger.info("Vocabulary of %d classes: %s", len(names), names)

    def __call__(self, image: np.ndarray, vocabulary: Optional[Sequence[str]] = None) -> Instances:
        """Instances of one image.

        Args:
            image: (H, W, 3) uint8 in ``input_format`` (RGB by default).
            vocabulary: if given, becomes the current vocabulary (as ``set_vocabulary``).

        Returns:
            ``Instances`` of size (H, W) on the CPU: ``pred_masks`` bool (R, H, W),
            ``pred_boxes``, ``scores``, ``pred_classes`` (indices into ``class_names``).
        """
        return self._forward(image, vocabulary)["instances"].to("cpu")

    def semantic(self, image: np.ndarray, vocabulary: Optional[Sequence[str]] = None) -> torch.Tensor:
        """Class scores of one image, for the semantic task (a model with MASK_FORMER.TEST.SEMANTIC_ON).

        Args:
            image, vocabulary: as for ``__call__``.

        Returns:
            (K, H, W) float32 on the CPU: the score of each of the K classes of
            ``class_names`` at each pixel (Mask2Former's semantic inference).
        """
        if not getattr(self.model, "semantic_on", False):
            raise ValueError(
                "the model was built without MODEL.MASK_FORMER.TEST.SEMANTIC_ON: it gives no class scores"
            )
        return self._forward(image, vocabulary)["sem_seg"].to("cpu", torch.float32)

    def _forward(self, image: np.ndarray, vocabulary: Optional[Sequence[str]]) -> dict:
        """The model's output dict on one image (checked, resized to the test size, original size out)."""
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
            shape = getattr(image, "shape", type(image).__name__)
            raise ValueError(f"expected an (H, W, 3) uint8 array, got {shape}")
        if image.dtype != np.uint8:
            raise ValueError(f"expected a uint8 image, got {image.dtype}")
        if vocabulary is not None:
            self.set_vocabulary(vocabulary)
        if self.input_format != self.model_format:
            image = image[:, :, ::-1]
        height, width = image.shape[:2]
        resized = self.aug.get_transform(image).apply_image(image)
        tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)))
        with torch.inference_mode():
            return self.model([{"image": tensor, "height": height, "width": width}])[0]


def coco_annotations(
    instances: Sequence[SceneInstance], image_id: str, height: int, width: int, first_id: int = 1
) -> List[dict]:
    """COCO results of one image: RLE mask, [x, y, w, h] box, score, 1-based ``category_id``.

    Entries also carry ``id``, ``area`` and ``iscrowd`` so that a file with
    ``images``, ``categories`` and these as ``annotations`` loads with
    ``pycocotools.coco.COCO`` as well as with ``COCO.loadRes``.
    """
    return [
        {
            "id": first_id + i,
            "image_id": image_id,
            "category_id": inst.category + 1,
            "segmentation": inst.to_coco_rle(height, width),
            "bbox": inst.bbox_xywh(),
            "area": inst.area,
            "score": round(float(inst.score), 6),
            "iscrowd": 0,
        }
        for i, inst in enumerate(instances)
    ]


def _outline(inst: SceneInstance, scale: float, band_pixels: int = BAND_PIXELS) -> List[np.ndarray]:
    """Outer contours of the cropped mask as flat [x, y, ...] arrays in (scaled) image coordinates.

    A mask whose box holds more than ``band_pixels`` pixels is first reduced to
    the picture's scale (:func:`_reduced_mask`, band by band) and its contours
    are traced there: the picture cannot show more, and the whole mask and its
    full-resolution contours would grow with the object.
    """
    x0, y0, x1, y1 = inst.box
    if (x1 - x0) * (y1 - y0) > band_pixels:
        mask, (x0, y0) = _reduced_mask(inst, scale, band_pixels)
        scale = 1.0  # contours already on the picture's pixels
    else:
        mask = inst.mask
    # The bool mask seen as 0 / 1 bytes: no second copy of a scene-sized mask.
    contours, _ = cv2.findContours(mask.view(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polygons = []
    for contour in contours:
        # Contours run through pixel centres; + 0.5 puts them on the pixels' footprint before scaling.
        points = (contour.reshape(-1, 2).astype(np.float64) + (x0 + 0.5, y0 + 0.5)) * scale
        if len(points) >= 3:
            polygons.append(points.reshape(-1))
    return polygons


def _reduced_mask(inst: SceneInstance, scale: float, band_pixels: int) -> Tuple[np.ndarray, Tuple[int, int]]:
    """The mask at ``scale`` (<= 1), read in bands of at most ``band_pixels`` pixels, and its corner.

    Picture pixel (u, v) is set when a mask pixel whose centre falls in it is
    (x -> floor((x + 0.5) * scale)): a ragged mask stays as wide as it is.
    Returns bool (rows, columns) and the picture coordinates of its top-left pixel.
    """
    x0, y0, x1, y1 = inst.box
    height, width = y1 - y0, x1 - x0
    cols = np.floor((np.arange(x0, x1) + 0.5) * scale).astype(np.int64)
    rows = np.floor((np.arange(y0, y1) + 0.5) * scale).astype(np.int64)
    reduced = np.zeros((rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1), dtype=bool)
    # The first column of each picture column (the mapping is non-decreasing: runs of equal values).
    col_starts = np.flatnonzero(np.r_[True, cols[1:] != cols[:-1]])
    step = max(1, band_pixels // width)
    for top in range(0, height, step):
        bottom = min(top + step, height)
        band = inst.region(x0, y0 + top, x1, y0 + bottom)
        band = np.logical_or.reduceat(band, col_starts, axis=1)
        band_rows = rows[top:bottom] - rows[0]
        row_starts = np.flatnonzero(np.r_[True, band_rows[1:] != band_rows[:-1]])
        reduced[band_rows[row_starts]] |= np.logical_or.reduceat(band, row_starts, axis=0)
    return reduced, (int(cols[0]), int(rows[0]))


def draw_instances(
    image: np.ndarray,
    instances: Sequence[SceneInstance],
    class_names: Sequence[str],
    scale: float = 1.0,
    band_pixels: int = BAND_PIXELS,
) -> np.ndarray:
    """Overlay of the instances on ``image`` (RGB) with OpenCV; returns a new RGB array.

    ``image`` may be a downscaled view of the scene (``scale`` = view / scene),
    so that a 10^4 px scene is drawn from polygons and boxes, never from
    full-size masks. Each instance is its outer contours filled at half
    opacity and outlined, its box, and a label "name score%", in its class's
    colour (detectron2's palette, as its Visualizer would draw it). OpenCV
    draws into the picture itself: the streamed overlay of a scene is drawn
    row after row, and detectron2's Visualizer (matplotlib) re-rendered the
    whole picture each time, at 0.6-1 GiB a pass on a 2048 px preview. An
    instance whose box holds more than ``band_pixels`` pixels is outlined on its
    mask reduced to the picture's scale, read band by band (see :func:`_outline`).
    """
    canvas = np.ascontiguousarray(image, dtype=np.uint8).copy()
    height, width = canvas.shape[:2]
    names = [display_name(name) for name in class_names]
    palette = colormap(rgb=True, maximum=255).astype(int)
    thickness = max(1, round(max(height, width) / 1000))
    font = max(0.3, max(height, width) / 2500)
    for inst in instances:
        # Contour points are pixel-footprint coordinates; OpenCV draws on pixel centres.
        polygons = [
            np.round(p.reshape(-1, 2) - 0.5).astype(np.int32) for p in _outline(inst, scale, band_pixels)
        ]
        if not polygons:
            continue
        colour = [int(c) for c in palette[inst.category % len(palette)]]
        x0, y0, x1, y1 = (int(round(v * scale)) for v in inst.box)
        x0, y0 = min(max(x0, 0), width - 1), min(max(y0, 0), height - 1)
        x1, y1 = min(max(x1, x0 + 1), width), min(max(y1, y0 + 1), height)
        # The fill is blended on the box only, so a small object costs a small patch.
        patch = canvas[y0:y1, x0:x1]
        layer = patch.copy()
        cv2.fillPoly(layer, [p - (x0, y0) for p in polygons], colour)
        patch[:] = cv2.addWeighted(patch, 0.5, layer, 0.5, 0)
        cv2.polylines(canvas, polygons, True, colour, thickness, cv2.LINE_AA)
        cv2.rectangle(canvas, (x0, y0), (x1 - 1, y1 - 1), colour, thickness)
        label = f"{names[inst.category]} {inst.score * 100:.0f}%"
        (text_w, text_h), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font, 1)
        ty = y0 if y0 >= text_h + base else min(y1 + text_h + base, height)
        cv2.rectangle(canvas, (x0, ty - text_h - base), (x0 + text_w, ty), (0, 0, 0), -1)
        cv2.putText(canvas, label, (x0, ty - base), cv2.FONT_HERSHEY_SIMPLEX, font, colour, 1, cv2.LINE_AA)
    return canvas
