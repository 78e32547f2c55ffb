"""A training sampler whose position survives a checkpoint, for exact resuming.

detectron2's ``TrainingSampler`` is an infinite stream of shuffled indices
(``randperm`` per epoch from a seed, shared by the ranks, rank r taking every
world-size-th index from r). A resumed run builds a new one and starts the
stream from its beginning, so the images after the resume are not those of
the uninterrupted run. :class:`ResumableTrainingSampler` is the same stream,
started at ``start`` indices per rank (the samples this rank has already
drawn), with a ``state_dict`` holding the seed so that a run without
``SEED`` resumes the same stream. The trainer sets ``start`` from the
checkpoint's iteration (iterations x images per rank).
"""

from __future__ import annotations

import itertools
import logging
from typing import Any, Iterator

from detectron2.data.samplers import TrainingSampler

__all__ = ["ResumableTrainingSampler"]

logger = logging.getLogger(__name__)


class ResumableTrainingSampler(TrainingSampler):
    """``TrainingSampler`` whose stream can begin after the first ``start`` indices of this rank."""

    def __init__(self, size: int, shuffle: bool = True, seed: int | None = None):
        """
        Args:
            size, shuffle, seed: as ``TrainingSampler`` (seed None: a random seed shared by the ranks).
        """
        super().__init__(size, shuffle=shuffle, seed=seed)
        self.start = 0

    def __iter__(self) -> Iterator[int]:
        first = self.start * self._world_size + self._rank
        yield from itertools.islice(self._infinite_indices(), first, None, self._world_size)

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self._seed, "size": self._size, "shuffle": self._shuffle}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take the saved seed, unless the dataset size changed (then the stream cannot be the same)."""
        if state["size"] != self._size:
            logger.warning(
                "The checkpoint's sampler drew from %d training images, this run has %d: the training "
                "data changed, the images after the resume are not those of the interrupted run",
                state["size"],
                self._size,
            )
            return
        self._seed = int(state["seed"])
        self._shuffle = bool(state["shuffle"])
