"""The semantic task of the scene engine: class scores of overlapping windows blended into a class map.

Shorthand: K classes, H x W the scene, T tile side, O tile overlap (px), rows
of tiles r = 0..R-1, ``top(r)`` and ``bottom(r)`` the first and one past the
last pixel row of the tiles of row r (``top(R)`` = H), S(r) = bottom(r - 1) -
top(r) the pixel rows that row r shares with the rows above (O, or more where
the last row of tiles is moved back to end at the scene border).

:class:`ClassMapSink` is the :class:`score.predict.scene.SceneSink` of
semantic segmentation. Each window's (K, h, w) class probabilities are added to
running sums weighted by :func:`window_weights`: 1 inside, falling linearly
over the O px next to a window border that lies inside the scene (never 0),
so that where windows overlap the scores fade from one into the other and no
seam shows. A pixel is final once no later window covers it: within row r,
once the next window begins to its right, the columns left of that window
are final in the pixel rows above ``top(r + 1)``; those become classes (the
highest blended score; no data where the input has none, see
``reader.valid``, or where the score is below ``min_confidence``) in a
buffer of those rows, which goes to an uncompressed raw file when the row
ends. The same columns of the rows from ``top(r + 1)`` down, which the next
row of tiles adds to, are appended to a *strip* file, column after column;
row r + 1 reads it back, column after column, as its windows move right.
Memory is the sums of one window ((K + 1) x T x T float32) and the classes of
one row of tiles (T x W), whatever the scene; the strip, (K + 1) x S x W
float32, is on disk.

The strip a row of tiles begins with is its checkpoint: the raw files are
engine-tracked (their lengths are in the manifest), so a resumed scene
continues from the last finished row with the strip it had and writes the
same bytes as an uninterrupted one. :meth:`ClassMapSink.finish` then
writes the outputs from the raw files, block by block.

Files under the output folder, for a scene whose output stem is ``S``
(besides the engine's, see :mod:`score.predict.scene`)::

    scenes/S/labels.raw         final rows of classes, (H, W) uint8 or uint16 (removed when done)
    scenes/S/confidence.raw     final rows of the winning score, float32 (--confidence; removed when done)
    scenes/S/strip.<r>.raw      blended sums that row r of tiles begins with, (W, K + 1, S(r)) float32
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
from typing import Callable, Dict, List, Optional, Sequence, Tuple

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
from .windows import Box, row_starts

__all__ = ["ClassMapSink", "draw_class_map", "row_layout", "window_weights"]

logger = logging.getLogger(__name__)

# Pixel rows of a window turned into classes at a time.
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


def row_layout(windows: Sequence[Box], height: int, width: int) -> List[Tuple[int, int, int, int]]:
    """(first tile, last tile, top, bottom) of each row of row-major ``windows`` covering an H x W scene.

    The class map needs what :func:`score.predict.windows.tile_windows` makes:
    the windows of a row span the same pixel rows and go left to right from
    column 0 to W, each beginning inside the one before; the rows go top down
    from row 0 to H, each beginning inside the one above. Anything else is a
    ValueError naming the row.
    """
    starts = row_starts(windows) + [len(windows)]
    rows: List[Tuple[int, int, int, int]] = []
    for first, end in zip(starts, starts[1:]):
        row = windows[first:end]
        top, bottom = row[0][1], row[0][3]
        above = rows[-1] if rows else None
        tiled = (
            all((w[1], w[3]) == (top, bottom) for w in row)
            and row[0][0] == 0
            and row[-1][2] == width
            and all(a[0] < b[0] <= a[2] <= b[2] for a, b in zip(row, row[1:]))
            and (top == 0 if above is None else above[2] < top <= above[3] <= bottom)
            and (end < len(windows) or bottom == height)
        )
        if not tiled:
            raise ValueError(
                f"windows {first}..{end - 1} ({row[0]}...{row[-1]}) do not tile a {height} x {width} px "
                "scene row by row (see score.predict.windows.tile_windows)"
            )
        rows.append((first, end - 1, top, bottom))
    return rows


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
        windows: Sequence[Box],
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
            windows: the tile windows, row-major, as the engine gets them (see :func:`row_layout`).
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
        self.windows = [tuple(w) for w in windows]
        self._rows = row_layout(self.windows, height, width)
        self._row_of = {first: r for r, (first, _, _, _) in enumerate(self._rows)}
        self._streams: Dict[str, object] = {}
        self._top = 0  # rows above are final (in the raw files)
        self._strip: Optional[str] = None  # the strip of the last checkpoint
        # The row of tiles under way: its index, the columns [left, right) whose sums are open.
        self._row: Optional[int] = None
        self._left = self._right = 0
        self._open: Optional[np.ndarray] = None  # (K + 1, h, w) sums and weights of the open columns
        self._labels: Optional[np.ndarray] = None  # (h, W) classes of the row's final pixel rows
        self._best: Optional[np.ndarray] = None  # (h, W) their winning scores (--confidence)
        self._strip_in = self._strip_out = None
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
                if name.startswith("strip.") and name.endswith(".raw"):
                    os.remove(os.path.join(self.folder, name))
        elif "strip" not in state:
            raise ValueError(
                f"{self.folder} holds a partial class map of an older layout, which cannot be continued; "
                "remove the folder to start the scene over"
            )
        else:
            self._top, self._strip = state["final_rows"], state["strip"]
        rows = max(bottom - top for _, _, top, bottom in self._rows)
        self._open = np.zeros(
            (len(self.class_names) + 1, rows, max(x1 - x0 for x0, _, x1, _ in self.windows)), np.float32
        )
        self._labels = np.empty((rows, self.width), self.dtype)
        if "scores" in self.files:
            self._best = np.empty((rows, self.width), np.float32)
        self._streams = {name: open(path, "ab") for name, path in self.files.items()}

    def _strip_path(self, row: int) -> str:
        return os.path.join(self.folder, f"strip.{row}.raw")

    def _next_top(self, row: int) -> int:
        return self._rows[row + 1][2] if row + 1 < len(self._rows) else self.height

    def add(self, index: int, window: Box, tile: np.ndarray) -> Dict:
        if tuple(window) != self.windows[index]:
            raise ValueError(
                f"tile {index} has window {window}; the class map was given {self.windows[index]}"
            )
        if index in self._row_of:
            self._begin_row(self._row_of[index])
        x0, y0, x1, y1 = window
        self._extend(x1)
        weights = window_weights(window, self.height, self.width, self.overlap)
        columns = slice(x0 - self._left, x1 - self._left)
        self._open[:-1, : y1 - y0, columns] += tile.astype(np.float32) * weights
        self._open[-1, : y1 - y0, columns] += weights
        last = self._rows[self._row][1]
        self._settle(self.windows[index + 1][0] if index < last else self.width)
        if index == last:
            self._end_row()
        return {}

    def _begin_row(self, row: int) -> None:
        top = self._rows[row][2]
        if top != self._top:
            raise ValueError(
                f"row {row} of tiles begins at pixel row {top}, but rows above {self._top} are final"
            )
        self._row, self._left, self._right = row, 0, 0
        self._strip_in = open(self._strip_path(row), "rb") if row > 0 else None
        self._strip_out = open(self._strip_path(row + 1), "wb") if row + 1 < len(self._rows) else None

    def _extend(self, right: int) -> None:
        """Open the columns up to ``right``: the sums of the strip in the rows it holds, 0 below."""
        if right <= self._right:
            return
        row = self._row
        carried = self._rows[row - 1][3] - self._rows[row][2] if row > 0 else 0
        new = slice(self._right - self._left, right - self._left)
        self._open[:, :, new] = 0
        if carried:
            shape = (right - self._right, self._open.shape[0], carried)
            data = self._strip_in.read(4 * int(np.prod(shape)))  # float32
            if len(data) != 4 * np.prod(shape):
                raise OSError(f"{self._strip_in.name} is shorter than row {row} of tiles needs")
            strip = np.frombuffer(data, np.float32).reshape(shape)
            self._open[:, :carried, new] = strip.transpose(1, 2, 0)
        self._right = right

    def _settle(self, until: int) -> None:
        """No later window of this row covers the columns left of ``until``: their final pixel rows become
        classes, the rows below go to the next strip, and they leave the open columns."""
        count = until - self._left
        if count <= 0:
            return
        _, _, top, bottom = self._rows[self._row]
        final = self._next_top(self._row) - top
        done = self._open[:, : bottom - top, :count]
        self._classify(done[:, :final], self._left, until, top)
        if self._strip_out is not None:  # column after column: the next row reads it as it moves right
            self._strip_out.write(np.ascontiguousarray(done[:, final:].transpose(2, 0, 1)))
        kept = self._right - until
        for plane in self._open:  # class by class: no copy of all the open sums
            plane[:, :kept] = plane[:, count : count + kept]
        self._left = until

    def _classify(self, sums: np.ndarray, x0: int, x1: int, top: int) -> None:
        """Final (K + 1, rows, x1 - x0) sums and weights of columns x0..x1 from pixel row ``top``: classes."""
        valid = self._valid((x0, top, x1, top + sums.shape[1]))
        for start in range(0, sums.shape[1], _FINAL_ROWS):  # a few rows at a time: small temporaries
            stop = min(sums.shape[1], start + _FINAL_ROWS)
            scores = sums[:-1, start:stop] / sums[-1, start:stop]
            labels = scores.argmax(axis=0).astype(self.dtype)
            best = np.take_along_axis(scores, labels[None].astype(np.int64), 0)[0]
            labels[best < self.min_confidence] = self.nodata
            if valid is not None:
                labels[~valid[start:stop]] = self.nodata
                best[~valid[start:stop]] = np.nan
            self._labels[start:stop, x0:x1] = labels
            if self._best is not None:
                self._best[start:stop, x0:x1] = best

    def _valid(self, window: Box) -> Optional[np.ndarray]:
        """(h, w) bool: where the input has data in ``window`` (None: everywhere)."""
        if self.reader is None or not hasattr(self.reader, "valid"):
            return None
        return np.asarray(self.reader.valid(window), dtype=bool)

    def _end_row(self) -> None:
        """The row's final pixel rows go to the raw files; its strip is complete."""
        final = self._next_top(self._row) - self._rows[self._row][2]
        self._streams["labels"].write(self._labels[:final])
        if self._best is not None:
            self._streams["scores"].write(self._best[:final])
        for stream in self._streams.values():
            stream.flush()
        if self._strip_in is not None:
            self._strip_in.close()
        if self._strip_out is not None:
            self._strip_out.flush()
            os.fsync(self._strip_out.fileno())  # the next checkpoint names it
            self._strip_out.close()
        self._strip_in = self._strip_out = None
        self._top += final

    def row_done(self, rows: int, top: int) -> Dict:
        self._strip = os.path.basename(self._strip_path(rows))
        return {"final_rows": self._top, "strip": self._strip}

    def saved(self) -> None:
        """Remove the strips of older checkpoints (and, once the scene is done, the raw files)."""
        for name in os.listdir(self.folder):
            if name.startswith("strip.") and name.endswith(".raw") and name != self._strip:
                os.remove(os.path.join(self.folder, name))
        if self._finished:
            for path in self.files.values():
                if os.path.exists(path):
                    os.remove(path)

    def counts(self) -> Dict[str, int]:
        return {"final_rows": self._top}

    def finish(self) -> Dict:
        if self._top != self.height:
            raise ValueError(f"{self.image_id}: rows {self._top}.. are not final: not every tile was added")
        for stream in self._streams.values():
            stream.close()
        self._streams = {}
        self._open = self._labels = self._best = None
        self._write_outputs()
        self._finished = True
        self._strip = None
        return {"final_rows": self._top, "strip": None, "regions": self.regions}

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
