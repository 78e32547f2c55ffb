"""Merged objects kept as their tile pieces in a file, with only boxes and offsets in memory.

Shorthand: T tile side (px). Boxes are integer pixel edges (x0, y0, x1, y1),
end-exclusive, in scene coordinates.

A weak model at threshold 0 chains ragged pieces across the whole scene, and
such objects stay open until the last tile: even bit-packed, their masks
would grow with the scene. Given a :class:`PieceStore`, the merger
(:class:`score.predict.merge.TileMerger`) keeps each merged object as its
pieces (:class:`SpilledInstance`): the packed crops in an append-only file,
their boxes and offsets in memory, a few dozen bytes per tile. The results
are the same as with the masks in memory.
"""

from __future__ import annotations

import array
import os
from typing import Dict, Iterable, List, Sequence, Tuple

import numpy as np

from .masks import RLE_CHUNK_PIXELS, SceneInstance, or_packed, unpack
from .windows import Box, intersect

__all__ = ["PieceStore", "SpilledInstance"]


class PieceStore:
    """Packed tile pieces appended to a file and read back by offset: where merged objects keep their masks.

    A piece is a tile instance's packed crop (at most T x T / 8 bytes). The
    file is append-only, so its length is a checkpoint: the scene engine cuts
    it back to the length its manifest recorded before a scene resumes. Pieces
    are never rewritten, also those of objects already written out; the file
    is removed with the scene's other temporary files.
    """

    def __init__(self, path: str):
        """
        Args:
            path: the file (created when missing; its content is kept).
        """
        self.path = path
        # Unbuffered: a piece is readable (os.pread) as soon as it is appended.
        self._file = open(path, "a+b", buffering=0)
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
            ix0, iy0, ix1, iy1 = intersect((px0, py0, px1, py1), region)
            if ix0 < ix1 and iy0 < iy1:
                block = unpack(bits, iy0 - py0, iy1 - py0, ix0 - px0, ix1 - px0)
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
            or_packed(bits, piece, box[2] - box[0], dx + box[0] - x0, dy + box[1] - y0)

    @property
    def area(self) -> int:
        """Number of mask pixels (pieces may overlap: counted on the union, in bands of rows)."""
        h, w = self.shape
        step = max(1, RLE_CHUNK_PIXELS // max(w, 1))
        return sum(int(np.count_nonzero(self._block(r, min(r + step, h), 0, w))) for r in range(0, h, step))
