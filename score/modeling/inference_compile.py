"""``torch.compile`` of a module's tensor-in / tensor-out forward, for inference only.

``MODEL.SCORE.COMPILE_AT_INFERENCE`` names the modules whose forward is
compiled by inductor when it runs without autograd (``torch.no_grad`` or
``torch.inference_mode``): the frozen ConvNeXt CLIP trunk ("backbone"), the
frozen context tower ("context") and the pixel decoder ("pixel_decoder",
its deformable-attention sampling kept eager). With inductor's ``freezing``
the weights become constants of the compiled code (prepacked for oneDNN on
CPU), so the code is compiled again whenever a weight of the module is
replaced or changed in place (a checkpoint loaded, a training step, a move
to another device). Inductor fuses and reorders floating-point work, so
the outputs are close to the eager ones, not equal; the eager forward is
the reference (docs/BENCHMARKS.md).

The compiled callable is a plain attribute of its module, not a submodule:
the state dict and the parameter names do not change.
"""

from __future__ import annotations

import itertools
import logging
from typing import Callable, Optional, Tuple

import torch
from torch import nn

__all__ = ["COMPILABLE_MODULES", "InferenceCompiled", "check_compile_names"]

logger = logging.getLogger(__name__)

# Names accepted by MODEL.SCORE.COMPILE_AT_INFERENCE.
COMPILABLE_MODULES = ("backbone", "context", "pixel_decoder")


def check_compile_names(names) -> Tuple[str, ...]:
    """MODEL.SCORE.COMPILE_AT_INFERENCE as a tuple, every name checked."""
    unknown = [name for name in names if name not in COMPILABLE_MODULES]
    if unknown:
        raise ValueError(
            f"MODEL.SCORE.COMPILE_AT_INFERENCE: unknown module(s) {unknown}; choose from {COMPILABLE_MODULES}"
        )
    return tuple(names)


class InferenceCompiled:
    """``fn`` (a forward of ``module``) compiled by inductor with frozen weights on its first call.

    Calls go to the compiled code while the parameters and buffers of
    ``module`` are the tensors, at the versions, they were when it was
    compiled; otherwise ``fn`` is compiled again (logged). Use it only where
    autograd is off: frozen weights are constants, without gradients.
    """

    def __init__(self, fn: Callable, module: nn.Module, name: str):
        self.fn = fn
        self.module = module
        self.name = name
        self._compiled: Optional[Callable] = None
        self._weights_state: Optional[tuple] = None

    def _state(self) -> tuple:
        tensors = itertools.chain(self.module.parameters(), self.module.buffers())
        return tuple((t.data_ptr(), t._version) for t in tensors)

    def __call__(self, *args, **kwargs):
        state = self._state()
        if self._compiled is None or state != self._weights_state:
            logger.info(
                "torch.compile of %s (inductor, frozen weights): the next call compiles it", self.name
            )
            # A new compiled callable: its code is not shared with the one made for the old weights.
            self._compiled = torch.compile(self.fn, options={"freezing": True})
            self._weights_state = state
        return self._compiled(*args, **kwargs)

    def __getstate__(self) -> dict:
        # Compiled code is neither copied nor pickled; a copy compiles its own.
        return {**self.__dict__, "_compiled": None, "_weights_state": None}
