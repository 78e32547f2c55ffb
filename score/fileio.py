"""Atomic file writes: a reader, or a run killed mid-write, sees the old file or the whole new one.

Every file that SCORE rewrites in place (checkpoints, ``last_checkpoint``,
cached text classifiers and dataset checks, scene manifests, joined
prediction files) goes through :func:`atomic_write`: the content is written
to a hidden temporary file in the same folder, flushed to disk, then renamed
over the target (``os.replace`` is atomic within one file system). Files that
another library writes by name (GDAL's GeoTIFF, COG and PNG writers) use
:func:`atomic_path`, the same steps with a temporary path instead of a file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import IO, Iterator, Optional

__all__ = ["atomic_path", "atomic_write"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates files readable by their owner only; the target gets the usual permissions.
_FILE_MODE = 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = "") -> Iterator[str]:
    """A temporary path beside ``path`` to write to by name; on success it replaces ``path``.

    Args:
        path: the file to write; its folder is created when missing.
        suffix: ending of the temporary name, for writers that choose a format by it (e.g. ".tif").

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=f".tmp{suffix}")
    os.close(fd)
    try:
        os.chmod(tmp, _FILE_MODE)
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w", *, encoding: Optional[str] = None) -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; on success it replaces ``path``.

    Args:
        path: the file to write; its folder is created when missing.
        mode: ``"w"`` (text, UTF-8 unless ``encoding`` says otherwise) or ``"wb"``.
        encoding: text encoding for ``"w"``.

    The content is flushed to disk before the rename. On an exception the
    temporary file is removed and ``path`` is left as it was.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write writes with mode 'w' or 'wb', not {mode!r}")
    with atomic_path(path) as tmp:
        with open(tmp, mode, encoding=None if mode == "wb" else (encoding or "utf-8")) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
