"""The instance task of the scene engine: tiles merged into objects, written out as they become final.

Shorthand: rows of tiles r = 0..R-1, ``top(r)`` the first pixel row of the
tiles of row r.

:class:`InstanceSink` is the :class:`score.predict.scene.SceneSink` of
instance segmentation. It merges the instances of each tile with
:class:`score.predict.merge.TileMerger`. Before the first tile of row r the
engine asks it to write out what is final: every instance whose box ends
above ``top(r)`` can neither overlap nor touch any later tile. Final
instances are written at once (COCO result, GeoJSON Feature, overlay) and
dropped; the merger keeps only the pieces that reach row r (the bottom band
of the previous row, where they may still join a piece of row r). Memory is
thus bounded by two rows of tiles and the objects crossing them, not by the
number of detections. A merged object keeps its tile pieces in a file
(:class:`score.predict.spill.PieceStore`), with only their boxes and offsets
in memory: objects that chain across the whole scene (a weak model at
threshold 0) stay open until the end, and their masks, even bit-packed, would
grow with the scene.

No data: given the scene's valid-data mask (``valid``, e.g.
:meth:`score.predict.geotiff.GeoTiffReader.valid`), the sink drops, in each
tile before merging, every instance whose mask lies mostly (more than
:data:`MAX_NO_DATA`) in no data, and clips the others' masks to valid data
(:func:`clip_to_valid`). A model sees nodata as black ground and may find
objects there; an object cut by the border of the data keeps its valid part.

At each checkpoint the sink saves the held pieces (their records, in the
merger's order) and the overlay so far; a resumed scene gets them back, so
the rest runs exactly as it would have without the interruption.

Files under the output folder, for a scene whose output stem is ``S``
(besides the engine's, see :mod:`score.predict.scene`)::

    scenes/S/detections.jsonl   COCO results (no "id"), one per line, as instances become final
    scenes/S/held.<r>.jsonl     pieces still held after r rows (removed when the scene is done)
    scenes/S/pieces.bin         packed tile pieces of merged objects (removed when the scene is done)
    scenes/S/overlay.<r>.png    the overlay drawn after r rows (removed when the scene is done)
    geojson/S.geojsonl          newline-delimited GeoJSON Features, as instances become final
    geojson/S.geojson           the FeatureCollection, written at the end from the .geojsonl
    visualizations/S.jpg        the overlay, at the end

The COCO results of all scenes are joined into one ``predictions.json`` by
:func:`write_coco_results`, one line at a time.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from detectron2.structures import Instances
from pycocotools import mask as mask_util

from ..fileio import atomic_write
from .geojson import FeatureMaker, write_feature_collection
from .masks import BAND_PIXELS, SceneInstance
from .merge import TileMerger, instances_to_scene
from .scene import read_lines, scene_folder
from .spill import PieceStore, SpilledInstance
from .windows import Box

__all__ = [
    "MAX_NO_DATA",
    "InstanceSink",
    "clip_to_valid",
    "instance_from_record",
    "instance_record",
    "write_coco_results",
]

logger = logging.getLogger(__name__)

# An instance with a larger share of its mask in no data is dropped.
MAX_NO_DATA = 0.5

# What one tile gives the sink: its instances above the threshold, and the best score it had (None if none).
TilePieces = Tuple[List[SceneInstance], Optional[float]]


def clip_to_valid(instances: Instances, valid: np.ndarray, max_no_data: float = MAX_NO_DATA) -> Instances:
    """The instances of a window whose mask lies at most ``max_no_data`` in no data, masks cut to valid data.

    Args:
        instances: predictions on the window, ``pred_masks`` (R, h, w).
        valid: (h, w) bool, True where the window holds data.
        max_no_data: largest share of a mask's pixels in no data that is kept.
    """
    if valid.all() or len(instances) == 0:
        return instances
    masks = instances.pred_masks.detach().cpu().bool()
    valid = torch.from_numpy(np.ascontiguousarray(valid))
    area = masks.flatten(1).sum(1)
    inside = (masks & valid).flatten(1).sum(1)
    keep = torch.nonzero(area - inside <= max_no_data * area).flatten()
    kept = instances[keep.to(instances.pred_masks.device)]
    kept.pred_masks = (masks[keep] & valid).to(instances.pred_masks.device)
    return kept


def instance_record(inst: SceneInstance) -> dict:
    """A JSON-ready record of an instance: the cropped mask as COCO RLE (exact round trip).

    A :class:`SpilledInstance` is recorded as its pieces' boxes and offsets
    (its pieces stay in its store).
    """
    if isinstance(inst, SpilledInstance):
        return {
            "category": inst.category,
            "score": inst.score,
            "box": list(inst.box),
            "pieces": [[*box, offset] for box, offset in inst.pieces],
            "windows": [list(w) for w in inst.windows],
        }
    rle = inst.crop_rle()  # from the packed crop, in column bands: no dense copy of the mask
    return {
        "category": inst.category,
        "score": inst.score,
        "box": list(inst.box),
        "mask": {"size": rle["size"], "counts": rle["counts"]},
        "windows": [list(w) for w in inst.windows],
    }


def instance_from_record(record: dict, store: Optional[PieceStore] = None) -> SceneInstance:
    """The instance of :func:`instance_record` (``store``: the one its pieces are in, if it has pieces)."""
    if "pieces" in record:
        if store is None:
            raise ValueError("a record of pieces needs the store they are in")
        return SpilledInstance(
            category=int(record["category"]),
            score=float(record["score"]),
            box=tuple(record["box"]),
            windows=[tuple(w) for w in record["windows"]],
            pieces=[(tuple(p[:4]), int(p[4])) for p in record["pieces"]],
            store=store,
        )
    rle = {"size": record["mask"]["size"], "counts": record["mask"]["counts"].encode("ascii")}
    return SceneInstance(
        category=int(record["category"]),
        score=float(record["score"]),
        box=tuple(record["box"]),
        mask=mask_util.decode(rle).view(bool),
        windows=[tuple(w) for w in record["windows"]],
    )


class InstanceSink:
    """Merges the tiles of one scene and writes final instances to disk as rows of tiles finish.

    A :class:`score.predict.scene.SceneSink`: give it to a
    :class:`score.predict.scene.SceneEngine`, which opens it and feeds it.
    :attr:`detections`, :attr:`tile_detections` and :attr:`best_score` count
    what it wrote (also for a scene an earlier run finished).
    """

    def __init__(
        self,
        output: str,
        stem: str,
        *,
        image_id: str,
        height: int,
        width: int,
        class_names: Sequence[str],
        score_threshold: float = 0.0,
        match_threshold: float = 0.5,
        features: Optional[FeatureMaker] = None,
        canvas: Optional[Callable[[], Tuple[np.ndarray, float]]] = None,
        band_pixels: int = BAND_PIXELS,
        valid: Optional[Callable[[Box], np.ndarray]] = None,
    ):
        """
        Args:
            output: the output folder.
            stem: the scene's file stem under it (see the module docstring).
            image_id: the COCO ``image_id`` of the scene's results.
            height, width: scene size (px).
            class_names: the vocabulary (``category`` indexes it), for overlay labels.
            score_threshold: instances below it are dropped in each tile, before merging.
            match_threshold: see :class:`score.predict.merge.TileMerger`.
            features: makes the GeoJSON Features; None writes no GeoJSON.
            canvas: returns the picture the overlay is drawn on (a preview of the
                scene) and its scale (preview / scene); None draws no overlay.
            band_pixels: objects whose box holds more pixels are drawn on the overlay
                from their mask reduced band by band (see :func:`score.predict.predictor.draw_instances`;
                the GeoJSON outline has its own, ``features.band_pixels``).
            valid: window -> (h, w) bool, True where the scene holds data (see
                :func:`clip_to_valid`); None: every pixel is data.
        """
        self.image_id, self.height, self.width = image_id, height, width
        self.class_names = list(class_names)
        self.score_threshold = score_threshold
        self.match_threshold = match_threshold
        self.features = features
        self.band_pixels = band_pixels
        self.valid = valid
        self.folder = scene_folder(output, stem)
        self.paths = {
            "detections": os.path.join(self.folder, "detections.jsonl"),
            "features": os.path.join(output, "geojson", stem + ".geojsonl"),
            "pieces": os.path.join(self.folder, "pieces.bin"),
            "collection": os.path.join(output, "geojson", stem + ".geojson"),
            "overlay": os.path.join(output, "visualizations", stem + ".jpg"),
        }
        self.files = {name: self.paths[name] for name in ("detections", "features", "pieces")}
        self._make_canvas = canvas
        self.detections = 0  # final (merged) instances written
        self.tile_detections = 0  # instances of the tiles, before merging
        self.best_score: Optional[float] = None
        self.store: Optional[PieceStore] = None
        self.merger = TileMerger(match_threshold=match_threshold)
        self._held_file: Optional[str] = None
        self._overlay_file: Optional[str] = None
        self._old: List[Optional[str]] = []
        self._canvas: Optional[np.ndarray] = None
        self._scale = 1.0
        self._files: Dict[str, object] = {}

    # Where a window was predicted (also another process) ----------------------------------------------

    def tile(self, window: Box, output: Instances) -> TilePieces:
        """The instances of ``window`` above the threshold, as scene instances, and the best score it had.

        Instances mostly in no data are dropped first, and the others' masks clipped to valid data.
        """
        if self.valid is not None:
            output = clip_to_valid(output, self.valid(window))
        best = float(output.scores.max()) if len(output) else None
        return instances_to_scene(output, window, self.score_threshold), best

    def encode(self, tile: TilePieces) -> Dict:
        pieces, best = tile
        return {"best_score": best, "pieces": [instance_record(p) for p in pieces]}

    def decode(self, record: Dict) -> TilePieces:
        return [instance_from_record(r) for r in record["pieces"]], record["best_score"]

    # Opening -----------------------------------------------------------------------------------------

    def open(self, state: Optional[Dict], complete: bool = False) -> None:
        if state is not None:
            self.detections = state["detections"]
            self.tile_detections = state["tile_detections"]
            self.best_score = state["best_score"]
        if complete:
            return
        if state is None:
            for name in os.listdir(self.folder):
                if name.startswith(("held.", "overlay.")):
                    os.remove(os.path.join(self.folder, name))
        self.store = PieceStore(self.paths["pieces"])
        self.merger = TileMerger(match_threshold=self.match_threshold, store=self.store)
        if state is not None:
            self._held_file = state["held"]
            held = []
            for line in read_lines(os.path.join(self.folder, self._held_file)):
                entry = json.loads(line)
                held.append((entry["key"], instance_from_record(entry["instance"], self.store)))
            self.merger.restore(held, state["next_key"])
            self._overlay_file = state.get("overlay")
            if self._overlay_file is not None:
                picture = cv2.imread(os.path.join(self.folder, self._overlay_file), cv2.IMREAD_COLOR)
                if picture is None:
                    raise OSError(f"cannot read the partial overlay {self._overlay_file} in {self.folder}")
                self._canvas = np.ascontiguousarray(picture[:, :, ::-1])
                self._scale = state["overlay_scale"]
            logger.info("%s: %d instances already written", self.image_id, self.detections)
        if self._make_canvas is not None and self._canvas is None:
            self._canvas, self._scale = self._make_canvas()
        names = ["detections"] + (["features"] if self.features is not None else [])
        for name in names:
            os.makedirs(os.path.dirname(self.paths[name]), exist_ok=True)
            self._files[name] = open(self.paths[name], "a", encoding="utf-8")

    # Streaming ---------------------------------------------------------------------------------------

    def add(self, index: int, window: Box, tile: TilePieces) -> Dict:
        pieces, best_score = tile
        self.merger.add(window, pieces)
        self.tile_detections += len(pieces)
        if best_score is not None:
            self.best_score = best_score if self.best_score is None else max(self.best_score, best_score)
        return {"detections": len(pieces), "best_score": best_score}

    def counts(self) -> Dict[str, int]:
        return {"written": self.detections, "tile_detections": self.tile_detections}

    def _write(self, name: str, lines: Sequence[str]) -> None:
        f = self._files.get(name)
        if f is not None:
            f.write("".join(line + "\n" for line in lines))

    def _emit(self, instances: List[SceneInstance]) -> None:
        """Write final instances, one at a time: COCO result, GeoJSON Feature, overlay.

        Each instance leaves ``instances`` (emptied) as it is written, so that
        its mask is freed before the next one's outline and run lengths are built.
        """
        self.detections += len(instances)
        instances.reverse()
        while instances:
            inst = instances.pop()
            result = {
                "image_id": self.image_id,
                "category_id": inst.category + 1,
                "segmentation": inst.to_coco_rle(self.height, self.width),
                "bbox": inst.bbox_xywh(),
                "area": inst.area,
                "score": round(float(inst.score), 6),
                "iscrowd": 0,
            }
            self._write("detections", [json.dumps(result)])
            if self.features is not None:
                # A Feature line in pieces: the outline of a scene-sized ragged mask is never held whole.
                pieces = self.features.feature_json(inst)
                first = next(pieces, None)
                if first is not None:
                    self._files["features"].write(first)
                    for piece in pieces:
                        self._files["features"].write(piece)
                    self._files["features"].write("\n")
            if self._canvas is not None:
                from .predictor import draw_instances  # the predictor module imports the model stack

                self._canvas = draw_instances(
                    self._canvas, [inst], self.class_names, self._scale, self.band_pixels
                )

    def _flush(self) -> None:
        for f in self._files.values():
            f.flush()

    def _state(self) -> Dict:
        return {
            "detections": self.detections,
            "tile_detections": self.tile_detections,
            "best_score": self.best_score,
            "held": self._held_file,
            "next_key": self.merger.next_key,
            "overlay": self._overlay_file,
            "overlay_scale": self._scale,
        }

    def row_done(self, rows: int, top: int) -> Dict:
        """Emit what is final before a row of tiles at pixel row ``top``; save the held pieces and overlay."""
        self._emit(self.merger.release(top))
        self._old = [self._held_file, self._overlay_file]
        self._held_file = f"held.{rows}.jsonl"
        with open(os.path.join(self.folder, self._held_file), "w", encoding="utf-8") as f:
            for key, inst in self.merger.held:
                f.write(json.dumps({"key": key, "instance": instance_record(inst)}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if self._canvas is not None:
            self._overlay_file = f"overlay.{rows}.png"
            # Lossless and fast: a resumed run must continue from exactly these pixels.
            cv2.imwrite(
                os.path.join(self.folder, self._overlay_file),
                self._canvas[:, :, ::-1],
                [cv2.IMWRITE_PNG_COMPRESSION, 1],
            )
        self._flush()
        return self._state()

    def finish(self) -> Dict:
        """Emit the remaining instances, write the FeatureCollection and the overlay."""
        self._emit(self.merger.finish())
        self._flush()
        for f in self._files.values():
            f.close()
        self._files = {}
        self.store.close()
        if self.features is not None:
            write_feature_collection(self.paths["features"], self.features.header(), self.paths["collection"])
        if self._canvas is not None:
            os.makedirs(os.path.dirname(self.paths["overlay"]), exist_ok=True)
            cv2.imwrite(self.paths["overlay"], self._canvas[:, :, ::-1])
        self._old = [self._held_file, self._overlay_file, os.path.basename(self.paths["pieces"])]
        self._held_file = self._overlay_file = None
        return self._state()

    def saved(self) -> None:
        for name in self._old:
            if name is not None and name not in (self._held_file, self._overlay_file):
                os.remove(os.path.join(self.folder, name))
        self._old = []


def _join_lines(out, lines: Iterator[str]) -> int:
    """Write ``lines`` separated by commas; the number written."""
    count = 0
    for line in lines:
        out.write(("," if count else "") + line)
        count += 1
    return count


def write_coco_results(
    path: str, images: Sequence[dict], categories: Sequence[dict], detection_files: Sequence[str]
) -> int:
    """Join per-scene COCO result lines into one file with "images", "categories", "annotations".

    Annotation ids are given here (1, 2, ... in file order); one line is in memory at a time.
    Returns the number of annotations.
    """

    def numbered() -> Iterator[str]:
        next_id = 1
        for name in detection_files:
            for line in read_lines(name):
                record = json.loads(line)
                yield json.dumps({"id": next_id, **record})
                next_id += 1

    prefix = json.dumps({"images": list(images), "categories": list(categories), "annotations": []})[:-2]
    with atomic_write(path) as out:
        out.write(prefix)
        count = _join_lines(out, numbered())
        out.write("]}")
    return count
