"""Text classifier of SCORE.md 7.2: class names -> one L2-normalised CLIP text embedding per synonym.

Shorthand: K classes, S synonyms of a class, N = sum of S over the K
classes (rows of the classifier), T templates (18), D joint embedding width.

Names are normalised as :mod:`score.vocabulary` says. Each synonym is
written into the T remote-sensing templates, the prompts are encoded by the
frozen text tower, each embedding is L2-normalised, the T embeddings of a
synonym are averaged and the mean is L2-normalised again (the prompt
ensembling of CLIP, with RESISC45-style templates as in FC-CLIP's
remote-sensing setups). The result depends only on the vocabulary and the
text weights, so :class:`TextClassifierBank` computes it once per vocabulary
and can keep it on disk between runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..fileio import atomic_write
from ..vocabulary import RS_TEMPLATES, normalize_class_name

__all__ = ["TextClassifierBank", "classifier_cache_key"]

logger = logging.getLogger(__name__)


def classifier_cache_key(model_name: str, weights_fingerprint: str) -> str:
    """Cache-key prefix of a text tower: "" (no disk cache) when its weights are random (empty fingerprint).

    ``weights_fingerprint`` comes from :func:`score.modeling.clip_weights.weights_fingerprint`.
    """
    return f"{model_name}|{weights_fingerprint}" if weights_fingerprint else ""


class TextClassifierBank:
    """Text classifiers of the vocabularies met so far, computed once each.

    ``get`` returns the classifier of a vocabulary from memory when it was
    computed before in this process, else from the on-disk cache when one is
    configured and holds it, else by encoding the prompts (in batches, without
    gradient). With an empty ``cache_key`` (random text weights, see
    :func:`classifier_cache_key`) nothing is read from or written to disk.
    """

    def __init__(
        self,
        encode_fn: Callable[[List[str]], Tensor],
        *,
        cache_key: str,
        templates: Sequence[str] = RS_TEMPLATES,
        cache_dir: Optional[str] = None,
        batch_size: int = 256,
    ):
        """
        Args:
            encode_fn: prompts -> (len(prompts), D) un-normalised text embeddings.
            cache_key: identity of the text tower (model name and weights
                fingerprint, :func:`classifier_cache_key`); "" disables the
                disk cache.
            templates: prompt templates with one "{}" each.
            cache_dir: folder of the disk cache; None or "" for none.
            batch_size: prompts per call of ``encode_fn``.
        """
        if not templates or any(t.count("{}") != 1 for t in templates):
            raise ValueError(f"Every template needs exactly one '{{}}': {list(templates)}")
        self.encode_fn = encode_fn
        self.cache_key_prefix = cache_key
        self.templates = tuple(templates)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.batch_size = batch_size
        self._memory: Dict[Tuple[Tuple[str, ...], ...], Tuple[Tensor, List[int]]] = {}

    def get(
        self, class_names: Sequence[str], device: Optional[torch.device] = None
    ) -> Tuple[Tensor, List[int]]:
        """The classifier of ``class_names``.

        Returns:
            (N, D) float32 rows, L2-normalised, the synonyms of class 0 first;
            and the number of synonyms of each of the K classes.
        """
        vocabulary = tuple(tuple(normalize_class_name(name)) for name in class_names)
        empty = [name for name, synonyms in zip(class_names, vocabulary) if not synonyms]
        if empty:
            raise ValueError(f"Class names without any synonym after normalisation: {empty}")
        if vocabulary not in self._memory:
            self._memory[vocabulary] = self._load_or_compute(vocabulary)
        classifier, num_synonyms = self._memory[vocabulary]
        if device is not None:
            classifier = classifier.to(device)
        return classifier, list(num_synonyms)

    def cache_key(self, vocabulary: Sequence[Sequence[str]]) -> str:
        """sha256 of the text tower's key (model and weights), templates and normalised names."""
        payload = json.dumps(
            {
                "text_tower": self.cache_key_prefix,
                "templates": list(self.templates),
                "names": [list(synonyms) for synonyms in vocabulary],
            },
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def _cache_path(self, vocabulary: Sequence[Sequence[str]]) -> Optional[Path]:
        if self.cache_dir is None or not self.cache_key_prefix:
            return None
        return self.cache_dir / f"text_classifier_{self.cache_key(vocabulary)}.pt"

    def _load_or_compute(self, vocabulary: Tuple[Tuple[str, ...], ...]) -> Tuple[Tensor, List[int]]:
        path = self._cache_path(vocabulary)
        if path is not None and path.is_file():
            try:
                cached = torch.load(path, map_location="cpu", weights_only=True)
                logger.info("Text classifier of %d classes read from %s", len(vocabulary), path)
                return cached["classifier"], list(cached["num_synonyms"])
            except Exception as error:  # a damaged cache entry is recomputed, not fatal
                logger.warning("Ignoring unreadable text-classifier cache %s (%s); recomputing", path, error)
        classifier = self._compute([s for synonyms in vocabulary for s in synonyms])
        num_synonyms = [len(synonyms) for synonyms in vocabulary]
        if path is not None:
            self._write(path, classifier, num_synonyms)
        return classifier, num_synonyms

    @torch.no_grad()
    def _compute(self, synonyms: List[str]) -> Tensor:
        """(N, D): each synonym in all T templates, normalised, averaged, normalised again."""
        prompts = [template.format(s) for s in synonyms for template in self.templates]
        chunks = [
            self.encode_fn(prompts[start : start + self.batch_size]).float()
            for start in range(0, len(prompts), self.batch_size)
        ]
        embeddings = F.normalize(torch.cat(chunks), dim=-1)  # (N * T, D)
        embeddings = embeddings.view(len(synonyms), len(self.templates), -1).mean(dim=1)
        return F.normalize(embeddings, dim=-1)

    @staticmethod
    def _write(path: Path, classifier: Tensor, num_synonyms: List[int]) -> None:
        """Write atomically: a concurrent reader sees the old file or the whole new one."""
        with atomic_write(str(path), "wb") as f:
            torch.save({"classifier": classifier.detach().cpu(), "num_synonyms": num_synonyms}, f)
        logger.info("Text classifier cached in %s", path)
