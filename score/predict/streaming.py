"""Scene-scale prediction written to disk as it goes: streamed, resumable, bounded in memory.

Shorthand: N tiles of a scene in row-major order, rows of tiles r = 0..R-1,
``top(r)`` the first pixel row of the tiles of row r.

:class:`SceneStream` takes the instances of each tile (in tile order) and
merges them with :class:`score.predict.tiling.TileMerger`. Before the first tile of
row r it takes out of the merger every instance whose box ends above
``top(r)``: such an instance can neither overlap nor touch any later tile,
so it is final. Final instances are written at once (COCO result, GeoJSON
Feature, overlay) and dropped; the merger keeps only the pieces that reach
row r (the bottom band of the previous row, where they may still join a
piece of row r). Memory is thus bounded by two rows of tiles and the objects
crossing them, not by the number of detections. A merged object keeps its
tile pieces in a file (:class:`score.predict.tiling.PieceStore`), with only their
boxes and offsets in memory: objects that chain across the whole scene (a
weak model at threshold 0) stay open until the end, and their masks, even
bit-packed, would grow with the scene.

After each finished row the stream writes a checkpoint: the files are
flushed, the held pieces and the overlay so far are saved, and the manifest
records how far the scene got, the byte length of every streamed file and a
*key* (what the output is of: the scene's content, the model's weights, the
vocabulary, the config and the settings, as digests). A scene interrupted at
any point restarts from the last finished row: the streamed files are cut
back to the recorded lengths, the merger gets the held pieces back in the
same order, and the rest runs exactly as it would have without the
interruption, so the result is the same.

Files under the output folder, for a scene whose output stem is ``S``::

    scenes/S/manifest.json      key, tiles and rows done, file lengths, counts
    scenes/S/detections.jsonl   COCO results (no "id"), one per line, as instances become final
    scenes/S/progress.jsonl     one line per tile: index, window, detections, best score, seconds
    scenes/S/held.<r>.jsonl     pieces still held after r rows (removed when the scene is done)
    scenes/S/pieces.bin         packed tile pieces of merged objects (removed when the scene is done)
    scenes/S/overlay.<r>.png    the overlay drawn after r rows (removed when the scene is done)
    scenes/S/tiles.<k>-of-<n>.jsonl   tile pieces predicted by rank k of n (sharded rows only)
    geojson/S.geojsonl          newline-delimited GeoJSON Features, as instances become final
    geojson/S.geojson           the FeatureCollection, written at the end from the .geojsonl
    visualizations/S.jpg        the overlay, at the end

The COCO results of all scenes are joined into one ``predictions.json`` by
:func:`write_coco_results`, and a FeatureCollection is written from its line
file by :func:`write_feature_collection`; both stream line by line.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from pycocotools import mask as mask_util
from tqdm import tqdm

from ..fileio import atomic_write
from .geo import FeatureMaker
from .tiling import (
    BAND_PIXELS,
    Box,
    PieceStore,
    SceneInstance,
    SpilledInstance,
    TileMerger,
    instances_to_scene,
)

__all__ = [
    "SceneStream",
    "part_path",
    "predict_tile_part",
    "rank_tiles",
    "stream_from_parts",
    "file_digest",
    "instance_from_record",
    "instance_record",
    "predict_tiles",
    "row_starts",
    "state_dict_digest",
    "write_coco_results",
    "write_feature_collection",
]

logger = logging.getLogger(__name__)

# 2: merged objects held as pieces in pieces.bin (its length in "lengths").
MANIFEST_VERSION = 2
_STREAMS = ("detections", "progress", "features")


def file_digest(path: str, chunk: int = 1 << 22) -> str:
    """SHA-256 (hex) of a file's content."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def state_dict_digest(model: torch.nn.Module) -> str:
    """SHA-256 (hex) of a model's parameters and buffers (names, dtypes, shapes, values)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        value = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode())
        digest.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


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


def row_starts(windows: Sequence[Box]) -> List[int]:
    """Indices of the first tile of each row of row-major ``windows``."""
    return [i for i, w in enumerate(windows) if i == 0 or w[1] != windows[i - 1][1]]


def _read_lines(path: str) -> Iterator[str]:
    """The complete lines of a file (without the newline), one at a time."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.endswith("\n"):
                yield line[:-1]


class SceneStream:
    """Merges the tiles of one scene and writes final instances to disk as rows of tiles finish.

    Feed it every tile, in order, from :attr:`start_tile` on (:meth:`add`),
    then call :meth:`finish`. When :attr:`complete` is already True on
    opening, the scene was finished by an earlier run with the same key and
    nothing needs to be predicted.
    """

    def __init__(
        self,
        output: str,
        stem: str,
        *,
        image_id: str,
        height: int,
        width: int,
        windows: Sequence[Box],
        class_names: Sequence[str],
        key: Dict,
        match_threshold: float = 0.5,
        features: Optional[FeatureMaker] = None,
        canvas: Optional[Callable[[], Tuple[np.ndarray, float]]] = None,
        resume: str = "auto",
        band_pixels: int = BAND_PIXELS,
    ):
        """
        Args:
            output: the output folder.
            stem: the scene's file stem under it (see the module docstring).
            image_id: the COCO ``image_id`` of the scene's results.
            height, width: scene size (px).
            windows: the tile windows, row-major (one window for an untiled image).
            class_names: the vocabulary (``category`` indexes it), for overlay labels.
            key: JSON-ready description of what the output is of; a partial output
                is resumed only when its key is equal.
            match_threshold: see :class:`score.predict.tiling.TileMerger`.
            features: makes the GeoJSON Features; None writes no GeoJSON.
            canvas: returns the picture the overlay is drawn on (a preview of the
                scene) and its scale (preview / scene); None draws no overlay.
            resume: "auto" (continue a partial output with the same key, start over
                otherwise), "always" (a partial output with another key is an
                error) or "never" (always start over).
            band_pixels: objects whose box holds more pixels are drawn on the overlay
                from their mask reduced band by band (see :func:`score.predict.predictor.draw_instances`;
                the GeoJSON outline has its own, ``features.band_pixels``).
        """
        if resume not in ("auto", "always", "never"):
            raise ValueError(f"resume must be 'auto', 'always' or 'never', not {resume!r}")
        self.output, self.stem, self.image_id = output, stem, image_id
        self.height, self.width = height, width
        self.windows = [tuple(w) for w in windows]
        self.rows = row_starts(self.windows)
        self._row_of = {tile: row for row, tile in enumerate(self.rows)}
        self.class_names = list(class_names)
        self.key = json.loads(json.dumps(key))  # as it reads back from the manifest
        self.features = features
        self.folder = os.path.join(output, "scenes", stem)
        self.paths = {
            "manifest": os.path.join(self.folder, "manifest.json"),
            "detections": os.path.join(self.folder, "detections.jsonl"),
            "progress": os.path.join(self.folder, "progress.jsonl"),
            "features": os.path.join(output, "geojson", stem + ".geojsonl"),
            "collection": os.path.join(output, "geojson", stem + ".geojson"),
            "overlay": os.path.join(output, "visualizations", stem + ".jpg"),
            "pieces": os.path.join(self.folder, "pieces.bin"),
        }
        self.match_threshold = match_threshold
        self.band_pixels = band_pixels
        self.store: Optional[PieceStore] = None
        self.merger = TileMerger(match_threshold=match_threshold)
        self.start_tile = 0
        self.rows_done = 0
        self.detections = 0  # final (merged) instances written
        self.tile_detections = 0  # instances of the tiles, before merging
        self.best_score: Optional[float] = None
        self.complete = False
        self.resumed = False
        self._held_file: Optional[str] = None
        self._overlay_file: Optional[str] = None
        self._canvas: Optional[np.ndarray] = None
        self._scale = 1.0
        self._files: Dict[str, object] = {}
        os.makedirs(self.folder, exist_ok=True)
        manifest = self._read_manifest()
        if manifest is not None and resume != "never":
            if manifest["key"] == self.key:
                self._resume(manifest)
            elif resume == "always":
                differ = sorted(
                    k
                    for k in set(manifest["key"]) | set(self.key)
                    if manifest["key"].get(k) != self.key.get(k)
                )
                raise ValueError(
                    f"--resume: the partial output in {self.folder} is of another run "
                    f"(different {', '.join(differ)}); remove it or run without --resume"
                )
            else:
                logger.warning(
                    "%s: the partial output there is of another run; starting the scene over", self.folder
                )
        if self.complete:
            return
        if not self.resumed:
            self._start_over()
        if canvas is not None and self._canvas is None:
            self._canvas, self._scale = canvas()
        self._next = self.start_tile
        if self.store is None:
            self._open_store()
        self._open_files()
        if not self.resumed:  # a manifest from the start: the folder is known to be this run's
            self._checkpoint(0)

    @staticmethod
    def is_done(output: str, stem: str, key: Dict) -> bool:
        """Whether a scene's output was finished by a run with this key (read-only check)."""
        path = os.path.join(output, "scenes", stem, "manifest.json")
        try:
            with open(path, encoding="utf-8") as f:
                manifest = json.load(f)
        except (OSError, ValueError):
            return False
        return bool(manifest.get("complete")) and manifest.get("key") == json.loads(json.dumps(key))

    # Opening -----------------------------------------------------------------------------------------

    def _read_manifest(self) -> Optional[Dict]:
        path = self.paths["manifest"]
        if not os.path.isfile(path):
            return None
        try:
            with open(path, encoding="utf-8") as f:
                manifest = json.load(f)
        except (OSError, ValueError) as error:
            logger.warning("%s cannot be read (%s); starting the scene over", path, error)
            return None
        if manifest.get("version") != MANIFEST_VERSION or "key" not in manifest:
            # An older layout (version 1 held merged objects as masks, not pieces) cannot be continued.
            logger.warning(
                "%s is of manifest version %s, this version reads %d; starting the scene over",
                path,
                manifest.get("version"),
                MANIFEST_VERSION,
            )
            return None
        return manifest

    def _resume(self, manifest: Dict) -> None:
        self.complete = bool(manifest["complete"])
        self.detections = manifest["detections"]
        self.tile_detections = manifest["tile_detections"]
        self.best_score = manifest["best_score"]
        self.rows_done = manifest["rows_done"]
        self.start_tile = manifest["next_tile"]
        if self.complete:
            logger.info(
                "%s: already done by an earlier run with the same scene, model and vocabulary", self.image_id
            )
            return
        for name in _STREAMS:
            path, length = self.paths[name], manifest["lengths"][name]
            if name == "features" and self.features is None:
                continue
            if not os.path.isfile(path) or os.path.getsize(path) < length:
                logger.warning("%s is shorter than the manifest says; starting the scene over", path)
                self._reset_counts()
                return
            os.truncate(path, length)
        pieces = manifest["lengths"]["pieces"]
        if not os.path.isfile(self.paths["pieces"]) or os.path.getsize(self.paths["pieces"]) < pieces:
            logger.warning(
                "%s is shorter than the manifest says; starting the scene over", self.paths["pieces"]
            )
            self._reset_counts()
            return
        self._open_store(pieces)
        self._held_file = manifest["held"]
        held = []
        for line in _read_lines(os.path.join(self.folder, self._held_file)):
            entry = json.loads(line)
            held.append((entry["key"], instance_from_record(entry["instance"], self.store)))
        self.merger.restore(held, manifest["next_key"])
        self._overlay_file = manifest.get("overlay")
        if self._overlay_file is not None:
            picture = cv2.imread(os.path.join(self.folder, self._overlay_file), cv2.IMREAD_COLOR)
            if picture is None:
                raise OSError(f"cannot read the partial overlay {self._overlay_file} in {self.folder}")
            self._canvas = np.ascontiguousarray(picture[:, :, ::-1])
            self._scale = manifest["overlay_scale"]
        self.resumed = True
        logger.info(
            "%s: resuming after %d of %d rows of tiles (tile %d of %d, %d instances already written)",
            self.image_id,
            self.rows_done,
            len(self.rows),
            self.start_tile,
            len(self.windows),
            self.detections,
        )

    def _reset_counts(self) -> None:
        self.detections = self.tile_detections = self.rows_done = self.start_tile = 0
        self.best_score = None
        self.complete = False

    def _start_over(self) -> None:
        self._reset_counts()
        for name in os.listdir(self.folder):
            if name.startswith(("held.", "overlay.", "manifest.")):
                os.remove(os.path.join(self.folder, name))
        for name in (*_STREAMS, "pieces"):
            if os.path.exists(self.paths[name]):
                os.remove(self.paths[name])

    def _open_store(self, length: Optional[int] = None) -> None:
        self.store = PieceStore(self.paths["pieces"], length)
        self.merger = TileMerger(match_threshold=self.match_threshold, store=self.store)

    def _open_files(self) -> None:
        names = [n for n in _STREAMS if n != "features" or self.features is not None]
        for name in names:
            os.makedirs(os.path.dirname(self.paths[name]), exist_ok=True)
            self._files[name] = open(self.paths[name], "a", encoding="utf-8")

    # Streaming ---------------------------------------------------------------------------------------

    def add(
        self,
        index: int,
        pieces: Sequence[SceneInstance],
        *,
        best_score: Optional[float] = None,
        seconds: float = 0.0,
    ) -> None:
        """The instances of tile ``index`` (above the threshold), the best score the tile had, its time."""
        if index != self._next:
            raise ValueError(f"tile {index} given, tile {self._next} expected (tiles must come in order)")
        # A new row: what ends above it is final (a resumed run starts with that checkpoint on disk).
        if index in self._row_of and index > 0 and not (self.resumed and index == self.start_tile):
            self._checkpoint(self._row_of[index])
        window = self.windows[index]
        self.merger.add(window, pieces)
        self.tile_detections += len(pieces)
        if best_score is not None:
            self.best_score = best_score if self.best_score is None else max(self.best_score, best_score)
        progress = {"tile": index, "window": list(window), "detections": len(pieces)}
        progress.update({"best_score": best_score, "seconds": round(seconds, 3)})
        self._write("progress", [json.dumps(progress)])
        self._files["progress"].flush()
        self._next = index + 1

    def _write(self, name: str, lines: Iterable[str]) -> None:
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

    def _lengths(self) -> Dict[str, int]:
        """Flush the streamed files to disk and return their lengths (bytes)."""
        lengths = {}
        for name in _STREAMS:
            f = self._files.get(name)
            if f is not None:
                f.flush()
                os.fsync(f.fileno())
            lengths[name] = os.path.getsize(self.paths[name]) if f is not None else 0
        self.store.sync()
        lengths["pieces"] = self.store.length
        return lengths

    def _checkpoint(self, rows_done: int) -> None:
        """Emit what is final before row ``rows_done`` and save the state to continue from there."""
        top = self.windows[self.rows[rows_done]][1]
        self._emit(self.merger.release(top))
        old = [self._held_file, self._overlay_file]
        self._held_file = f"held.{rows_done}.jsonl"
        with open(os.path.join(self.folder, self._held_file), "w", encoding="utf-8") as f:
            for key, inst in self.merger.held:
                f.write(json.dumps({"key": key, "instance": instance_record(inst)}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if self._canvas is not None:
            self._overlay_file = f"overlay.{rows_done}.png"
            # Lossless and fast: a resumed run must continue from exactly these pixels.
            cv2.imwrite(
                os.path.join(self.folder, self._overlay_file),
                self._canvas[:, :, ::-1],
                [cv2.IMWRITE_PNG_COMPRESSION, 1],
            )
        self.rows_done = rows_done
        self._write_manifest(self._lengths(), next_tile=self.rows[rows_done], complete=False)
        for name in old:
            if name is not None and name not in (self._held_file, self._overlay_file):
                os.remove(os.path.join(self.folder, name))

    def _write_manifest(self, lengths: Dict[str, int], *, next_tile: int, complete: bool) -> None:
        manifest = {
            "version": MANIFEST_VERSION,
            "key": self.key,
            "image_id": self.image_id,
            "height": self.height,
            "width": self.width,
            "tiles": len(self.windows),
            "rows": len(self.rows),
            "rows_done": self.rows_done,
            "next_tile": next_tile,
            "complete": complete,
            "detections": self.detections,
            "tile_detections": self.tile_detections,
            "best_score": self.best_score,
            "lengths": lengths,
            "held": self._held_file,
            "next_key": self.merger.next_key,
            "overlay": self._overlay_file,
            "overlay_scale": self._scale,
        }
        with atomic_write(self.paths["manifest"]) as f:
            json.dump(manifest, f)

    def finish(self) -> None:
        """Emit the remaining instances, write the FeatureCollection and the overlay, mark the scene done."""
        if self.complete:
            return
        self._emit(self.merger.finish())
        self.rows_done = len(self.rows)
        lengths = self._lengths()
        for f in self._files.values():
            f.close()
        self._files = {}
        self.store.close()
        if self.features is not None:
            write_feature_collection(self.paths["features"], self.features.header(), self.paths["collection"])
        if self._canvas is not None:
            os.makedirs(os.path.dirname(self.paths["overlay"]), exist_ok=True)
            cv2.imwrite(self.paths["overlay"], self._canvas[:, :, ::-1])
        old = [self._held_file, self._overlay_file]
        self._held_file = self._overlay_file = None
        self._write_manifest(lengths, next_tile=len(self.windows), complete=True)
        for name in old:
            if name is not None:
                os.remove(os.path.join(self.folder, name))
        os.remove(self.paths["pieces"])
        self.complete = True


def _join_lines(out, lines: Iterable[str]) -> int:
    """Write ``lines`` separated by commas; the number written."""
    count = 0
    for line in lines:
        out.write(("," if count else "") + line)
        count += 1
    return count


def write_feature_collection(lines_path: str, header: Dict, path: str, chunk: int = 1 << 20) -> int:
    """Write a FeatureCollection from a newline-delimited GeoJSON file; the feature count.

    ``header`` holds the collection's other members (type, crs...); "features"
    is written last. The lines are copied in blocks of ``chunk`` bytes, each
    newline but the last becoming the comma between two Features: one Feature
    of a ragged scene-sized mask is tens of MB, never read as one string. A
    last line without its newline (cut by a kill) is left out.
    """
    prefix = json.dumps({**header, "features": []})[:-2]  # everything up to the empty list's "]}"
    count = 0
    with atomic_write(path, "wb") as out:
        out.write(prefix.encode())
        if os.path.isfile(lines_path):
            with open(lines_path, "rb") as f:
                end = _last_newline(f, chunk)
                f.seek(0)
                while f.tell() < end:
                    block = f.read(min(chunk, end - f.tell()))
                    count += block.count(b"\n")
                    out.write(block.replace(b"\n", b","))
                count += end >= 0
        out.write(b"]}")
    return count


def _last_newline(f, chunk: int) -> int:
    """Offset of the last newline of binary file ``f`` (-1 when it has none)."""
    position = f.seek(0, os.SEEK_END)
    while position > 0:
        start = max(0, position - chunk)
        f.seek(start)
        found = f.read(position - start).rfind(b"\n")
        if found >= 0:
            return start + found
        position = start
    return -1


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
            for line in _read_lines(name):
                record = json.loads(line)
                yield json.dumps({"id": next_id, **record})
                next_id += 1

    prefix = json.dumps({"images": list(images), "categories": list(categories), "annotations": []})[:-2]
    with atomic_write(path) as out:
        out.write(prefix)
        count = _join_lines(out, numbered())
        out.write("]}")
    return count


def _tile_pieces(predict: Callable, reader, window: Box, score_threshold: float):
    """Predict one window: its instances above the threshold and the best score it had (None if none)."""
    instances = predict(np.ascontiguousarray(reader.read(window)))
    best = float(instances.scores.max()) if len(instances) else None
    return instances_to_scene(instances, window, score_threshold), best


def predict_tiles(
    predict: Callable,
    reader,
    stream: SceneStream,
    *,
    score_threshold: float = 0.0,
    progress: bool = True,
) -> None:
    """Predict the tiles of ``stream`` from its :attr:`~SceneStream.start_tile` on and finish it.

    Args:
        predict: (h, w, 3) uint8 window -> Instances (e.g. a :class:`score.predict.predictor.SCOREPredictor`).
        reader: the scene (:class:`score.predict.tiling.SceneReader`).
        stream: where the tiles go.
        score_threshold: instances below it are dropped in each tile, before merging.
        progress: show a tqdm bar (tiles done, instances written and tile detections so far, ETA).
    """
    if stream.complete:
        return
    windows = stream.windows
    bar = tqdm(
        total=len(windows), initial=stream.start_tile, desc=stream.image_id, unit="tile", disable=not progress
    )
    for index in range(stream.start_tile, len(windows)):
        start = time.perf_counter()
        pieces, best = _tile_pieces(predict, reader, windows[index], score_threshold)
        stream.add(index, pieces, best_score=best, seconds=time.perf_counter() - start)
        bar.update(1)
        bar.set_postfix(written=stream.detections, tile_detections=stream.tile_detections, refresh=False)
    bar.close()
    stream.finish()


# Tile rows shared out over several processes -----------------------------------------------------------


def part_path(output: str, stem: str, rank: int, world_size: int) -> str:
    """The file of tile pieces predicted by ``rank`` of ``world_size`` for one scene."""
    return os.path.join(output, "scenes", stem, f"tiles.{rank}-of-{world_size}.jsonl")


def rank_tiles(windows: Sequence[Box], rank: int, world_size: int) -> List[int]:
    """The tiles of the rows ``rank``, ``rank + world_size``, ... (rows dealt round-robin)."""
    starts = row_starts(windows) + [len(windows)]
    return [
        i for row in range(rank, len(starts) - 1, world_size) for i in range(starts[row], starts[row + 1])
    ]


def predict_tile_part(
    predict: Callable,
    reader,
    windows: Sequence[Box],
    tiles: Sequence[int],
    path: str,
    key: Dict,
    *,
    score_threshold: float = 0.0,
    progress: bool = False,
) -> None:
    """Predict ``tiles`` of a scene and write their pieces to ``path``, one line per tile.

    The first line is ``{"key": key}``; a file with the same key is continued
    after its last complete tile (the pieces are merged later, in tile order,
    by :func:`stream_from_parts`).
    """
    key = json.loads(json.dumps(key))
    done: List[int] = []
    length = 0
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            header = f.readline()
            if header.endswith("\n") and json.loads(header) == {"key": key}:
                length = len(header.encode())
                for line in f:
                    if not line.endswith("\n"):
                        break
                    done.append(json.loads(line)["tile"])
                    length += len(line.encode())
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "r+" if length else "w", encoding="utf-8") as f:
        f.truncate(length)
        f.seek(length)
        if not length:
            f.write(json.dumps({"key": key}) + "\n")
        todo = [i for i in tiles if i not in set(done)]
        for index in tqdm(todo, desc=os.path.basename(path), unit="tile", disable=not progress):
            start = time.perf_counter()
            pieces, best = _tile_pieces(predict, reader, windows[index], score_threshold)
            record = {"tile": index, "best_score": best, "seconds": round(time.perf_counter() - start, 3)}
            record["pieces"] = [instance_record(p) for p in pieces]
            f.write(json.dumps(record) + "\n")
            f.flush()


def stream_from_parts(stream: SceneStream, parts: Sequence[str]) -> None:
    """Feed ``stream`` the tiles of the part files of ``world_size = len(parts)`` ranks, and finish it.

    Rank k's file holds the tiles of :func:`rank_tiles` for k; each file is read
    once, front to back, one tile at a time.
    """
    if stream.complete:
        return
    owner = {i: k for k in range(len(parts)) for i in rank_tiles(stream.windows, k, len(parts))}
    readers = [_read_lines(p) for p in parts]
    for reader in readers:
        next(reader)  # the key line (checked by the rank that wrote it)
    for index in range(len(stream.windows)):
        record = json.loads(next(readers[owner[index]]))
        if record["tile"] != index:
            raise ValueError(f"{parts[owner[index]]}: tile {record['tile']} where tile {index} was expected")
        if index < stream.start_tile:
            continue
        pieces = [instance_from_record(r) for r in record["pieces"]]
        stream.add(index, pieces, best_score=record["best_score"], seconds=record["seconds"])
    stream.finish()
