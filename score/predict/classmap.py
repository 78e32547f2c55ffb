"""The semantic task of the scene engine: class scores of overlapping windows blended into a class map.

Shorthand: K classes, H x W the scene, T tile side, O tile overlap (px), rows
of tiles r = 0..R-1, ``top(r)`` the first pixel row of the tiles of row r.

:class:`ClassMapSink` is the :class:`score.predict.scene.SceneSink` of
semantic segmentation. Each window's (K, h, w) class probabilities are added to
running sums weighted by :func:`window_weights`: 1 inside, falling linearly
over the O px next to a window border that lies inside the scene (never 0),
so that where windows overlap the scores fade from one into the other and no
seam shows. A pixel is final once no later window covers it: before row r
begins, every row above ``top(r)`` is. Those rows are turned into classes
(the highest blended score; no data where the input has none, see
``reader.valid``, or where the score is below ``min_confidence``) and
appended to an uncompressed raw file; the sums are kept only for the rows
from ``top(r)`` down, about one row of tiles: memory is (K + 1) x T x W
float32, never the scene.

At each checkpoint the sink saves those open rows (sums and weights) in
``band.<r>.npz``; the raw files are engine-tracked (their lengths are in the
manifest), so a resumed scene continues from the last finished row and writes
the same bytes as an uninterrupted one. :meth:`ClassMapSink.finish` then
writes the outputs from the raw files, block by block.

Files under the output folder, for a scene whose output stem is ``S``
(besides the engine's, see :mod:`score.predict.scene`)::

    scenes/S/labels.raw         final rows of classes, (H, W) uint8 or uint16 (removed when done)
    scenes/S/confidence.raw     final rows of the winning score, float32 (--confidence; removed when done)
    scenes/S/band.<r>.npz       blended sums of the rows still open after r rows of tiles
    classmaps/S.png             palette PNG of the class map (value = class index, 255 = no data)
    classmaps/S.tif             GeoTIFF class map on the input's grid (GeoTIFF input; a COG with --cog)
    classmaps/S.classes.json    value, name, synonyms and colour of each class, and the no-data value
    classmaps/S.confidence.tif  winning score, float32, NaN = no data (--confidence, GeoTIFF input)
    geojson/S.geojsonl          one Feature per connected region (--vectorize), then geojson/S.geojson
    visualizations/S.jpg        class colours over the input with a legend
"""

from __future__ import annotations

import base64
import logging
import os
from typing import Callable, Dict, Optional, Sequence, Tuple

import cv2
import numpy as np
from affine import Affine
from rasterio.crs import CRS

from ..vocabulary import display_name
from .raster import (
    class_colours,
    class_dtype,
    gdal_copy,
    nodata_value,
    read_reduced,
    vectorize,
    write_class_geotiff,
    write_classes_json,
)
from .scene import scene_folder
from .windows import Box

__all__ = ["ClassMapSink", "draw_class_map", "window_weights"]

logger = logging.getLogger(__name__)

# Rows of the open band turned into classes at a time.
_FINAL_ROWS = 32


def _ramp(length: int, start_inside: bool, end_inside: bool, overlap: int) -> np.ndarray:
    """1-D weights: 1, falling linearly to 1 / (O + 1) over the O px next to an end inside the scene."""
    weights = np.ones(length, np.float32)
    if overlap > 0:
        position = np.arange(length, dtype=np.float32)
        if start_inside:
            weights = np.minimum(weights, (position + 1) / (overlap + 1))
        if end_inside:
            weights = np.minimum(weights, (length - position) / (overlap + 1))
    return weights


def window_weights(window: Box, height: int, width: int, overlap: int) -> np.ndarray:
    """(h, w) float32 blending weights of a window of an H x W scene: a separable linear ramp over O px.

    Only borders inside the scene fall off (a scene border has no neighbour to
    fade into); every weight is > 0.
    """
    x0, y0, x1, y1 = window
    rows = _ramp(y1 - y0, y0 > 0, y1 < height, overlap)
    cols = _ramp(x1 - x0, x0 > 0, x1 < width, overlap)
    return rows[:, None] * cols[None, :]


def draw_class_map(
    image: np.ndarray, labels: np.ndarray, class_names: Sequence[str], nodata: int, alpha: float = 0.5
) -> np.ndarray:
    """Class colours blended over ``image`` (RGB, same size as ``labels``), with a legend on the right.

    No-data pixels show the image alone. The legend lists every class of the
    vocabulary (colour and display name). Returns a new RGB array.
    """
    colours = class_colours(len(class_names))
    canvas = np.ascontiguousarray(image, dtype=np.uint8).copy()
    known = labels != nodata
    if known.any():
        coloured = colours[labels[known].astype(np.int64)].astype(np.float32)
        canvas[known] = np.round((1 - alpha) * canvas[known] + alpha * coloured).astype(np.uint8)
    names = [display_name(n) for n in class_names]
    font, scale, thick = cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1
    line = 22
    text_w = max(cv2.getTextSize(n, font, scale, thick)[0][0] for n in names)
    legend = np.full((max(canvas.shape[0], line * len(names) + 8), text_w + 44, 3), 255, np.uint8)
    for i, name in enumerate(names):
        y = 4 + i * line
        cv2.rectangle(legend, (6, y + 3), (22, y + 19), [int(c) for c in colours[i]], -1)
        cv2.rectangle(legend, (6, y + 3), (22, y + 19), (0, 0, 0), 1)
        cv2.putText(legend, name, (30, y + 16), font, scale, (0, 0, 0), thick, cv2.LINE_AA)
    height = legend.shape[0]
    if canvas.shape[0] < height:
        canvas = np.concatenate(
            [canvas, np.full((height - canvas.shape[0], *canvas.shape[1:]), 255, np.uint8)]
        )
    return np.concatenate([canvas, legend], axis=1)


class ClassMapSink:
    """Blends the class scores of a scene's windows and writes the class map as rows become final."""

    def __init__(
        self,
        output: str,
        stem: str,
        *,
        image_id: str,
        height: int,
        width: int,
        class_names: Sequence[str],
        overlap: int,
        reader=None,
        transform: Optional[Affine] = None,
        crs: Optional[CRS] = None,
        geotiff: bool = False,
        min_confidence: float = 0.0,
        confidence: bool = False,
        cog: bool = False,
        vectorize: Optional[Dict] = None,
        canvas: Optional[Callable[[], Tuple[np.ndarray, float]]] = None,
    ):
        """
        Args:
            output: the output folder.
            stem: the scene's file stem (see the module docstring).
            image_id: the scene's name in logs and in the GeoJSON.
            height, width: scene size (px).
            class_names: the vocabulary (K classes; values 0..K-1).
            overlap: O, the px over which the weights of a window fall off at an inner border.
            reader: the scene; when it has ``valid(window) -> (h, w) bool`` (True = data),
                pixels without data are no data in the class map.
            transform, crs: the input's grid (GeoTIFF); None for pictures.
            geotiff: write classmaps/S.tif (and the confidence GeoTIFF) on the input's grid.
            min_confidence: pixels whose winning blended score is below become no data.
            confidence: also write the winning score (GeoTIFF input).
            cog: the GeoTIFFs are Cloud-Optimized (GDAL's COG driver).
            vectorize: None, or {"simplify": px, "min_area": px, "band_rows": rows}: polygons.
            canvas: () -> (picture of the scene, scale picture / scene) for the overlay; None: no overlay.
        """
        self.output, self.stem, self.image_id = output, stem, image_id
        self.height, self.width = height, width
        self.class_names = list(class_names)
        self.overlap = overlap
        self.reader = reader
        self.transform, self.crs = transform, crs
        self.geotiff, self.confidence, self.cog = geotiff, confidence, cog
        self.min_confidence = min_confidence
        self.vectorize = vectorize
        self.canvas = canvas
        self.dtype = class_dtype(len(self.class_names))
        self.nodata = nodata_value(self.dtype)
        self.folder = scene_folder(output, stem)
        classmaps = os.path.join(output, "classmaps")
        self.paths = {
            "png": os.path.join(classmaps, f"{stem}.png"),
            "classes": os.path.join(classmaps, f"{stem}.classes.json"),
        }
        if geotiff:
            self.paths["tif"] = os.path.join(classmaps, f"{stem}.tif")
            if confidence:
                self.paths["confidence"] = os.path.join(classmaps, f"{stem}.confidence.tif")
        if vectorize is not None:
            self.paths["geojsonl"] = os.path.join(output, "geojson", f"{stem}.geojsonl")
            self.paths["geojson"] = os.path.join(output, "geojson", f"{stem}.geojson")
        if canvas is not None:
            self.paths["overlay"] = os.path.join(output, "visualizations", f"{stem}.jpg")
        self.files = {"labels": os.path.join(self.folder, "labels.raw")}
        if geotiff and confidence:
            self.files["scores"] = os.path.join(self.folder, "confidence.raw")
        self._streams: Dict[str, object] = {}
        self._top = 0  # rows above are final (in the raw files)
        # The open band: rows top.. of the sums and weights, views of buffers that grow to the
        # tallest window's height once and are reused (no copies of the band as it grows).
        self._sum_rows = np.zeros((len(self.class_names), 0, width), np.float32)
        self._weight_rows = np.zeros((0, width), np.float32)
        self._sums, self._weights = self._sum_rows, self._weight_rows
        self._band: Optional[str] = None
        self._finished = False
        self.regions: Optional[int] = None

    # Tiles (also where the window was predicted, without open) ----------------------------------------

    def tile(self, window: Box, output) -> np.ndarray:
        """(K, h, w) float16 class probabilities of the window: the model's class scores over their sum.

        Mask2Former's semantic scores sum over the classes to up to Q (one share
        per query); divided by that sum they are probabilities, which the winning
        score and ``min_confidence`` are about (the winning class is the same).
        float16 halves a sharded run's part files.
        """
        x0, y0, x1, y1 = window
        scores = output.numpy() if hasattr(output, "numpy") else np.asarray(output)
        expected = (len(self.class_names), y1 - y0, x1 - x0)
        if scores.shape != expected:
            raise ValueError(f"class scores of shape {scores.shape} for window {window}; expected {expected}")
        total = scores.sum(axis=0, keepdims=True, dtype=np.float32)
        return (scores / np.maximum(total, np.finfo(np.float32).tiny)).astype(np.float16)

    def encode(self, tile: np.ndarray) -> Dict:
        return {"shape": list(tile.shape), "scores": base64.b64encode(tile.tobytes()).decode("ascii")}

    def decode(self, record: Dict) -> np.ndarray:
        data = np.frombuffer(base64.b64decode(record["scores"]), dtype=np.float16)
        return data.reshape(record["shape"])

    # The engine's calls ------------------------------------------------------------------------------

    def open(self, state: Optional[Dict], complete: bool = False) -> None:
        if complete:
            self._finished = True
            self.regions = state.get("regions")
            return
        if state is None:
            for name in os.listdir(self.folder):
                if name.startswith("band.") and name.endswith(".npz"):
                    os.remove(os.path.join(self.folder, name))
        else:
            self._top = state["final_rows"]
            self._band = state["band"]
            with np.load(os.path.join(self.folder, self._band)) as band:
                self._sum_rows, self._weight_rows = band["sums"], band["weights"]
                self._sums, self._weights = self._sum_rows, self._weight_rows
        self._streams = {name: open(path, "ab") for name, path in self.files.items()}

    def add(self, index: int, window: Box, tile: np.ndarray) -> Dict:
        x0, y0, x1, y1 = window
        if y0 < self._top:
            raise ValueError(f"window {window} reaches rows above {self._top}, which are final")
        rows = y1 - self._top
        if rows > self._weights.shape[0]:  # grow the open band down to the window's bottom
            self._open_rows(rows)
        weights = window_weights(window, self.height, self.width, self.overlap)
        top, bottom = y0 - self._top, y1 - self._top
        self._sums[:, top:bottom, x0:x1] += tile.astype(np.float32) * weights
        self._weights[top:bottom, x0:x1] += weights
        return {}

    def _valid(self, top: int, bottom: int) -> Optional[np.ndarray]:
        """(rows, W) bool: where the input has data (None: everywhere)."""
        if self.reader is None or not hasattr(self.reader, "valid"):
            return None
        return np.asarray(self.reader.valid((0, top, self.width, bottom)), dtype=bool)

    def _finalize(self, until: int) -> None:
        """Rows [top, until) become classes, appended to the raw files, and leave the open band."""
        count = until - self._top
        if count <= 0:
            return
        if self._weights[:count].min(initial=1.0) <= 0:
            raise ValueError(f"rows {self._top}..{until} of {self.image_id} are not covered by any window")
        for start in range(0, count, _FINAL_ROWS):  # a few rows at a time: no (K, count, W) scores
            stop = min(count, start + _FINAL_ROWS)
            scores = self._sums[:, start:stop] / self._weights[start:stop]
            labels = scores.argmax(axis=0).astype(self.dtype)
            best = np.take_along_axis(scores, labels[None].astype(np.int64), 0)[0]
            labels[best < self.min_confidence] = self.nodata
            valid = self._valid(self._top + start, self._top + stop)
            if valid is not None:
                labels[~valid] = self.nodata
                best[~valid] = np.nan
            self._streams["labels"].write(np.ascontiguousarray(labels).tobytes())
            if "scores" in self._streams:
                self._streams["scores"].write(np.ascontiguousarray(best, np.float32).tobytes())
        for stream in self._streams.values():
            stream.flush()
        rest = self._weights.shape[0] - count
        for plane in self._sum_rows:  # class by class: no copy of the whole band when it moves up
            plane[:rest] = plane[count : count + rest]
        self._weight_rows[:rest] = self._weight_rows[count : count + rest]
        self._sums, self._weights = self._sum_rows[:, :rest], self._weight_rows[:rest]
        self._top = until

    def _open_rows(self, rows: int) -> None:
        """Extend the open band to ``rows`` rows (the new ones 0), growing the buffers when too small."""
        open_rows = self._weights.shape[0]
        if rows > self._weight_rows.shape[0]:
            sums = np.zeros((len(self.class_names), rows, self.width), np.float32)
            weights = np.zeros((rows, self.width), np.float32)
            sums[:, :open_rows], weights[:open_rows] = self._sums, self._weights
            self._sum_rows, self._weight_rows = sums, weights
        else:
            self._sum_rows[:, open_rows:rows] = 0
            self._weight_rows[open_rows:rows] = 0
        self._sums, self._weights = self._sum_rows[:, :rows], self._weight_rows[:rows]

    def row_done(self, rows: int, top: int) -> Dict:
        self._finalize(top)
        self._band = f"band.{rows}.npz"
        with open(os.path.join(self.folder, self._band), "wb") as f:
            np.savez(f, sums=self._sums, weights=self._weights)
        return {"final_rows": self._top, "band": self._band}

    def saved(self) -> None:
        """Remove the bands of older checkpoints (and, once the scene is done, the raw files)."""
        for name in os.listdir(self.folder):
            if name.startswith("band.") and name.endswith(".npz") and name != self._band:
                os.remove(os.path.join(self.folder, name))
        if self._finished:
            for path in self.files.values():
                if os.path.exists(path):
                    os.remove(path)

    def counts(self) -> Dict[str, int]:
        return {"final_rows": self._top}

    def finish(self) -> Dict:
        self._finalize(self.height)
        for stream in self._streams.values():
            stream.close()
        self._streams = {}
        self._sum_rows, self._weight_rows = self._sum_rows[:, :0], self._weight_rows[:0]
        self._sums, self._weights = self._sum_rows, self._weight_rows
        self._write_outputs()
        self._finished = True
        self._band = None
        return {"final_rows": self._top, "band": None, "regions": self.regions}

    # Outputs -----------------------------------------------------------------------------------------

    def _write_outputs(self) -> None:
        for path in self.paths.values():
            os.makedirs(os.path.dirname(path), exist_ok=True)
        grid = {"height": self.height, "width": self.width, "transform": self.transform, "crs": self.crs}
        tiled = os.path.join(self.folder, "classmap.tif")  # the tiled GeoTIFF the other outputs copy
        write_class_geotiff(
            tiled,
            self.files["labels"],
            dtype=self.dtype,
            nodata=self.nodata,
            class_names=self.class_names,
            **grid,
        )
        write_classes_json(self.paths["classes"], self.class_names)
        gdal_copy(tiled, self.paths["png"], "PNG")
        if "confidence" in self.paths:
            scores = os.path.join(self.folder, "confidence.tif")
            write_class_geotiff(
                scores, self.files["scores"], dtype=np.dtype(np.float32), nodata=np.nan, **grid
            )
            self._place(scores, self.paths["confidence"])
        if self.vectorize is not None:
            self.regions = vectorize(
                tiled,
                self.paths["geojsonl"],
                self.paths["geojson"],
                self.class_names,
                image=self.image_id,
                **self.vectorize,
            )
        if self.canvas is not None:
            picture, _ = self.canvas()
            labels = read_reduced(tiled, picture.shape[0], picture.shape[1])
            overlay = draw_class_map(picture, labels, self.class_names, self.nodata)
            cv2.imwrite(self.paths["overlay"], overlay[:, :, ::-1])
        if "tif" in self.paths:
            self._place(tiled, self.paths["tif"])
        else:
            os.remove(tiled)

    def _place(self, tiled: str, path: str) -> None:
        """Move a tiled GeoTIFF of the scene folder to its output path (a COG copy with --cog)."""
        if self.cog:
            gdal_copy(tiled, path, "COG", compress="deflate", blocksize=256)
            os.remove(tiled)
        else:
            os.replace(tiled, path)
