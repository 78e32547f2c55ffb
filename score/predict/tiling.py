"""Sliding-window inference on scenes far larger than the model's input (aerial scenes of 10^4 px a side).

Shorthand: T tile side (px), O overlap of neighbouring tiles (px), R
instances of one tile, H x W the scene. Boxes are integer pixel edges
(x0, y0, x1, y1), end-exclusive, in scene coordinates.

The scene is cut into T x T windows (row-major, stride T - O; the last
window of a row or column is moved back so that it ends at the scene border
instead of being padded). Each window is read on its own (a numpy slice, or
a rasterio window of a GeoTIFF) and goes through the predictor. Every
instance is kept as a :class:`SceneInstance`: its tight box and the mask
cropped to that box, never a mask of the whole scene, so memory grows with
the tile and with the objects, not with the scene. The crop is kept
bit-packed (``np.packbits`` along rows: 8 pixels a byte, exact), and the
merger, the RLE encoder and the region reads unpack only bands of rows or
columns: an object may be as large as the scene (a random model at
threshold 0 chains ragged pieces across every border), and ragged masks
compress badly as run lengths but always 8x as bits.

:class:`TileMerger` joins the pieces of an object that tile borders cut, and
the duplicates that two overlapping tiles both see. Two instances of the same
class from different tiles are one object when

* **overlap**: on the region both tiles saw (the instance's window
  intersected with the windows the other instance came from), the two masks
  cover each other: |A n B| / min(|A|, |B|) >= ``match_threshold``
  (intersection over the smaller mask, so that a piece cut by one tile's
  border still matches the whole object seen by the other tile); or
* **contact**: one mask reaches the border of a window it came from, and the
  other continues it on the pixel line just beyond that border:
  contacts / min(pixels of A on the border line, pixels of B on the line
  beyond) >= ``match_threshold``. This joins pieces when tiles do not overlap
  (O = 0) or when an object is cut by both tiles' borders.

Only pieces of different tiles merge, and a merged object never holds two
instances of one tile, neither directly nor through a chain of tiles: a new
piece takes its matches best first and skips any that shares a tile with
what it has already joined. A match is replaced by the union of the masks
(box = union of boxes) with the higher score. An
instance whose box ends above the current row of tiles can match nothing
any more and leaves the working set, which keeps the pairwise checks to the
neighbourhood of the current tile. The ratios of a tile are computed held
instance by held instance against all of the tile's pieces, so that each
held instance's reads (its mask on the tile and on the border lines of its
windows) are made once per tile, not once per piece.

Given a :class:`PieceStore`, the merger keeps each merged object as its
pieces (:class:`SpilledInstance`): the packed crops in a file, their boxes and
offsets in memory. A weak model at threshold 0 chains ragged pieces across
the whole scene, and such objects stay open until the last tile; as pieces
they cost a few dozen bytes per tile instead of their packed masks. The
results are the same as with the masks in memory.
"""

from __future__ import annotations

import array
import functools
import logging
import os
from typing import Callable, Dict, Iterable, List, Optional, Protocol, Sequence, Tuple, Union

import numpy as np
import torch
from detectron2.structures import Instances
from tqdm import tqdm

__all__ = [
    "BAND_PIXELS",
    "ArrayReader",
    "PieceStore",
    "SceneInstance",
    "SceneReader",
    "SpilledInstance",
    "TileMerger",
    "instances_to_scene",
    "tile_windows",
    "tiled_inference",
]

logger = logging.getLogger(__name__)

Box = Tuple[int, int, int, int]
# Crop pixels unpacked at once (run-length encoding, unions): bounds the dense bool band in memory.
# A ragged chunk's runs cost about 10 bytes a pixel as numbers while encoded: the RLE of a
# 12000 x 4480 px ragged object peaked at +56 MiB with 2^22, +22 MiB with 2^20, in the same time.
_RLE_CHUNK_PIXELS = 1 << 20
# Objects whose box holds more pixels than this have their outline (GeoJSON, score/geo.py) and
# overlay contours (score/predictor.py) made from bands of at most this many pixels, never from
# the whole mask (a weak model at threshold 0 chains ragged objects as large as the scene).
BAND_PIXELS = 1 << 22


class SceneReader(Protocol):
    """What tiled inference needs from a scene: its size and windows of it as (h, w, 3) uint8."""

    height: int
    width: int

    def read(self, window: Box) -> np.ndarray: ...


class ArrayReader:
    """A scene already in memory: windows are numpy slices (views, no copy)."""

    def __init__(self, image: np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) image, got shape {image.shape}")
        self.image = image
        self.height, self.width = image.shape[:2]

    def read(self, window: Box) -> np.ndarray:
        x0, y0, x1, y1 = window
        return self.image[y0:y1, x0:x1]


class SceneInstance:
    """One detected object in scene coordinates: class, score, tight box and the mask cropped to it.

    The crop is stored bit-packed: h x w pixels in h x ceil(w / 8) bytes
    (``np.packbits`` of each row, zero padding bits), so that an object as
    large as the scene costs 1 bit a pixel; :attr:`mask` unpacks it, and
    :meth:`region` unpacks only the rows and bytes it reads.

    Attributes:
        category: index of the class in the vocabulary.
        score: detection score in [0, 1].
        box: (x0, y0, x1, y1) pixel edges, end-exclusive: the tight box of the mask.
        bits: uint8 (y1 - y0, ceil((x1 - x0) / 8)), the packed rows of the mask.
        windows: the tile windows the instance was seen in (for merging).
    """

    __slots__ = ("category", "score", "box", "bits", "windows")

    def __init__(
        self,
        category: int,
        score: float,
        box: Box,
        mask: np.ndarray,
        windows: Optional[List[Box]] = None,
    ):
        """
        Args:
            category, score, box, windows: see the class attributes.
            mask: bool (y1 - y0, x1 - x0), the mask cropped to ``box``.
        """
        shape = (box[3] - box[1], box[2] - box[0])
        if mask.shape != shape:
            raise ValueError(f"mask of shape {mask.shape} for box {box} (expected {shape})")
        self._set(category, score, box, np.packbits(mask.astype(bool, copy=False), axis=1), windows)

    def _set(self, category: int, score: float, box: Box, bits: np.ndarray, windows: Optional[List[Box]]):
        self.category, self.score, self.box, self.bits = category, score, tuple(box), bits
        self.windows = list(windows) if windows is not None else []

    @classmethod
    def from_bits(
        cls, category: int, score: float, box: Box, bits: np.ndarray, windows: Optional[List[Box]] = None
    ) -> SceneInstance:
        """An instance from an already packed crop (``bits`` as the attribute, zero padding bits)."""
        inst = cls.__new__(cls)
        inst._set(category, score, box, bits, windows)
        return inst

    @property
    def shape(self) -> Tuple[int, int]:
        """(h, w) of the crop."""
        return self.box[3] - self.box[1], self.box[2] - self.box[0]

    @property
    def mask(self) -> np.ndarray:
        """The crop unpacked: bool (y1 - y0, x1 - x0) (a new array; for whole-mask consumers)."""
        return self._block(0, self.shape[0], 0, self.shape[1])

    def _block(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        """Crop rows [r0, r1) x columns [c0, c1), unpacked: bool (r1 - r0, c1 - c0)."""
        return _unpack(self.bits, r0, r1, c0, c1)

    def windows_near(self, box: Box) -> List[Box]:
        """The windows of :attr:`windows` that overlap or touch ``box``."""
        return [w for w in self.windows if _near(w, box)]

    def has_window(self, window: Box) -> bool:
        """Whether the instance holds a piece of ``window``."""
        return window in self.windows

    @property
    def window_count(self) -> int:
        return len(self.windows)

    def window_array(self) -> np.ndarray:
        """:attr:`windows` as an int array (n, 4)."""
        return np.asarray(self.windows, dtype=np.int64).reshape(-1, 4)

    @property
    def area(self) -> int:
        """Number of mask pixels."""
        return int(_POPCOUNT[self.bits].sum(dtype=np.int64))

    def region(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """The mask on the scene region [y0, y1) x [x0, x1): bool (y1 - y0, x1 - x0), False off the box."""
        out = np.zeros((max(y1 - y0, 0), max(x1 - x0, 0)), dtype=bool)
        bx0, by0, bx1, by1 = self.box
        ix0, iy0, ix1, iy1 = max(x0, bx0), max(y0, by0), min(x1, bx1), min(y1, by1)
        if ix0 < ix1 and iy0 < iy1:
            crop = self._block(iy0 - by0, iy1 - by0, ix0 - bx0, ix1 - bx0)
            out[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0] = crop
        return out

    def or_into(self, bits: np.ndarray, dx: int, dy: int) -> None:
        """OR this mask into packed rows ``bits`` (of a larger box) at column ``dx``, row ``dy`` of that box.

        A byte-aligned ``dx`` ORs the bytes as they are; otherwise bands of
        rows are unpacked, moved by ``dx % 8`` bits and packed again.
        """
        _or_packed(bits, self.bits, self.shape[1], dx, dy)

    def bbox_xywh(self) -> List[float]:
        """COCO box [x, y, width, height] of the mask (pixel edges)."""
        x0, y0, x1, y1 = self.box
        return [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]

    def to_coco_rle(self, height: int, width: int) -> dict:
        """COCO compressed RLE of the mask in an H x W image, built from the crop (no H x W array).

        COCO RLE counts alternate runs of 0 and 1 over the column-major
        flattening of the image. Runs of 1 are found column by column in
        chunks of the crop and encoded chunk by chunk (memory bounded by the
        chunk, not by the mask area or its number of runs); in the
        flattening a crop pixel (row, col) sits at (x0 + col) * H + (y0 + row).
        """
        return {"size": [height, width], "counts": self._rle_counts(height, width, *self.box[:2])}

    def crop_rle(self) -> dict:
        """COCO compressed RLE of the crop alone (size [h, w]), as ``mask_util.encode`` of :attr:`mask`."""
        h, w = self.shape
        return {"size": [h, w], "counts": self._rle_counts(h, w, 0, 0)}

    def _rle_counts(self, height: int, width: int, x0: int, y0: int) -> str:
        """The compressed COCO counts string of the crop placed at (x0, y0) in an H x W image."""
        h, w = self.shape
        step = max(1, _RLE_CHUNK_PIXELS // max(h, 1))
        encoder = _RleEncoder(height * width)
        for c in range(0, w, step):
            columns = np.zeros((min(step, w - c), h + 2), dtype=np.int8)
            columns[:, 1:-1] = self._block(0, h, c, min(c + step, w)).T
            edges = np.diff(columns, axis=1)  # +1 where a run of 1 starts, -1 after it ends
            col, row = np.nonzero(edges == 1)
            starts = (col + x0 + c).astype(np.int64) * height + row + y0
            col, row = np.nonzero(edges == -1)
            encoder.add(starts, (col + x0 + c).astype(np.int64) * height + row + y0)
        return encoder.finish()

    def to_full_mask(self, height: int, width: int) -> np.ndarray:
        """The mask in an H x W image (for small images and tests; tiled scenes should keep the crop)."""
        return self.region(0, 0, width, height)


def _unpack(bits: np.ndarray, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    """Rows [r0, r1) x columns [c0, c1) of packed rows ``bits``, unpacked: bool (r1 - r0, c1 - c0)."""
    b0 = c0 // 8
    block = np.unpackbits(bits[r0:r1, b0 : -(-c1 // 8)], axis=1)
    return block[:, c0 - 8 * b0 : c1 - 8 * b0].view(bool)


def _or_packed(bits: np.ndarray, source: np.ndarray, width: int, dx: int, dy: int) -> None:
    """OR packed rows ``source`` (``width`` px) into packed rows ``bits`` at column ``dx``, row ``dy``."""
    h = source.shape[0]
    b0, shift = divmod(dx, 8)
    if shift == 0:
        bits[dy : dy + h, b0 : b0 + source.shape[1]] |= source
        return
    step = max(1, _RLE_CHUNK_PIXELS // max(width, 1))
    packed_width = -(-(width + shift) // 8)
    for r in range(0, h, step):
        rows = np.zeros((min(step, h - r), width + shift), dtype=np.uint8)
        rows[:, shift:] = np.unpackbits(source[r : r + step], axis=1, count=width)
        bits[dy + r : dy + r + len(rows), b0 : b0 + packed_width] |= np.packbits(rows, axis=1)


# Set bits of each byte value, for counting mask pixels in packed rows.
_POPCOUNT = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).sum(axis=1).astype(np.uint8)


def _encode_counts(values: np.ndarray) -> bytes:
    """pycocotools' ``rleToString`` for counts already differenced: 5 bits a character, least
    significant first, 0x20 when more follow, offset by 48 ("0")."""
    chars = np.zeros((values.size, 14), dtype=np.uint8)  # 14 x 5 bits hold any int64
    x, more = values.astype(np.int64), np.ones(values.size, dtype=bool)
    for k in range(chars.shape[1]):
        if not more.any():
            break
        c = x & 0x1F
        x = x >> 5  # arithmetic, as C's on a long
        follows = np.where(c & 0x10, x != -1, x != 0)
        chars[more, k] = (c | np.where(follows, 0x20, 0))[more] + 48
        more &= follows
    return chars[chars > 0].tobytes()


class _RleEncoder:
    """COCO compressed counts built from runs of 1 given in order, chunk by chunk.

    Runs are (start, end) positions in the column-major flattening, end
    exclusive; a run that ends where the next starts (the bottom of a column
    and the top of the next) is one run, also across chunks. The counts are
    differenced (count i minus count i - 2, from i = 3) and encoded as
    pycocotools does, so only a chunk's runs are ever held as numbers.
    """

    def __init__(self, size: int):
        self.size = size
        self._parts: List[bytes] = []
        self._pending: Optional[Tuple[int, int]] = None  # the last run: the next chunk may continue it
        self._end = 0  # end of the last run encoded
        self._count = 0  # counts encoded
        self._last = [0, 0]  # the last two counts encoded

    def add(self, starts: np.ndarray, ends: np.ndarray) -> None:
        if starts.size == 0:
            return
        joined = starts[1:] == ends[:-1]
        starts, ends = starts[np.r_[True, ~joined]], ends[np.r_[~joined, True]]
        if self._pending is not None:
            if starts[0] == self._pending[1]:
                starts = starts.copy()
                starts[0] = self._pending[0]
            else:
                starts, ends = np.r_[self._pending[0], starts], np.r_[self._pending[1], ends]
        self._pending = (int(starts[-1]), int(ends[-1]))
        self._encode(starts[:-1], ends[:-1])

    def _encode(self, starts: np.ndarray, ends: np.ndarray, tail: Sequence[int] = ()) -> None:
        counts = np.empty(2 * starts.size + len(tail), dtype=np.int64)
        counts[0 : 2 * starts.size : 2] = starts - np.r_[self._end, ends[:-1]]
        counts[1 : 2 * starts.size : 2] = ends - starts
        counts[2 * starts.size :] = tail
        if starts.size:
            self._end = int(ends[-1])
        if counts.size == 0:
            return
        both = np.r_[self._last, counts]
        deltas = counts.copy()
        first = max(0, 3 - self._count)  # counts 0, 1 and 2 are written as they are
        deltas[first:] -= both[first : first + counts.size - first]
        self._parts.append(_encode_counts(deltas))
        self._last = both[-2:].tolist()
        self._count += counts.size

    def finish(self) -> str:
        if self._pending is None:
            self._encode(np.zeros(0, np.int64), np.zeros(0, np.int64), [self.size])
        else:
            start, end = self._pending
            # pycocotools ends the counts with the last run: no empty run of 0 after a mask filling the end.
            tail = [self.size - end] if end < self.size else []
            self._encode(np.array([start]), np.array([end]), tail)
        return b"".join(self._parts).decode("ascii")


class PieceStore:
    """Packed tile pieces appended to a file and read back by offset: where merged objects keep their masks.

    A piece is a tile instance's packed crop (at most T x T / 8 bytes). The
    file is append-only, so its length is a checkpoint: a resumed scene cuts
    it back to the length its manifest recorded. Pieces are never rewritten,
    also those of objects already written out; the file is removed with the
    scene's other temporary files.
    """

    def __init__(self, path: str, length: Optional[int] = None):
        """
        Args:
            path: the file (created when missing).
            length: cut the file back to this many bytes (a checkpoint); None keeps it whole.
        """
        self.path = path
        # Unbuffered: a piece is readable (os.pread) as soon as it is appended.
        self._file = open(path, "a+b", buffering=0)
        if length is not None:
            if os.path.getsize(path) < length:
                raise ValueError(f"{path} is shorter than {length} bytes")
            os.truncate(path, length)
        self.length = os.path.getsize(path)

    def append(self, bits: np.ndarray) -> int:
        """Store packed rows; their offset in the file."""
        offset = self.length
        data = np.ascontiguousarray(bits, dtype=np.uint8).tobytes()
        self._file.write(data)
        self.length += len(data)
        return offset

    def read(self, offset: int, shape: Tuple[int, int]) -> np.ndarray:
        """The packed rows of ``shape`` (rows, bytes) stored at ``offset`` (read-only)."""
        data = os.pread(self._file.fileno(), shape[0] * shape[1], offset)
        return np.frombuffer(data, dtype=np.uint8).reshape(shape)

    def sync(self) -> None:
        """Make what was appended durable (before a checkpoint records :attr:`length`)."""
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


class _BoxGrid:
    """Boxes in a growing int32 array, bucketed by the G x G cells they touch (edges included).

    An object chained across a scene holds thousands of tile windows and
    pieces, and the merger asks, for every new piece, which of them are next
    to it: the grid answers from the few cells around it. A box costs 16
    bytes and 4 bytes per cell it touches, not Python tuples (which came to
    about 0.7 KB per piece of a chain, 170 MB for the 60 chains of a
    12000 x 12000 px scene at threshold 0).
    """

    def __init__(self, cell: int = 512):
        self.cell = cell
        self.count = 0
        self._boxes = np.empty((8, 4), dtype=np.int32)
        self._cells: Dict[Tuple[int, int], array.array] = {}

    def _keys(self, box: Box) -> Iterable[Tuple[int, int]]:
        g = self.cell
        for cy in range(box[1] // g, box[3] // g + 1):
            for cx in range(box[0] // g, box[2] // g + 1):
                yield cx, cy

    def add(self, box: Box) -> None:
        """Add a box; its index is the count before."""
        if self.count == len(self._boxes):
            self._boxes = np.concatenate([self._boxes, np.empty_like(self._boxes)])
        self._boxes[self.count] = box
        for key in self._keys(box):
            self._cells.setdefault(key, array.array("i")).append(self.count)
        self.count += 1

    def box(self, index: int) -> Box:
        return tuple(self._boxes[index].tolist())

    def boxes(self) -> List[Box]:
        """All boxes, in the order they were added."""
        return [tuple(b) for b in self._boxes[: self.count].tolist()]

    @property
    def array(self) -> np.ndarray:
        """All boxes as int32 (count, 4), in the order they were added (a view: read only)."""
        return self._boxes[: self.count]

    def near(self, box: Box) -> List[int]:
        """Indices of the boxes that overlap or touch ``box``, increasing."""
        found = [self._cells[key] for key in self._keys(box) if key in self._cells]
        if not found:
            return []
        index = np.unique(np.concatenate([np.frombuffer(a, dtype=np.intc) for a in found]))
        b = self._boxes[index]
        near = (b[:, 0] <= box[2]) & (box[0] <= b[:, 2]) & (b[:, 1] <= box[3]) & (box[1] <= b[:, 3])
        return index[near].tolist()

    def __contains__(self, box: Box) -> bool:
        # A box is listed under the cell of its top-left corner (among others): only that cell is read.
        found = self._cells.get((box[0] // self.cell, box[1] // self.cell))
        if found is None:
            return False
        index = np.frombuffer(found, dtype=np.intc)
        return bool((self._boxes[index] == np.asarray(box, dtype=np.int32)).all(axis=1).any())


class SpilledInstance(SceneInstance):
    """A merged object whose mask is the union of tile pieces kept in a :class:`PieceStore`.

    Only the pieces' boxes and offsets are in memory (and the windows, as for
    any instance), in arrays; reads unpack the pieces that meet the region
    read. A merged object holds at most one piece per tile, so an object
    chained across a whole scene costs a few dozen bytes per tile here
    instead of its packed mask (18 MB for 12000 x 12000 px). :attr:`bits`
    builds the packed union, :attr:`windows` and :attr:`pieces` lists, on demand.
    """

    __slots__ = ("store", "_pieces", "_offsets", "_windows")

    def __init__(
        self,
        category: int,
        score: float,
        box: Box,
        windows: Sequence[Box],
        pieces: Sequence[Tuple[Box, int]],
        store: PieceStore,
    ):
        """
        Args:
            category, score, box, windows: see :class:`SceneInstance`.
            pieces: (box, offset) of each piece: its tight box (inside ``box``) and where
                its packed crop is in ``store``.
            store: where the pieces are.
        """
        self.category, self.score, self.box, self.store = category, score, tuple(box), store
        self._windows, self._pieces, self._offsets = _BoxGrid(), _BoxGrid(), array.array("q")
        self.extend(windows, pieces)

    def extend(self, windows: Iterable[Box], pieces: Iterable[Tuple[Box, int]]) -> None:
        """Add windows (those already held are skipped) and pieces; the box is not changed."""
        for window in windows:
            if window not in self._windows:
                self._windows.add(window)
        for box, offset in pieces:
            self._pieces.add(box)
            self._offsets.append(offset)

    @property
    def windows(self) -> List[Box]:
        return self._windows.boxes()

    @property
    def window_count(self) -> int:
        return self._windows.count

    def window_array(self) -> np.ndarray:
        return self._windows.array

    @property
    def pieces(self) -> List[Tuple[Box, int]]:
        """(box, offset) of each piece, in the order they were added."""
        return list(zip(self._pieces.boxes(), self._offsets))

    def windows_near(self, box: Box) -> List[Box]:
        return [self._windows.box(i) for i in self._windows.near(box)]

    def has_window(self, window: Box) -> bool:
        return window in self._windows

    def _piece_bits(self, index: int) -> Tuple[Box, np.ndarray]:
        box = self._pieces.box(index)
        shape = (box[3] - box[1], -(-(box[2] - box[0]) // 8))
        return box, self.store.read(self._offsets[index], shape)

    def _block(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        x0, y0 = self.box[:2]
        region = (x0 + c0, y0 + r0, x0 + c1, y0 + r1)
        out = np.zeros((max(r1 - r0, 0), max(c1 - c0, 0)), dtype=bool)
        # near() also finds pieces that only touch the region (an empty intersection, skipped).
        for i in self._pieces.near(region):
            (px0, py0, px1, py1), bits = self._piece_bits(i)
            ix0, iy0, ix1, iy1 = _intersect((px0, py0, px1, py1), region)
            if ix0 < ix1 and iy0 < iy1:
                block = _unpack(bits, iy0 - py0, iy1 - py0, ix0 - px0, ix1 - px0)
                out[iy0 - region[1] : iy1 - region[1], ix0 - region[0] : ix1 - region[0]] |= block
        return out

    @property
    def bits(self) -> np.ndarray:
        """The packed rows of the whole mask (built from the pieces; (h, ceil(w / 8)) bytes)."""
        h, w = self.shape
        bits = np.zeros((h, -(-w // 8)), dtype=np.uint8)
        self.or_into(bits, 0, 0)
        return bits

    def or_into(self, bits: np.ndarray, dx: int, dy: int) -> None:
        x0, y0 = self.box[:2]
        for i in range(self._pieces.count):
            box, piece = self._piece_bits(i)
            _or_packed(bits, piece, box[2] - box[0], dx + box[0] - x0, dy + box[1] - y0)

    @property
    def area(self) -> int:
        """Number of mask pixels (pieces may overlap: counted on the union, in bands of rows)."""
        h, w = self.shape
        step = max(1, _RLE_CHUNK_PIXELS // max(w, 1))
        return sum(int(np.count_nonzero(self._block(r, min(r + step, h), 0, w))) for r in range(0, h, step))


def tile_windows(height: int, width: int, tile_size: int, overlap: int) -> List[Box]:
    """Row-major windows (x0, y0, x1, y1) of side ``tile_size`` covering an H x W scene.

    Neighbours overlap by at least ``overlap`` px; the last window of each row
    and column ends at the scene border (moved back, not padded), so all
    windows are T x T unless the scene itself is smaller than T.
    """
    if tile_size <= 0:
        raise ValueError(f"tile size must be positive, got {tile_size}")
    if not 0 <= overlap < tile_size:
        raise ValueError(f"tile overlap must be in [0, tile size {tile_size}), got {overlap}")

    def starts(length: int) -> List[int]:
        if length <= tile_size:
            return [0]
        positions = list(range(0, length - tile_size, tile_size - overlap))
        return positions + [length - tile_size]

    return [
        (x, y, min(x + tile_size, width), min(y + tile_size, height))
        for y in starts(height)
        for x in starts(width)
    ]


def instances_to_scene(
    instances: Instances, window: Box, score_threshold: float = 0.0
) -> List[SceneInstance]:
    """Predictions on one window (masks (R, h, w) of the window) -> scene instances with cropped masks.

    Instances below ``score_threshold`` and empty masks are dropped.
    """
    x0, y0, _, _ = window
    scores = instances.scores.detach().cpu()
    keep = torch.nonzero(scores >= score_threshold).flatten()
    if keep.numel() == 0:
        return []
    masks = instances.pred_masks[keep].detach().cpu().bool().numpy()
    classes = instances.pred_classes[keep].cpu().tolist()
    scores = scores[keep].tolist()
    result = []
    for mask, category, score in zip(masks, classes, scores):
        rows = np.flatnonzero(mask.any(axis=1))
        if rows.size == 0:
            continue
        cols = np.flatnonzero(mask.any(axis=0))
        r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        result.append(
            SceneInstance(
                category=int(category),
                score=float(score),
                box=(x0 + c0, y0 + r0, x0 + c1, y0 + r1),
                mask=mask[r0:r1, c0:c1],
                windows=[window],
            )
        )
    return result


def _intersect(a: Box, b: Box) -> Box:
    return max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])


def _hull(boxes: Sequence[Box]) -> Box:
    return (
        min(b[0] for b in boxes),
        min(b[1] for b in boxes),
        max(b[2] for b in boxes),
        max(b[3] for b in boxes),
    )


def _near(a: Box, b: Box) -> bool:
    """Boxes that overlap or touch (share an edge or a corner)."""
    return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]


def _ratio(common: int, a: int, b: int) -> float:
    smaller = min(a, b)
    return common / smaller if smaller > 0 else 0.0


def _overlap_ratio(a: _Remembered, b: _Remembered, window: Box) -> float:
    """|A n B| / min(|A|, |B|) on the part of ``window`` (b's tile) that a's other tiles also saw."""
    # Both masks restricted to b's tile lie in this region, which is at most T x T.
    region = _intersect(window, _hull([a.box, b.box]))
    if region[0] >= region[2] or region[1] >= region[3]:
        return 0.0
    seen, a_seen, a_count = a.seen(region, window)
    if a_count == 0:  # also when a's other tiles saw none of the region
        return 0.0
    # b is empty off its box: counted on its box (inside the region), not on the whole region.
    x0, y0, x1, y1 = _intersect(b.box, region)
    if x0 >= x1 or y0 >= y1:
        return 0.0
    b_mask = b.region(x0, y0, x1, y1)
    rows, cols = slice(y0 - region[1], y1 - region[1]), slice(x0 - region[0], x1 - region[0])
    common = np.count_nonzero(a_seen[rows, cols] & b_mask)
    return _ratio(common, a_count, np.count_nonzero(b_mask & seen[rows, cols]))


@functools.lru_cache(maxsize=1 << 12)
def _sides(window: Box) -> Tuple[Tuple[Box, Box], ...]:
    """(line inside the window, line just outside it) for its four sides: right, left, bottom, top."""
    x0, y0, x1, y1 = window
    return (
        ((x1 - 1, y0, x1, y1), (x1, y0, x1 + 1, y1)),
        ((x0, y0, x0 + 1, y1), (x0 - 1, y0, x0, y1)),
        ((x0, y1 - 1, x1, y1), (x0, y1, x1, y1 + 1)),
        ((x0, y0, x1, y0 + 1), (x0, y0 - 1, x1, y0)),
    )


def _contact_ratio(a: _Remembered, b: _Remembered, windows: Iterable[Box]) -> float:
    """Best contact ratio of a's pixels on a border line of one of ``windows`` with b's beyond it."""
    best = 0.0
    a_box, b_box = a.box, b.box
    for window in windows:
        for inner, outer in _sides(window):
            if not (_near(a_box, inner) and _near(b_box, outer)):
                continue
            # A side without pixels on either line has ratio 0: the other line is not read.
            a_line, a_count = a.line(inner)
            if a_count == 0:
                continue
            b_line, b_count = b.line(outer)
            if b_count == 0:
                continue
            best = max(best, _ratio(np.count_nonzero(a_line & b_line), a_count, b_count))
    return best


class _Remembered:
    """An instance as the merger compares it with the pieces of one tile: its reads are kept.

    A held object is compared with every piece of the new tile on the same
    regions (the tile, the border lines of its windows next to the tile), and a
    new piece with every held object on the same border lines; each read is
    made once. Reads only: the instance must not change while the view is in use.
    """

    __slots__ = ("inst", "_crop", "_seen", "_lines")

    def __init__(self, inst: SceneInstance, keep_crop: bool = False):
        """
        Args:
            inst: the instance read.
            keep_crop: unpack its crop once and read regions from it (for the pieces
                of the new tile: at most T x T bytes each, as the tile's masks were).
        """
        self.inst = inst
        self._crop: Optional[np.ndarray] = inst.mask if keep_crop else None
        self._seen: Dict[Tuple[Box, Box], Tuple[np.ndarray, np.ndarray, int]] = {}
        self._lines: Dict[Box, Tuple[np.ndarray, int]] = {}

    def __getattr__(self, name: str):
        return getattr(self.inst, name)

    def region(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """:meth:`SceneInstance.region`."""
        if self._crop is None:
            return self.inst.region(x0, y0, x1, y1)
        bx0, by0, bx1, by1 = self.inst.box
        if bx0 <= x0 < x1 <= bx1 and by0 <= y0 < y1 <= by1:  # inside the crop: a view (reads only)
            return self._crop[y0 - by0 : y1 - by0, x0 - bx0 : x1 - bx0]
        out = np.zeros((max(y1 - y0, 0), max(x1 - x0, 0)), dtype=bool)
        ix0, iy0, ix1, iy1 = max(x0, bx0), max(y0, by0), min(x1, bx1), min(y1, by1)
        if ix0 < ix1 and iy0 < iy1:
            out[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0] = self._crop[
                iy0 - by0 : iy1 - by0, ix0 - bx0 : ix1 - bx0
            ]
        return out

    def seen(self, region: Box, window: Box) -> Tuple[np.ndarray, np.ndarray, int]:
        """On ``region`` (inside ``window``): what the instance's tiles other than ``window`` saw
        (bool (h, w)), the mask there and its pixel count."""
        key = (region, window)
        if key not in self._seen:
            rx0, ry0, rx1, ry1 = region
            seen = np.zeros((ry1 - ry0, rx1 - rx0), dtype=bool)
            for w in self.inst.windows_near(region):
                x0, y0, x1, y1 = _intersect(w, region)
                if w != window and x0 < x1 and y0 < y1:
                    seen[y0 - ry0 : y1 - ry0, x0 - rx0 : x1 - rx0] = True
            masked = self.region(*region) & seen if seen.any() else seen
            self._seen[key] = seen, masked, np.count_nonzero(masked)
        return self._seen[key]

    def line(self, box: Box) -> Tuple[np.ndarray, int]:
        """The mask on a line of pixels ``box`` (one row or one column), flat, and its pixel count."""
        if box not in self._lines:
            line = self.region(*box).ravel()
            self._lines[box] = line, np.count_nonzero(line)
        return self._lines[box]


def _share_a_window(a: SceneInstance, b: SceneInstance) -> bool:
    """Whether two instances hold a piece of one tile (the smaller's windows looked up in the other).

    Two chains across a scene hold thousands of windows each. Chains that
    meet at a tile mostly share its neighbours, the windows they joined last:
    those are looked up first. Otherwise the top-left corners are compared at
    once (``np.isin``), and only the windows whose corner the other also has
    are looked up whole.
    """
    small, large = (a, b) if a.window_count <= b.window_count else (b, a)
    if small.window_count <= 8:
        return any(large.has_window(w) for w in small.windows)
    mine = small.window_array()
    if any(large.has_window(tuple(w)) for w in mine[-4:].tolist()):
        return True
    mine, theirs = mine.astype(np.int64), large.window_array().astype(np.int64)
    # Pixel coordinates are non-negative: x0 << 32 | y0 is one integer per corner.
    corner = np.isin((mine[:, 0] << 32) | mine[:, 1], (theirs[:, 0] << 32) | theirs[:, 1])
    return any(large.has_window(tuple(mine[i].tolist())) for i in np.flatnonzero(corner))


def _union(parts: Sequence[SceneInstance], store: Optional[PieceStore] = None) -> SceneInstance:
    """The pieces as one instance: union of the masks (packed, never dense), box hull, best score.

    With a ``store``, the union is a :class:`SpilledInstance`: the parts' pieces,
    those not yet in the store appended to it. The largest spilled part is
    extended in place (the parts are consumed), so a chain across a scene
    costs each piece once, not a copy of the whole object per new piece.
    """
    if store is not None:
        return _spilled_union(parts, store)
    x0, y0, x1, y1 = _hull([p.box for p in parts])
    bits = np.zeros((y1 - y0, -(-(x1 - x0) // 8)), dtype=np.uint8)
    windows: List[Box] = []  # in order of first appearance, without repeats
    for p in parts:
        p.or_into(bits, p.box[0] - x0, p.box[1] - y0)
        windows.extend(p.windows)
    best = max(parts, key=lambda p: p.score)
    return SceneInstance.from_bits(
        best.category, best.score, (x0, y0, x1, y1), bits, list(dict.fromkeys(windows))
    )


def _spilled_union(parts: Sequence[SceneInstance], store: PieceStore) -> SpilledInstance:
    box = _hull([p.box for p in parts])
    best = max(parts, key=lambda p: p.score)
    spilled = [p for p in parts if isinstance(p, SpilledInstance) and p.store is store]
    base = max(spilled, key=lambda p: p.window_count) if spilled else None
    if base is None:
        base = SpilledInstance(best.category, best.score, box, [], [], store)
    for p in parts:
        if p is base:
            continue
        if isinstance(p, SpilledInstance) and p.store is store:
            base.extend(p.windows, p.pieces)
        else:
            base.extend(p.windows, [(p.box, store.append(p.bits))])
    base.category, base.score, base.box = best.category, best.score, box
    return base


class TileMerger:
    """Collects the instances of the tiles of a scene (row-major) and merges the pieces of each object."""

    def __init__(self, *, match_threshold: float = 0.5, store: Optional[PieceStore] = None):
        """
        Args:
            match_threshold: minimum overlap ratio (intersection over the smaller
                mask, on the region both tiles saw) or contact ratio (along a
                tile border) for two same-class instances to be one object.
            store: where merged objects keep their pieces (:class:`SpilledInstance`);
                None keeps each merged object's packed mask in memory.
        """
        if not 0.0 < match_threshold <= 1.0:
            raise ValueError(f"match_threshold must be in (0, 1], got {match_threshold}")
        self.match_threshold = match_threshold
        self.store = store
        self._active: Dict[int, SceneInstance] = {}
        self._done: List[SceneInstance] = []
        self._next_id = 0

    def _match_ratio(self, a: _Remembered, b: _Remembered, window: Box) -> float:
        """How well ``b`` (new, from ``window``) continues ``a`` across a border; 0 when they cannot merge.

        ``a`` must not already hold a piece of ``window``: two instances of one
        tile are never one object, however they are linked.
        """
        if a.category != b.category or not _near(a.box, b.box) or a.has_window(window):
            return 0.0
        overlap = _overlap_ratio(a, b, window)
        # Only a's windows next to b can carry a contact (an object may span many tiles).
        a_windows = a.windows_near(b.box)
        contact = max(_contact_ratio(a, b, a_windows), _contact_ratio(b, a, [window]))
        return max(overlap, contact)

    def _match_ratios(self, a: _Remembered, instances: Sequence[_Remembered], window: Box) -> List[float]:
        """:meth:`_match_ratio` of ``a`` with each of ``instances`` (all from ``window``)."""
        if a.has_window(window):
            return [0.0] * len(instances)
        return [self._match_ratio(a, b, window) for b in instances]

    def add(self, window: Box, instances: Sequence[SceneInstance]) -> None:
        """Add the instances found in ``window``; windows must come in row-major order."""
        top = window[1]
        # Instances ending above this row of tiles can neither overlap nor touch any later tile.
        finished = [key for key, inst in self._active.items() if inst.box[3] < top]
        for key in finished:
            self._done.append(self._active.pop(key))
        reach = (window[0] - 1, window[1] - 1, window[2] + 1, window[3] + 1)
        candidates = {key: inst for key, inst in self._active.items() if _near(inst.box, reach)}
        # The ratios of every held candidate with every new instance, one candidate at a time: its
        # reads are the same for all the tile's instances (the regions of this tile and the border
        # lines of its windows), so they are made once. A candidate is not changed by the unions
        # below unless it joins one and leaves; what enters during this tile holds a piece of
        # ``window`` and matches nothing more of it (ratio 0).
        views = [_Remembered(inst, keep_crop=True) for inst in instances]
        matrix = {
            key: self._match_ratios(_Remembered(other), views, window) for key, other in candidates.items()
        }
        del views
        for index, inst in enumerate(instances):
            ratios = {key: matrix[key][index] for key in candidates if key in matrix}
            # Best match first; a match is taken only when it shares no tile with what is already joined,
            # so a merged object never holds two pieces of one tile (not even through a chain of tiles).
            ranked = sorted(
                (key for key, r in ratios.items() if r >= self.match_threshold), key=lambda k: -ratios[k]
            )
            group, members = [], [inst]
            for key in ranked:
                if not any(_share_a_window(candidates[key], m) for m in members):
                    group.append(key)
                    members.append(candidates[key])
            if group:
                inst = _union([candidates.pop(key) for key in group] + [inst], self.store)
                for key in group:
                    del self._active[key]
            key = self._next_id
            self._next_id += 1
            self._active[key] = inst
            candidates[key] = inst

    def release(self, top: int) -> List[SceneInstance]:
        """Take out the instances that are final before a row of tiles starting at row ``top``.

        An instance whose box ends above ``top`` can neither overlap nor touch
        a tile of that row or a later one. Called before the first tile of each
        row, this keeps the merger's memory to the pieces that reach the current
        row (the stream writer of :mod:`score.predict.streaming` emits the rest).
        Returned in the order they entered the working set.
        """
        finished = [key for key, inst in self._active.items() if inst.box[3] < top]
        released = self._done + [self._active.pop(key) for key in finished]
        self._done = []
        return released

    @property
    def held(self) -> List[Tuple[int, SceneInstance]]:
        """The working set as (key, instance), in insertion order (its order decides ties in matching)."""
        return list(self._active.items())

    @property
    def next_key(self) -> int:
        return self._next_id

    def restore(self, held: Sequence[Tuple[int, SceneInstance]], next_key: int) -> None:
        """Continue from a saved working set (``held`` and ``next_key`` of an earlier merger)."""
        self._active = dict(held)
        self._done = []
        self._next_id = next_key

    def finish(self) -> List[SceneInstance]:
        """All merged instances, by decreasing score."""
        result = self._done + list(self._active.values())
        self._done, self._active = [], {}
        return sorted(result, key=lambda inst: -inst.score)


def tiled_inference(
    predict: Callable[[np.ndarray], Instances],
    scene: Union[SceneReader, np.ndarray],
    *,
    tile_size: int,
    overlap: int,
    score_threshold: float = 0.0,
    match_threshold: float = 0.5,
    progress: bool = False,
) -> List[SceneInstance]:
    """Predict on every T x T window of ``scene`` and merge the pieces of cut objects.

    Args:
        predict: (h, w, 3) uint8 window -> Instances with ``pred_masks`` (R, h, w),
            ``scores`` and ``pred_classes`` (e.g. a :class:`score.predict.predictor.SCOREPredictor`).
        scene: a :class:`SceneReader` (e.g. :class:`score.predict.geo.GeoTiffReader`) or an (H, W, 3) array.
        tile_size: side T of the windows (px).
        overlap: overlap O of neighbouring windows (px), 0 <= O < T.
        score_threshold: instances below it are dropped in each tile, before merging.
        match_threshold: see :class:`TileMerger`.
        progress: show a tqdm bar over the tiles (tiles done, detections so far before merging, ETA).

    Returns:
        Merged instances in scene coordinates, by decreasing score.
    """
    reader = ArrayReader(scene) if isinstance(scene, np.ndarray) else scene
    windows = tile_windows(reader.height, reader.width, tile_size, overlap)
    merger = TileMerger(match_threshold=match_threshold)
    bar = tqdm(windows, desc="tiles", unit="tile", disable=not progress, leave=False)
    detections = 0
    for window in bar:
        tile = np.ascontiguousarray(reader.read(window))
        pieces = instances_to_scene(predict(tile), window, score_threshold)
        merger.add(window, pieces)
        detections += len(pieces)
        # tqdm shows tiles done / total and the ETA; the count is of tile detections, before merging.
        bar.set_postfix(detections=detections, refresh=False)
    return merger.finish()
