"""The scene engine (score/predict/scene.py, sharding.py) drives any SceneSink: a toy sink plugged in.

The toy sink writes one line per tile it gets and counts its checkpoints; it
knows nothing of instances. Driven through the engine it must see every tile
once, in order, be checkpointed once per row, come back from a kill at the
last finished row with its files cut back, and get the same tiles from the
sharded path.
"""

import score  # noqa: F401, I001  (first: its shims let detectron2 import without detectron2._C)
import json

import numpy as np
import pytest

from score.predict.scene import SceneEngine, predict_tiles
from score.predict.sharding import part_path, predict_tile_part, rank_tiles, stream_from_parts
from score.predict.windows import ArrayReader, tile_windows

SCENE = np.random.default_rng(0).integers(0, 256, (130, 130, 3), dtype=np.uint8)
WINDOWS = tile_windows(130, 130, 40, 10)  # 4 rows of 4 tiles


class ToySink:
    """Records the tiles it gets (a line each in ``toy.jsonl``); its state counts checkpoints."""

    def __init__(self, folder):
        self.files = {"toy": str(folder / "toy.jsonl")}
        self.got, self.saves, self.state, self.complete = [], 0, "unopened", None

    def tile(self, window, output):
        return {"sum": int(output.sum())}

    def encode(self, tile):
        return dict(tile)

    def decode(self, record):
        return {"sum": record["sum"]}

    def open(self, state, complete=False):
        self.state, self.complete = state, complete
        self.checkpoints = state["checkpoints"] if state else 0
        if not complete:
            self._file = open(self.files["toy"], "a", encoding="utf-8")

    def add(self, index, window, tile):
        self.got.append(index)
        self._file.write(json.dumps([index, list(window), tile["sum"]]) + "\n")
        return {"sum": tile["sum"]}

    def row_done(self, rows, top):
        self.checkpoints += 1
        self._file.flush()
        return {"checkpoints": self.checkpoints, "top": top}

    def finish(self):
        self._file.close()
        return {"checkpoints": self.checkpoints, "top": None}

    def saved(self):
        self.saves += 1

    def counts(self):
        return {"tiles": len(self.got)}


def pixel_sum(tile):
    return tile.astype(np.int64)


def open_engine(out, sink=None, **kwargs):
    sink = sink or ToySink(out / "scenes" / "toy")
    key = {"scene": "random", "task": "toy"}
    return SceneEngine(
        str(out), "toy", sink=sink, image_id="toy", height=130, width=130, windows=WINDOWS, key=key, **kwargs
    )


class Interrupt(Exception):
    pass


def killed_after(count):
    calls = [0]

    def predict(tile):
        if calls[0] == count:
            raise Interrupt
        calls[0] += 1
        return pixel_sum(tile)

    return predict


def toy_lines(out):
    return (out / "scenes" / "toy" / "toy.jsonl").read_text().splitlines()


def expected_lines():
    return [
        json.dumps([i, list(w), int(SCENE[w[1] : w[3], w[0] : w[2]].astype(np.int64).sum())])
        for i, w in enumerate(WINDOWS)
    ]


def manifest(out):
    return json.loads((out / "scenes" / "toy" / "manifest.json").read_text())


def test_a_toy_sink_gets_every_tile_in_order_and_a_checkpoint_per_row(tmp_path):
    engine = open_engine(tmp_path)
    sink = engine.sink
    assert engine.rows == [0, 4, 8, 12] and sink.state is None and not sink.complete
    predict_tiles(pixel_sum, ArrayReader(SCENE), engine, progress=False)
    assert sink.got == list(range(16))
    assert toy_lines(tmp_path) == expected_lines()
    final = manifest(tmp_path)
    # The start and rows 1..3 are checkpoints; the sink's state is saved flat in the manifest.
    assert final["complete"] and final["checkpoints"] == 4 and final["top"] is None and sink.saves == 5
    assert final["lengths"]["toy"] == len("".join(line + "\n" for line in expected_lines()))
    progress = [json.loads(line) for line in (tmp_path / "scenes" / "toy" / "progress.jsonl").open()]
    assert [(p["tile"], p["sum"]) for p in progress] == [
        (i, json.loads(l)[2]) for i, l in enumerate(expected_lines())
    ]

    again = open_engine(tmp_path)  # a finished scene: the sink only gets its final state
    assert again.complete and again.sink.complete and again.sink.state["checkpoints"] == 4
    assert again.sink.got == []


@pytest.mark.parametrize("after", [2, 6, 13])
def test_a_killed_toy_scene_resumes_at_the_last_finished_row(tmp_path, after):
    with pytest.raises(Interrupt):
        predict_tiles(killed_after(after), ArrayReader(SCENE), open_engine(tmp_path), progress=False)
    # The tiles of the unfinished row are on disk past the checkpoint (a kill leaves them).
    assert len(toy_lines(tmp_path)) == after
    resumed = open_engine(tmp_path)
    row_start = max(start for start in resumed.rows if start <= after)
    assert resumed.resumed and resumed.start_tile == row_start
    assert resumed.sink.state == {
        "checkpoints": resumed.rows.index(row_start) + 1,
        "top": WINDOWS[row_start][1],
    }
    assert toy_lines(tmp_path) == expected_lines()[:row_start]  # cut back to the checkpoint
    predict_tiles(pixel_sum, ArrayReader(SCENE), resumed, progress=False)
    assert resumed.sink.got == list(range(row_start, 16))
    assert toy_lines(tmp_path) == expected_lines()
    assert manifest(tmp_path)["checkpoints"] == 4


def test_a_toy_scene_sharded_over_rows_equals_one_process(tmp_path):
    key = {"scene": "random", "task": "toy"}
    parts = [part_path(str(tmp_path), "toy", rank, 3) for rank in range(3)]
    for rank, path in enumerate(parts):  # each rank's sink is never opened: only tile() and encode()
        predict_tile_part(
            pixel_sum,
            ArrayReader(SCENE),
            WINDOWS,
            rank_tiles(WINDOWS, rank, 3),
            path,
            key,
            sink=ToySink(tmp_path),
        )
    assert [json.loads(line)["tile"] for line in open(parts[1]).readlines()[1:]] == [4, 5, 6, 7]
    engine = open_engine(tmp_path)
    stream_from_parts(engine, parts)
    assert engine.sink.got == list(range(16)) and engine.complete
    assert toy_lines(tmp_path) == expected_lines()

    # A kill in the merging process: the parts are read again, the tiles before the checkpoint skipped.
    out = tmp_path / "killed"
    with pytest.raises(Interrupt):
        predict_tiles(killed_after(9), ArrayReader(SCENE), open_engine(out), progress=False)
    resumed = open_engine(out)
    stream_from_parts(resumed, parts)
    assert resumed.sink.got == list(range(8, 16))
    assert toy_lines(out) == expected_lines()


def test_a_sink_state_may_not_take_the_engine_members(tmp_path):
    class Clashing(ToySink):
        def row_done(self, rows, top):
            return {"complete": True}

    with pytest.raises(ValueError, match="complete"):
        open_engine(tmp_path, Clashing(tmp_path / "scenes" / "toy"))
