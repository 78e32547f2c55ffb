"""The rows of tiles of one scene shared out over several processes, joined in tile order by one.

Shorthand: k = 0..n-1 the ranks (processes) of a run of n.

Rows are dealt round-robin (:func:`rank_tiles`): rank k predicts the rows
k, k + n, ... and writes each tile's result, as its sink encodes it, to a
line file of its own (:func:`predict_tile_part`), continued after its last
complete tile when a run is resumed. One process then reads the n files
front to back, one tile at a time, and feeds the tiles in order to its
:class:`score.predict.scene.SceneEngine` (:func:`stream_from_parts`), which
writes what one process would have written.
"""

from __future__ import annotations

import json
import os
import time
from typing import Callable, Dict, List, Sequence

import numpy as np
from tqdm import tqdm

from .scene import SceneEngine, SceneSink, read_lines, scene_folder
from .windows import Box, SceneReader, row_starts

__all__ = ["part_path", "predict_tile_part", "rank_tiles", "stream_from_parts"]


def part_path(output: str, stem: str, rank: int, world_size: int) -> str:
    """The file of the tiles predicted by ``rank`` of ``world_size`` for one scene."""
    return os.path.join(scene_folder(output, stem), f"tiles.{rank}-of-{world_size}.jsonl")


def rank_tiles(windows: Sequence[Box], rank: int, world_size: int) -> List[int]:
    """The tiles of the rows ``rank``, ``rank + world_size``, ... (rows dealt round-robin)."""
    starts = row_starts(windows) + [len(windows)]
    return [
        i for row in range(rank, len(starts) - 1, world_size) for i in range(starts[row], starts[row + 1])
    ]


def predict_tile_part(
    predict: Callable,
    reader: SceneReader,
    windows: Sequence[Box],
    tiles: Sequence[int],
    path: str,
    key: Dict,
    *,
    sink: SceneSink,
    progress: bool = False,
) -> None:
    """Predict ``tiles`` of a scene and write their results to ``path``, one line per tile.

    The first line is ``{"key": key}``; a file with the same key is continued
    after its last complete tile. A tile's line is ``{"tile": index, **encoded,
    "seconds": s}``, with ``encoded`` the sink's ``encode`` of its ``tile``
    result (the sink is not opened; the results are added later, in tile order,
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
            window = windows[index]
            tile = sink.tile(window, predict(np.ascontiguousarray(reader.read(window))))
            seconds = round(time.perf_counter() - start, 3)
            f.write(json.dumps({"tile": index, **sink.encode(tile), "seconds": seconds}) + "\n")
            f.flush()


def stream_from_parts(engine: SceneEngine, parts: Sequence[str]) -> None:
    """Feed ``engine`` the tiles of the part files of ``world_size = len(parts)`` ranks, and finish it.

    Rank k's file holds the tiles of :func:`rank_tiles` for k; each file is read
    once, front to back, one tile at a time.
    """
    if engine.complete:
        return
    owner = {i: k for k in range(len(parts)) for i in rank_tiles(engine.windows, k, len(parts))}
    readers = [read_lines(p) for p in parts]
    for reader in readers:
        next(reader)  # the key line (checked by the rank that wrote it)
    for index in range(len(engine.windows)):
        record = json.loads(next(readers[owner[index]]))
        if record["tile"] != index:
            raise ValueError(f"{parts[owner[index]]}: tile {record['tile']} where tile {index} was expected")
        if index < engine.start_tile:
            continue
        engine.add(index, engine.sink.decode(record), seconds=record["seconds"])
    engine.finish()
