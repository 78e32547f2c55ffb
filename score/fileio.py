"""Atomic file writes: a reader, or a run killed mid-write, sees the old file or the whole new one.

Every file that SCORE rewrites in place (checkpoints, ``last_checkpoint``,
cached text classifiers and dataset checks, scene manifests, joined
prediction files) goes through :func:`atomic_write`: the content is written
to a hidden temporary file in the same folder, flushed to disk, then renamed
over the target (``os.replace`` is atomic within one file system).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import IO, Iterator, Optional

__all__ = ["atomic_write"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates files readable by their owner only; the target gets the usual permissions.
_FILE_MODE = 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w", *, encoding: Optional[str] = None) -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; on success it replaces ``path``.

    Args:
        path: the file to write; its folder is created when missing.
        mode: ``"w"`` (text, UTF-8 unless ``encoding`` says otherwise) or ``"wb"``.
        encoding: text encoding for ``"w"``.

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write writes with mode 'w' or 'wb', not {mode!r}")
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        os.chmod(tmp, _FILE_MODE)
        text_encoding = None if mode == "wb" else (encoding or "utf-8")
        with os.fdopen(fd, mode, encoding=text_encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
