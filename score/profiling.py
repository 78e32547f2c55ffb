"""Stage labels of SCORE's forward for ``torch.profiler`` (``tools/bench/benchmark.py --profile``).

``profiled(name)`` wraps a function in ``torch.profiler.record_function``:
when no profiler is running that is one call into the profiler's C++ side
that returns at once (about a microsecond, against seconds for a forward),
so the labels stay in place. Labels start with "score." so that a profile
can be filtered for them.
"""

from __future__ import annotations

import functools
from typing import Callable, TypeVar

from torch.profiler import record_function

__all__ = ["profiled", "record_function"]

F = TypeVar("F", bound=Callable)


def profiled(name: str) -> Callable[[F], F]:
    """Decorator: every call of the function is a profiler range called ``name``."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with record_function(name):
                return fn(*args, **kwargs)

        return wrapper

    return decorate
