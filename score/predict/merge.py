"""Joining the pieces of objects that tile borders cut: the merger of a scene's tiles.

Shorthand: T tile side (px), O overlap of neighbouring tiles (px), R
instances of one tile. Boxes are integer pixel edges (x0, y0, x1, y1),
end-exclusive, in scene coordinates.

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
(box = union of boxes) with the higher score. An instance whose box ends
above the current row of tiles can match nothing any more and leaves the
working set, which keeps the pairwise checks to the neighbourhood of the
current tile. The ratios of a tile are computed held
instance by held instance against all of the tile's pieces, so that each
held instance's reads (its mask on the tile and on the border lines of its
windows) are made once per tile, not once per piece.

Given a :class:`score.predict.spill.PieceStore`, the merger keeps each merged
object as its pieces (:class:`score.predict.spill.SpilledInstance`), with the
same results as with the masks in memory.

:func:`tiled_inference` runs the window grid (:mod:`score.predict.windows`)
through a predictor and this merger in memory; :mod:`score.predict.instances`
does the same streamed to disk.
"""

from __future__ import annotations

import functools
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from detectron2.structures import Instances
from tqdm import tqdm

from .masks import SceneInstance
from .spill import PieceStore, SpilledInstance
from .windows import ArrayReader, Box, SceneReader, hull, intersect, near, tile_windows

__all__ = ["TileMerger", "instances_to_scene", "tiled_inference"]


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


def _ratio(common: int, a: int, b: int) -> float:
    smaller = min(a, b)
    return common / smaller if smaller > 0 else 0.0


def _overlap_ratio(a: _Remembered, b: _Remembered, window: Box) -> float:
    """|A n B| / min(|A|, |B|) on the part of ``window`` (b's tile) that a's other tiles also saw."""
    # Both masks restricted to b's tile lie in this region, which is at most T x T.
    region = intersect(window, hull([a.box, b.box]))
    if region[0] >= region[2] or region[1] >= region[3]:
        return 0.0
    seen, a_seen, a_count = a.seen(region, window)
    if a_count == 0:  # also when a's other tiles saw none of the region
        return 0.0
    # b is empty off its box: counted on its box (inside the region), not on the whole region.
    x0, y0, x1, y1 = intersect(b.box, region)
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
            if not (near(a_box, inner) and near(b_box, outer)):
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
                x0, y0, x1, y1 = intersect(w, region)
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
    x0, y0, x1, y1 = hull([p.box for p in parts])
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
    box = hull([p.box for p in parts])
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
        if a.category != b.category or not near(a.box, b.box) or a.has_window(window):
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
        candidates = {key: inst for key, inst in self._active.items() if near(inst.box, reach)}
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
        row (the instance sink of :mod:`score.predict.instances` emits the rest).
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
        scene: a :class:`SceneReader` (e.g. a :class:`score.predict.geotiff.GeoTiffReader`)
            or an (H, W, 3) array.
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
