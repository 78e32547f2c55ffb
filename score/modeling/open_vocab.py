"""Open-vocabulary pieces shared by the heads: mask pooling and text-classifier logits.

Shorthand: B batch, Q queries, C feature channels, D joint embedding width,
N text-classifier rows (one per synonym), K classes, h x w feature size.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["mask_pool", "classification_logits", "synonym_class_index", "geometric_ensemble"]

_EPS = 1e-8


def mask_pool(features: Tensor, mask_logits: Tensor, soft_slope: Optional[float] = None) -> Tensor:
    """Average ``features`` (B, C, h, w) inside each query's mask -> (B, Q, C).

    ``mask_logits`` (B, Q, h', w') are resized bilinearly (align_corners False)
    to h x w. Hard pooling (``soft_slope`` None) weighs pixels by M > 0 and
    passes no gradient to the masks (FC-CLIP's MaskPooling); soft pooling
    weighs them by sigmoid(soft_slope * (M - 0.5)) and keeps the gradient
    (SCORE.md 5.2, Gumbel phase). Either way the weights are divided by their
    sum + 1e-8, so an empty mask pools to zeros.
    """
    if mask_logits.shape[-2:] != features.shape[-2:]:
        mask_logits = F.interpolate(
            mask_logits, size=features.shape[-2:], mode="bilinear", align_corners=False
        )
    if soft_slope is None:
        weights = (mask_logits.detach() > 0).float()
    else:
        weights = torch.sigmoid(soft_slope * (mask_logits.float() - 0.5))
    # Normalised in float32: in float16 the 1e-8 would round to 0 and an
    # empty mask would pool to 0 / 0.
    weights = weights / (weights.sum(dim=(-2, -1), keepdim=True) + _EPS)
    return torch.einsum("bchw,bqhw->bqc", features, weights.to(features.dtype))


def synonym_class_index(num_synonyms: Sequence[int], device=None) -> Tensor:
    """Class id (N,) of every text-classifier row, from the synonyms per class."""
    counts = torch.as_tensor(list(num_synonyms), device=device)
    return torch.repeat_interleave(torch.arange(len(counts), device=device), counts)


def classification_logits(
    embeddings: Tensor, classifier: Tensor, logit_scale: Tensor, num_synonyms: Sequence[int]
) -> Tensor:
    """Logits of SCORE.md 7.1: (B, Q, D) embeddings against a text classifier -> (B, Q, K + 1).

    ``classifier`` is (N + 1, D), or (B, N + 1, D) when adapted per image;
    its rows are the synonyms of the K classes in order
    (``num_synonyms[k]`` rows for class k) and one void row last. Rows are
    used as given (the text rows are L2-normalised when built, the void row
    by its owner); the embeddings are L2-normalised here. A class's logit is
    the maximum over its synonyms; the void logit is last.
    """
    scale = torch.clamp(logit_scale.exp(), max=100)
    embeddings = F.normalize(embeddings, dim=-1)
    classifier = classifier.to(embeddings.dtype)
    if classifier.dim() == 2:
        row_logits = scale * embeddings @ classifier.t()
    else:
        row_logits = scale * embeddings @ classifier.transpose(-1, -2)
    synonym_logits, void_logit = row_logits[..., :-1], row_logits[..., -1:]
    index = synonym_class_index(num_synonyms, device=row_logits.device)
    if len(index) != synonym_logits.shape[-1]:
        raise ValueError(
            f"classifier has {synonym_logits.shape[-1]} synonym rows but num_synonyms sums to {len(index)}"
        )
    num_classes = len(num_synonyms)
    class_logits = synonym_logits.new_full((*synonym_logits.shape[:-1], num_classes), float("-inf"))
    class_logits = class_logits.scatter_reduce(
        -1, index.expand_as(synonym_logits), synonym_logits, reduce="amax", include_self=True
    )
    return torch.cat([class_logits, void_logit], dim=-1)


def geometric_ensemble(
    in_vocab_logits: Tensor,
    out_vocab_logits: Tensor,
    seen: Tensor,
    alpha: float,
    beta: float,
    valid: Optional[Tensor] = None,
) -> Tensor:
    """Open-vocabulary ensemble of SCORE.md 7.3 -> final logits (B, Q, K + 1).

    Args:
        in_vocab_logits: (B, Q, K + 1) logits of the final prediction, void last.
        out_vocab_logits: (B, Q, K + 1) logits of the frozen CLIP, void last (ignored).
        seen: (K,) bool, True where the class name appears in the training vocabulary.
        alpha: exponent of the out-vocabulary probability for seen classes.
        beta: the same for unseen classes.
        valid: optional (B, Q) bool; where False, the query keeps its
            in-vocabulary probabilities (ENSEMBLE_ON_VALID_MASK).

    p_in and p_out are softmaxes over the K classes (void removed); the class
    probability is p_in^(1 - e) * p_out^e with e = alpha (seen) or beta
    (unseen); it is renormalised over K, scaled by 1 - p_void with p_void from
    the in-vocabulary softmax including void, and void is appended.
    """
    # log(p_in^(1-e) p_out^e) from log-softmaxes: finite even where a
    # probability underflows to 0 (the logit scale reaches 100).
    log_p_in = in_vocab_logits[..., :-1].log_softmax(-1)
    log_p_out = out_vocab_logits[..., :-1].log_softmax(-1)
    exponent = torch.where(seen.to(log_p_in.device), alpha, beta).to(log_p_in.dtype)
    if valid is not None:
        exponent = exponent * valid.to(log_p_in.dtype).unsqueeze(-1)
    log_p = torch.lerp(log_p_in, log_p_out, exponent)
    void = in_vocab_logits.softmax(-1)[..., -1:]
    probs = torch.cat([log_p.softmax(-1) * (1.0 - void), void], dim=-1)
    return torch.log(probs + _EPS)
