"""Compatibility of detectron2 v0.6 with today's numpy, Pillow and a missing ``_C``.

Where detectron2 cannot be installed from GitHub, the installer builds the
official v0.6 Python sources from the PyPI package ``pb1-detectron2==0.6``
without its C++ extension (see INSTALL.md). That release predates numpy 1.24
and Pillow 10, which removed names it still uses, and several of its modules
import ``detectron2._C`` at import time. This module, imported first by
``score/__init__.py``, fills exactly those gaps:

* numpy aliases ``np.bool``, ``np.int``, ``np.float``, ``np.complex``,
  ``np.object``, ``np.str`` (removed in numpy 1.24) are restored as the
  builtins they used to alias;
* Pillow constants ``Image.LINEAR``, ``Image.CUBIC``, ``Image.ANTIALIAS``
  (removed in Pillow 10) are restored as the ``Image.Resampling`` members they
  used to alias;
* when ``detectron2._C`` cannot be imported, a placeholder module takes its
  place so that ``detectron2.layers`` and ``detectron2.evaluation`` import;
  any use of it raises an error that says which operator is missing.
  ``HAS_D2_C`` tells callers which path to take: SCORE uses no operator of
  ``_C``, and COCO evaluation runs pycocotools instead of detectron2's C++
  fast path (``COCOEvaluator(use_fast_impl=HAS_D2_C)``).

On a current detectron2 with its extension every step is a no-op: the names
already exist and ``_C`` imports.
"""

from __future__ import annotations

import importlib
import logging
import sys
import types

import numpy as np
from PIL import Image

__all__ = ["HAS_D2_C", "apply"]

logger = logging.getLogger(__name__)

_NUMPY_ALIASES = {
    "bool": bool,
    "int": int,
    "float": float,
    "complex": complex,
    "object": object,
    "str": str,
}

_PILLOW_ALIASES = {
    "LINEAR": "BILINEAR",
    "CUBIC": "BICUBIC",
    "ANTIALIAS": "LANCZOS",
}

HAS_D2_C = False


class _MissingExtension(types.ModuleType):
    """Stands in for ``detectron2._C``: importable, but every operator raises."""

    def __init__(self, reason: str):
        super().__init__("detectron2._C")
        self.__file__ = None
        self._reason = reason

    # detectron2.utils.collect_env (run by default_setup) reports these three.
    @staticmethod
    def get_compiler_version() -> str:
        return "none (detectron2 built without its C++ extension)"

    @staticmethod
    def get_cuda_version() -> str:
        return "none (detectron2 built without its C++ extension)"

    @staticmethod
    def has_cuda() -> bool:
        return False

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        raise RuntimeError(
            f"detectron2._C.{name} is not available: detectron2 was installed without its "
            f"C++ extension ({self._reason}). Install detectron2 from GitHub with a compiler "
            "(INSTALL.md) to use this operator; SCORE itself does not need it."
        )


def _restore_numpy_aliases() -> None:
    for name, builtin in _NUMPY_ALIASES.items():
        if name not in np.__dict__:
            setattr(np, name, builtin)


def _restore_pillow_aliases() -> None:
    for old, new in _PILLOW_ALIASES.items():
        if not hasattr(Image, old):
            setattr(Image, old, getattr(Image.Resampling, new))


def _ensure_d2_extension() -> bool:
    try:
        importlib.import_module("detectron2._C")
        return True
    except ImportError as e:
        sys.modules["detectron2._C"] = _MissingExtension(str(e))
        import detectron2

        detectron2._C = sys.modules["detectron2._C"]
        logger.info("detectron2 has no C++ extension (%s): using pure-PyTorch and pycocotools paths", e)
        return False


def apply() -> None:
    """Apply all shims; safe to call more than once."""
    global HAS_D2_C
    _restore_numpy_aliases()
    _restore_pillow_aliases()
    HAS_D2_C = _ensure_d2_extension()


apply()
