"""Checkpoints: loading those written by the authors' implementation.

Our module names follow the authors' (``backbone.clip_model``,
``sem_seg_head.pixel_decoder``, ``sem_seg_head.predictor``, ``criterion``,
``void_embedding``) except where a part got a module of its own:
RAI lives in ``sem_seg_head.predictor.rai``, GCA's attention is ``gca.attn``
and the context CLIP is ``context_encoder``. ``convert_official_state_dict``
renames an authors' state dict to ours; ``SCORECheckpointer`` applies it by
itself when it recognises one, so ``MODEL.WEIGHTS`` may point at either.

``SCORECheckpointer`` also makes checkpoints safe to rely on
(docs/RELIABILITY.md):

* a file that cannot be unpickled (truncated, not a checkpoint) raises
  :class:`UnreadableCheckpointError` naming it;
* ``resume_or_load(resume=True)`` falls back, with a warning, from an
  unreadable last checkpoint (the one named by detectron2's
  ``last_checkpoint`` file) to the newest readable ``*.pth`` of the folder;
* ``save`` writes to a temporary file of the same folder and renames it
  (``os.replace``), so a run killed while saving leaves the previous
  checkpoints and ``last_checkpoint`` intact;
* after a load, the model's trainable parameters that the checkpoint did not
  fill (missing, or of another shape; entries of any kind with another shape)
  are listed in a table per module. With ``require_complete`` (evaluation and
  prediction, unless MODEL.ALLOW_PARTIAL_WEIGHTS) they raise
  :class:`PartialCheckpointError`. The frozen CLIP towers are not trainable
  parameters: they are built from their own weight files
  (MODEL.SCORE.CLIP_PRETRAINED_WEIGHTS, RSCLIP_PRETRAINED_WEIGHTS), so a
  checkpoint without them (ours hold them, as the authors' do) is not partial.
"""

from __future__ import annotations

import logging
import os
import pickle
import zipfile
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import torch
from detectron2.checkpoint import DetectionCheckpointer
from tabulate import tabulate

from .fileio import atomic_write

__all__ = [
    "OFFICIAL_RENAMES",
    "PartialCheckpointError",
    "SCORECheckpointer",
    "UnreadableCheckpointError",
    "convert_official_state_dict",
    "is_official_state_dict",
]

logger = logging.getLogger(__name__)

# (authors' prefix, our prefix), applied to the first matching prefix of each key.
OFFICIAL_RENAMES: Tuple[Tuple[str, str], ...] = (
    ("clip_rs.", "context_encoder."),
    ("gca.multiattn.0.", "gca.attn."),
    ("sem_seg_head.predictor.transformer.", "sem_seg_head.predictor.rai.encoder."),
    ("sem_seg_head.predictor.learnable_weight", "sem_seg_head.predictor.rai.lambda_weight"),
    ("sem_seg_head.predictor.kernel_size_logits", "sem_seg_head.predictor.rai.kernel_logits"),
)


def is_official_state_dict(state_dict: Mapping[str, object]) -> bool:
    """True when the keys are in the authors' layout (any key with one of their prefixes)."""
    return any(key.startswith(old) for key in state_dict for old, _ in OFFICIAL_RENAMES)


def convert_official_state_dict(state_dict: Mapping[str, object]) -> Dict[str, object]:
    """Rename the keys of an authors' state dict to this project's module names; values unchanged."""
    converted = {}
    for key, value in state_dict.items():
        for old, new in OFFICIAL_RENAMES:
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        converted[key] = value
    return converted


# What torch.load raises on a truncated or foreign file.
_UNREADABLE_ERRORS = (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError)
# Depth of the module names grouping the load summary ("sem_seg_head.predictor").
_SUMMARY_DEPTH = 2


class UnreadableCheckpointError(OSError):
    """A checkpoint file that cannot be read; the message names it."""


class PartialCheckpointError(ValueError):
    """A checkpoint that leaves trained parameters of the model unset; the message lists them."""


def _group(key: str) -> str:
    return ".".join(key.split(".")[:_SUMMARY_DEPTH])


def load_summary(
    model: torch.nn.Module, loaded: Sequence[str], missing: Sequence[str], mismatched: Sequence[str]
) -> Tuple[List[str], str]:
    """The trained entries that a load left unset, and a table of the load per module.

    Args:
        model: the model loaded into.
        loaded: state-dict keys filled from the checkpoint.
        missing: model keys the checkpoint lacks.
        mismatched: keys present in both with different shapes (not loaded).

    Returns:
        (not loaded trained entries: the missing trainable parameters and every
        mismatched key, sorted; a table with, per module, the counts of loaded,
        missing trainable, missing frozen / buffer and mismatched entries).
    """
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    rows: OrderedDict[str, List[int]] = OrderedDict()
    for key in model.state_dict():
        rows.setdefault(_group(key), [0, 0, 0, 0])
    for column, keys in enumerate((loaded, [k for k in missing if k in trainable])):
        for key in keys:
            rows.setdefault(_group(key), [0, 0, 0, 0])[column] += 1
    for key in missing:
        if key not in trainable:
            rows[_group(key)][2] += 1
    for key in mismatched:
        rows.setdefault(_group(key), [0, 0, 0, 0])[3] += 1
    not_loaded = sorted({k for k in missing if k in trainable} | set(mismatched))
    table = tabulate(
        [[name, *counts] for name, counts in rows.items()],
        headers=["module", "loaded", "missing (trained)", "missing (frozen / buffer)", "shape mismatch"],
        tablefmt="pipe",
    )
    return not_loaded, table


class SCORECheckpointer(DetectionCheckpointer):
    """detectron2's checkpointer that reads the authors' checkpoints and guards against bad files."""

    def __init__(self, model, save_dir: str = "", *, require_complete: bool = False, **kwargs: Any):
        """
        Args:
            model, save_dir, kwargs: as ``DetectionCheckpointer`` (checkpointables, save_to_disk).
            require_complete: raise ``PartialCheckpointError`` when a load leaves
                trainable parameters unset or shapes differ (evaluation, prediction);
                otherwise the load summary is logged as a warning (training).
        """
        super().__init__(model, save_dir, **kwargs)
        self.require_complete = require_complete
        # Of the last load: the trained entries it left unset, and the checkpoint's
        # "trainer" entry (its iteration and, for our checkpoints, its config).
        self.not_loaded: List[str] = []
        self.loaded_trainer_state: Dict[str, Any] = {}

    # ------------------------------------------------------------------ reading

    def _load_file(self, filename: str) -> Dict[str, Any]:
        try:
            return super()._load_file(filename)
        except _UNREADABLE_ERRORS as error:
            size = os.path.getsize(filename) if os.path.isfile(filename) else None
            raise UnreadableCheckpointError(
                f"cannot read checkpoint {filename} ({size} bytes): {type(error).__name__}: {error}. "
                "The file is truncated or not a PyTorch checkpoint"
            ) from error

    def _load_model(self, checkpoint):
        if is_official_state_dict(checkpoint["model"]):
            logger.info("Converting a checkpoint of the authors' implementation to this project's key names")
            checkpoint["model"] = convert_official_state_dict(checkpoint["model"])
        model_keys = set(self.model.state_dict())
        given = [k[len("module.") :] if k.startswith("module.") else k for k in checkpoint["model"]]
        incompatible = super()._load_model(checkpoint)
        mismatched = [k for k, _, _ in incompatible.incorrect_shapes]
        loaded = [k for k in given if k in model_keys and k not in set(mismatched)]
        not_loaded, table = load_summary(self.model, loaded, incompatible.missing_keys, mismatched)
        self.not_loaded = not_loaded
        if not_loaded:
            shapes = {k: (a, b) for k, a, b in incompatible.incorrect_shapes}
            listing = "\n".join(
                f"  {k}: {shapes[k][0]} in the checkpoint, {shapes[k][1]} in the model"
                if k in shapes
                else f"  {k}: missing"
                for k in not_loaded
            )
            message = (
                f"The checkpoint leaves {len(not_loaded)} trained entries of the model unset "
                f"(missing or of another shape):\n{listing}\n{table}"
            )
            if self.require_complete:
                raise PartialCheckpointError(
                    message + "\nThis checkpoint was trained for another model or config. "
                    "Set MODEL.ALLOW_PARTIAL_WEIGHTS True to load it anyway (the unset entries keep "
                    "their random initialisation)"
                )
            self.logger.warning("Partial load:\n%s", table)
        elif incompatible.missing_keys:
            self.logger.info("All trained parameters loaded; not in the checkpoint:\n%s", table)
        return incompatible

    def resume_or_load(self, path: str, *, resume: bool = True) -> Dict[str, Any]:
        """detectron2's ``resume_or_load``, falling back to the newest readable checkpoint of ``save_dir``.

        The last checkpoint is the one ``last_checkpoint`` names; when it cannot be
        read, the other ``*.pth`` files are tried from the newest (modification
        time) on, with a warning naming what was skipped. None readable: the
        error of the last one.
        """
        if not (resume and self.has_checkpoint()):
            return self.load(path, checkpointables=[])
        last = self.get_checkpoint_file()
        others = sorted(
            (f for f in self.get_all_checkpoint_files() if os.path.abspath(f) != os.path.abspath(last)),
            key=lambda f: (os.path.getmtime(f), f),
            reverse=True,
        )
        skipped: List[str] = []
        for candidate in [last, *others]:
            try:
                checkpoint = self._load_file(candidate) if os.path.isfile(candidate) else None
            except UnreadableCheckpointError as error:
                self.logger.warning("%s", error)
                skipped.append(candidate)
                continue
            if checkpoint is None:
                self.logger.warning("last_checkpoint names %s, which does not exist", candidate)
                skipped.append(candidate)
                continue
            if skipped:
                self.logger.warning("Resuming from %s instead of the unreadable %s", candidate, skipped)
            return self._load_checkpoint(candidate, checkpoint)
        raise UnreadableCheckpointError(f"--resume: no readable checkpoint in {self.save_dir}: {skipped}")

    def _load_checkpoint(self, path: str, checkpoint: Dict[str, Any]) -> Dict[str, Any]:
        """``Checkpointer.load`` for a file already read (model and every checkpointable)."""
        self.logger.info("[Checkpointer] Loading from %s ...", path)
        trainer_state = checkpoint.get("trainer")
        self.loaded_trainer_state = trainer_state if isinstance(trainer_state, dict) else {}
        incompatible = self._load_model(checkpoint)
        if incompatible is not None:
            self._log_incompatible_keys(incompatible)
        for key, obj in self.checkpointables.items():
            if key in checkpoint:
                self.logger.info("Loading %s from %s ...", key, path)
                obj.load_state_dict(checkpoint.pop(key))
        return checkpoint

    # ------------------------------------------------------------------ writing

    def save(self, name: str, **kwargs: Any) -> None:
        """fvcore's ``save``, written to a temporary file and renamed, then ``last_checkpoint`` likewise."""
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", save_file)
        with atomic_write(save_file, "wb") as f:
            torch.save(data, f)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        path = os.path.join(self.save_dir, "last_checkpoint")
        with atomic_write(path) as f:
            f.write(last_filename_basename)
