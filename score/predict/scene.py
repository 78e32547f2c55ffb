"""The scene engine: the windows of a scene in row order, checkpointed after every row, resumable.

Shorthand: N tiles (windows) of a scene in row-major order, rows of tiles
r = 0..R-1, ``top(r)`` the first pixel row of the tiles of row r.

What a task does with the prediction of a window (merge instances, blend
class probabilities...) is a :class:`SceneSink`; the engine
(:class:`SceneEngine`) knows only the windows, their rows, the manifest and
resuming, so that another task plugs in without touching it. The instance
task is :class:`score.predict.instances.InstanceSink`; :mod:`score.predict.sharding`
shares the rows of a scene out over processes and feeds the engine their
tiles in order.

Before the first tile of row r > 0 the engine writes a checkpoint: the sink
writes out what is final above ``top(r)`` and returns its state, the engine
flushes every file that grows as the scene goes (its own progress file and
the sink's :attr:`SceneSink.files`) and writes the manifest: what the output
is of (the *key*: the scene's content, the model's weights, the vocabulary,
the config and the settings, as digests), the rows done, the byte length of
each of those files, and the sink's state. A scene interrupted at any point
restarts from the last finished row: the files are cut back to the recorded
lengths, the sink continues from its state, and the rest runs exactly as it
would have without the interruption, so the result is the same.

Files of the engine under the output folder, for a scene whose output stem is ``S``::

    scenes/S/manifest.json      key, tiles and rows done, file lengths, the sink's state
    scenes/S/progress.jsonl     one line per tile: index, window, the sink's summary, seconds
    scenes/S/tiles.<k>-of-<n>.jsonl   tiles predicted by rank k of n (sharded rows only)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Protocol, Sequence

import numpy as np
import torch
from tqdm import tqdm

from ..fileio import atomic_write
from .windows import Box, SceneReader, row_starts

__all__ = [
    "MANIFEST_VERSION",
    "SceneEngine",
    "SceneSink",
    "file_digest",
    "key_differences",
    "predict_tiles",
    "read_lines",
    "read_manifest",
    "scene_folder",
    "state_dict_digest",
]

logger = logging.getLogger(__name__)

# 2: merged objects held as pieces in pieces.bin (its length in "lengths").
MANIFEST_VERSION = 2
# Manifest members of the engine; a sink's state may use any other name.
_ENGINE_MEMBERS = (
    "version",
    "key",
    "image_id",
    "file_name",
    "height",
    "width",
    "tiles",
    "rows",
    "rows_done",
    "next_tile",
    "complete",
    "lengths",
)


class SceneSink(Protocol):
    """What a task does with the predictions of a scene's windows; the engine does the rest.

    The engine (:class:`SceneEngine`) gives the sink every window's result in
    row-major order and tells it when a row of windows begins; it owns the
    manifest, the progress file, resuming and the sharding of rows. A sink:

    * :attr:`files`: name -> path of the files it appends to as the scene goes
      (line files of results, a store of pieces...). After :meth:`row_done`
      and :meth:`finish` their content must be flushed to the OS; the engine
      then syncs them, records their byte lengths in the manifest, cuts them
      back to those lengths before a resumed :meth:`open`, and removes them
      when a scene starts over. A file that does not exist has length 0.
      Names "progress" and "manifest" are the engine's.
    * :meth:`tile` turns the model's output on one window into what :meth:`add`
      takes. It runs where the window was predicted, which under sharded rows is
      another process whose sink is never opened; :meth:`encode` and
      :meth:`decode` carry its result through a JSON line of a part file
      (members "tile" and "seconds" are the engine's).
    * :meth:`open` is called once before any tile (state None: start over),
      :meth:`add` once per tile from the engine's ``start_tile`` on,
      :meth:`row_done` before the first tile of every row but the first,
      :meth:`finish` after the last tile; the state these two return is
      JSON-ready and saved in the manifest (flat: its members must not be the
      engine's, see ``_ENGINE_MEMBERS``), and :meth:`saved` is called once the
      manifest holding it is on disk.
    * :meth:`counts` are the running totals shown on the progress bar.

    The sink chooses where its outputs go; its checkpoint files (anything a
    state names) usually live in :func:`scene_folder`.
    """

    files: Mapping[str, str]

    def tile(self, window: Box, output: Any) -> Any:
        """What :meth:`add` takes, from the model's output on ``window`` (without :meth:`open`)."""

    def encode(self, tile: Any) -> Dict:
        """A :meth:`tile` result as a JSON-ready dict (without :meth:`open`)."""

    def decode(self, record: Dict) -> Any:
        """The :meth:`tile` result of an :meth:`encode` record."""

    def open(self, state: Optional[Dict], complete: bool = False) -> None:
        """Get ready for the first tile to come.

        Args:
            state: None to start the scene over (the engine has removed :attr:`files`;
                remove your other leftovers), else the state returned by the last
                :meth:`row_done` (or :meth:`finish`), with :attr:`files` cut back to
                the lengths recorded with it.
            complete: the scene was finished by an earlier run with the same key and
                ``state`` is what :meth:`finish` returned: nothing will be added, only
                read what you report.
        """

    def add(self, index: int, window: Box, tile: Any) -> Dict:
        """Tile ``index`` (its window, its :meth:`tile` result); JSON-ready members for its progress line."""

    def row_done(self, rows: int, top: int) -> Dict:
        """``rows`` rows of tiles are done and the next begins at pixel row ``top``: write out what is final
        (nothing of a later tile can change it) and return the state to continue from."""

    def finish(self) -> Dict:
        """The last tile was added: write the final outputs, close the files and return the final state."""

    def saved(self) -> None:
        """The manifest now holds the state last returned: remove what only older states needed."""

    def counts(self) -> Dict[str, int]:
        """Running totals for the progress bar (e.g. results written so far)."""


def scene_folder(output: str, stem: str) -> str:
    """The folder of a scene's manifest, progress and checkpoint files: ``<output>/scenes/<stem>``."""
    return os.path.join(output, "scenes", stem)


def read_manifest(output: str, stem: str) -> Optional[Dict]:
    """The manifest of a scene's output (read-only), None when there is none or it cannot be read."""
    path = os.path.join(scene_folder(output, stem), "manifest.json")
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and isinstance(manifest.get("key"), dict) else None


def key_differences(old: Dict, new: Dict) -> list:
    """The members of two keys that differ, sorted."""
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


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


def read_lines(path: str) -> Iterator[str]:
    """The complete lines of a file (without the newline), one at a time."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.endswith("\n"):
                yield line[:-1]


def _sync(path: str) -> int:
    """Make a file's content durable; its length (0 when it does not exist)."""
    if not os.path.isfile(path):
        return 0
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return os.path.getsize(path)


class SceneEngine:
    """Feeds the tiles of one scene to a :class:`SceneSink` and checkpoints it as rows of tiles finish.

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
        sink: SceneSink,
        image_id: str,
        height: int,
        width: int,
        windows: Sequence[Box],
        key: Dict,
        resume: str = "auto",
        overwrite: bool = False,
        file_name: Optional[str] = None,
    ):
        """
        Args:
            output: the output folder.
            stem: the scene's file stem under it (see the module docstring).
            sink: what is done with the tiles.
            image_id: the scene's name in logs and in the manifest.
            height, width: scene size (px).
            windows: the tile windows, row-major (one window for an untiled image).
            key: JSON-ready description of what the output is of; a partial output
                is resumed only when its key is equal.
            resume: "auto" (continue a partial output with the same key, start over
                otherwise), "always" (a partial output with another key is an
                error) or "never" (always start over).
            overwrite: a complete output with another key is started over; without it
                that is an error (whatever ``resume`` says): finished results are never
                replaced unasked.
            file_name: the scene's file, recorded in the manifest.
        """
        if resume not in ("auto", "always", "never"):
            raise ValueError(f"resume must be 'auto', 'always' or 'never', not {resume!r}")
        self.sink = sink
        self.image_id, self.height, self.width = image_id, height, width
        self.file_name = file_name
        self.windows = [tuple(w) for w in windows]
        self.rows = row_starts(self.windows)
        self._row_of = {tile: row for row, tile in enumerate(self.rows)}
        self.key = json.loads(json.dumps(key))  # as it reads back from the manifest
        self.folder = scene_folder(output, stem)
        self.paths = {
            "manifest": os.path.join(self.folder, "manifest.json"),
            "progress": os.path.join(self.folder, "progress.jsonl"),
        }
        # Every file that grows as the scene goes, whose length is a checkpoint.
        self.files = {"progress": self.paths["progress"], **sink.files}
        self.start_tile = 0
        self.rows_done = 0
        self.complete = False
        self.resumed = False
        self._progress = None
        os.makedirs(self.folder, exist_ok=True)
        state = None
        manifest = self._read_manifest()
        if manifest is not None and manifest["key"] != self.key:
            differ = ", ".join(key_differences(manifest["key"], self.key))
            if manifest.get("complete"):
                if not overwrite:
                    raise ValueError(
                        f"{self.folder} holds the complete output of another run (different {differ}); "
                        "--overwrite replaces it, or choose another --output"
                    )
                logger.warning(
                    "%s: replacing the complete output of another run (different %s)", self.folder, differ
                )
            elif resume == "always":
                raise ValueError(
                    f"--resume: the partial output in {self.folder} is of another run "
                    f"(different {differ}); remove it or run without --resume"
                )
            else:
                logger.warning(
                    "%s: the partial output there is of another run (different %s); starting the scene over",
                    self.folder,
                    differ,
                )
        elif manifest is not None and resume != "never":
            state = self._resume(manifest)
        if self.complete:
            sink.open(state, complete=True)
            return
        if not self.resumed:
            self._start_over()
        sink.open(state if self.resumed else None)
        self._next = self.start_tile
        self._progress = open(self.paths["progress"], "a", encoding="utf-8")
        if not self.resumed:  # a manifest from the start: the folder is known to be this run's
            self._checkpoint(0)

    @staticmethod
    def is_done(output: str, stem: str, key: Dict) -> bool:
        """Whether a scene's output was finished by a run with this key (read-only check)."""
        manifest = read_manifest(output, stem)
        return (
            manifest is not None
            and bool(manifest.get("complete"))
            and manifest.get("key") == json.loads(json.dumps(key))
        )

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

    def _resume(self, manifest: Dict) -> Optional[Dict]:
        """Take up a manifest of this key; the sink's state in it, None when the scene must start over."""
        self.complete = bool(manifest["complete"])
        self.rows_done = manifest["rows_done"]
        self.start_tile = manifest["next_tile"]
        state = {k: v for k, v in manifest.items() if k not in _ENGINE_MEMBERS}
        if self.complete:
            logger.info(
                "%s: already done by an earlier run with the same scene, model and vocabulary", self.image_id
            )
            return state
        for name, path in self.files.items():
            length = manifest["lengths"].get(name)
            present = os.path.isfile(path)
            if length is None or (length > 0 and (not present or os.path.getsize(path) < length)):
                logger.warning("%s is shorter than the manifest says; starting the scene over", path)
                self._reset()
                return None
            if present:
                os.truncate(path, length)
        self.resumed = True
        logger.info(
            "%s: resuming after %d of %d rows of tiles (tile %d of %d)",
            self.image_id,
            self.rows_done,
            len(self.rows),
            self.start_tile,
            len(self.windows),
        )
        return state

    def _reset(self) -> None:
        self.rows_done = self.start_tile = 0
        self.complete = False

    def _start_over(self) -> None:
        self._reset()
        for name in os.listdir(self.folder):
            if name.startswith("manifest."):
                os.remove(os.path.join(self.folder, name))
        for path in self.files.values():
            if os.path.exists(path):
                os.remove(path)

    # Feeding -----------------------------------------------------------------------------------------

    def add(self, index: int, tile: Any, *, seconds: float = 0.0) -> None:
        """Tile ``index``: its :meth:`SceneSink.tile` result and the seconds it took."""
        if index != self._next:
            raise ValueError(f"tile {index} given, tile {self._next} expected (tiles must come in order)")
        # A new row: what ends above it is final (a resumed run starts with that checkpoint on disk).
        if index in self._row_of and index > 0 and not (self.resumed and index == self.start_tile):
            self._checkpoint(self._row_of[index])
        window = self.windows[index]
        summary = self.sink.add(index, window, tile)
        progress = {"tile": index, "window": list(window), **summary, "seconds": round(seconds, 3)}
        self._progress.write(json.dumps(progress) + "\n")
        self._progress.flush()
        self._next = index + 1

    def _lengths(self) -> Dict[str, int]:
        """Sync the growing files to disk and return their lengths (bytes)."""
        if self._progress is not None:
            self._progress.flush()
        return {name: _sync(path) for name, path in self.files.items()}

    def _checkpoint(self, rows_done: int) -> None:
        """Let the sink write out what is final before row ``rows_done``, and save the state to continue."""
        state = self.sink.row_done(rows_done, self.windows[self.rows[rows_done]][1])
        self.rows_done = rows_done
        self._write_manifest(state, self._lengths(), next_tile=self.rows[rows_done], complete=False)
        self.sink.saved()

    def _write_manifest(self, state: Dict, lengths: Dict[str, int], *, next_tile: int, complete: bool):
        clash = set(state) & set(_ENGINE_MEMBERS)
        if clash:
            raise ValueError(f"the sink's state uses the engine's manifest members {sorted(clash)}")
        manifest = {
            "version": MANIFEST_VERSION,
            "key": self.key,
            "image_id": self.image_id,
            "file_name": self.file_name,
            "height": self.height,
            "width": self.width,
            "tiles": len(self.windows),
            "rows": len(self.rows),
            "rows_done": self.rows_done,
            "next_tile": next_tile,
            "complete": complete,
            "lengths": lengths,
            **state,
        }
        with atomic_write(self.paths["manifest"]) as f:
            json.dump(manifest, f)

    def finish(self) -> None:
        """Let the sink write its final outputs and mark the scene done."""
        if self.complete:
            return
        state = self.sink.finish()
        self.rows_done = len(self.rows)
        lengths = self._lengths()
        self._progress.close()
        self._progress = None
        self._write_manifest(state, lengths, next_tile=len(self.windows), complete=True)
        self.sink.saved()
        self.complete = True


def predict_tiles(
    predict: Callable[[np.ndarray], Any], reader: SceneReader, engine: SceneEngine, *, progress: bool = True
) -> None:
    """Predict the tiles of ``engine`` from its :attr:`~SceneEngine.start_tile` on and finish it.

    Args:
        predict: (h, w, 3) uint8 window -> the model's output (e.g. a
            :class:`score.predict.predictor.SCOREPredictor`), given to the sink's ``tile``.
        reader: the scene.
        engine: where the tiles go.
        progress: show a tqdm bar (tiles done, the sink's counts, ETA).
    """
    if engine.complete:
        return
    windows, sink = engine.windows, engine.sink
    bar = tqdm(
        total=len(windows), initial=engine.start_tile, desc=engine.image_id, unit="tile", disable=not progress
    )
    for index in range(engine.start_tile, len(windows)):
        start = time.perf_counter()
        window = windows[index]
        tile = sink.tile(window, predict(np.ascontiguousarray(reader.read(window))))
        engine.add(index, tile, seconds=time.perf_counter() - start)
        bar.update(1)
        bar.set_postfix(**sink.counts(), refresh=False)
    bar.close()
    engine.finish()
