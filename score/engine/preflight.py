"""What a run checks before its model is built: config values, the ownership of OUTPUT_DIR, resume configs.

* :func:`check_training_config` refuses solver and loader values that would
  fail later (in fvcore's scheduler, torch's optimizer, the batch split over
  processes) or train nothing, with an error naming the key and the value.
* :func:`lock_output_dir` makes a run the owner of its OUTPUT_DIR: an
  exclusive ``fcntl.flock`` on ``OUTPUT_DIR/.score_run.lock``, which holds the
  owner's PID. The kernel releases it when the process ends, however it ends,
  so the lock of a dead run never blocks. A second run there is refused,
  naming the folder and the owner's PID.
* :func:`config_differences` lists the ``MODEL.*`` values that differ between
  the config a checkpoint was trained with (saved in it) and the current one,
  for ``--resume`` to say why the weights do not fit.
"""

from __future__ import annotations

import errno
import fcntl
import math
import os
from typing import Any, Callable

from detectron2.config import CfgNode

__all__ = [
    "LOCK_FILE_NAME",
    "OutputDirInUseError",
    "check_training_config",
    "config_differences",
    "lock_output_dir",
]

LOCK_FILE_NAME = ".score_run.lock"

# Locks held by this process, by folder: a second call for the same folder is a no-op.
_HELD: dict[str, int] = {}


class OutputDirInUseError(RuntimeError):
    """Another live process holds the lock of an OUTPUT_DIR."""


def _int(minimum: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= minimum


def _real(low: float, high: float = math.inf, low_open: bool = False) -> Callable[[Any], bool]:
    def ok(v: Any) -> bool:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return False
        return (v > low if low_open else v >= low) and v <= high

    return ok


# (key, test, what the value must be)
_RULES: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("SOLVER.MAX_ITER", _int(1), "a positive integer"),
    ("SOLVER.IMS_PER_BATCH", _int(1), "a positive integer"),
    ("SOLVER.BASE_LR", _real(0.0, low_open=True), "a finite number > 0"),
    ("SOLVER.WEIGHT_DECAY", _real(0.0), "a finite number >= 0"),
    ("SOLVER.WEIGHT_DECAY_NORM", _real(0.0), "a finite number >= 0"),
    ("SOLVER.WEIGHT_DECAY_EMBED", _real(0.0), "a finite number >= 0"),
    ("SOLVER.MOMENTUM", _real(0.0), "a finite number >= 0"),
    ("SOLVER.BACKBONE_MULTIPLIER", _real(0.0), "a finite number >= 0"),
    ("SOLVER.GAMMA", _real(0.0, low_open=True), "a finite number > 0"),
    ("SOLVER.WARMUP_ITERS", _int(0), "an integer >= 0"),
    ("SOLVER.WARMUP_FACTOR", _real(0.0, 1.0), "a number in [0, 1]"),
    ("SOLVER.CHECKPOINT_PERIOD", _int(1), "a positive integer"),
    ("TEST.EVAL_PERIOD", _int(0), "an integer >= 0 (0: no evaluation during training)"),
    ("DATALOADER.NUM_WORKERS", _int(0), "an integer >= 0"),
)


def _get(cfg: CfgNode, key: str) -> Any:
    node = cfg
    for part in key.split("."):
        node = node.get(part) if isinstance(node, CfgNode) else None
    return node


def check_training_config(cfg: CfgNode, world_size: int = 1) -> None:
    """Refuse solver and loader values a training run cannot use; the error names every bad key and value.

    Args:
        cfg: the run's config.
        world_size: number of training processes (IMS_PER_BATCH is split over them).

    Raises:
        ValueError: listing ``KEY = value: must be ...`` for each bad key.
    """
    bad = []
    for key, ok, must in _RULES:
        value = _get(cfg, key)
        if value is not None and not ok(value):
            bad.append(f"{key} = {value!r}: must be {must}")
    batch = cfg.SOLVER.IMS_PER_BATCH
    if _int(1)(batch) and batch % world_size:
        bad.append(
            f"SOLVER.IMS_PER_BATCH = {batch}: must be a multiple of the {world_size} training processes"
        )
    steps, max_iter = list(cfg.SOLVER.STEPS), cfg.SOLVER.MAX_ITER
    if not all(_int(1)(s) for s in steps) or steps != sorted(set(steps)):
        bad.append(f"SOLVER.STEPS = {tuple(steps)}: must be increasing positive integers")
    elif _int(1)(max_iter) and max_iter in steps:
        # detectron2 ignores steps above MAX_ITER (with a warning) but keeps one equal to it,
        # which fvcore's scheduler then refuses.
        bad.append(f"SOLVER.STEPS = {tuple(steps)}: each step must be below SOLVER.MAX_ITER ({max_iter})")
    if bad:
        raise ValueError("Config values a training run cannot use:\n  " + "\n  ".join(bad))


def lock_output_dir(output_dir: str) -> str:
    """Take the exclusive lock of ``output_dir`` for the life of this process (created when missing).

    Returns:
        The lock file's path.

    Raises:
        OutputDirInUseError: another live process holds it; the message names
            the folder and that process's PID.
    """
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, LOCK_FILE_NAME)
    key = os.path.realpath(output_dir)
    if key in _HELD:
        return path
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        owner = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        if error.errno not in (errno.EAGAIN, errno.EACCES):
            raise
        raise OutputDirInUseError(
            f"OUTPUT_DIR {output_dir} is in use by another run (PID {owner}): two runs in one folder "
            "mix their checkpoints, config.yaml and metrics.json. Wait for it to end, or give this run "
            "another OUTPUT_DIR"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    _HELD[key] = fd  # kept open: closing it would release the lock
    return path


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(node, dict):
        return {prefix[:-1]: node}
    flat: dict[str, Any] = {}
    for key, value in node.items():
        flat.update(_flatten(value, f"{prefix}{key}."))
    return flat


def config_differences(saved: str, cfg: CfgNode, prefix: str = "MODEL.") -> list[str]:
    """``KEY: saved in the checkpoint, now`` for each key under ``prefix`` whose value differs.

    Args:
        saved: the config a checkpoint was trained with, as ``cfg.dump()`` wrote it.
        cfg: the current config.
        prefix: the part of the config compared (the model's keys).
    """
    before = {k: v for k, v in _flatten(CfgNode.load_cfg(saved)).items() if k.startswith(prefix)}
    now = {k: v for k, v in _flatten(cfg).items() if k.startswith(prefix)}
    differ = []
    for key in sorted(set(before) | set(now)):
        old, new = before.get(key, "<absent>"), now.get(key, "<absent>")
        if isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)):
            old, new = list(old), list(new)
        if old != new and key != "MODEL.WEIGHTS":
            differ.append(f"{key}: {old!r} in the checkpoint, {new!r} now")
    return differ
