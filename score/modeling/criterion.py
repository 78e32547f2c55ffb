"""Mask2Former's set criterion (Cheng et al. 2022, section 3.3 and 4.1).

After Hungarian matching (``matcher.py``), every query gets a class target:
its matched ground truth's class, or void (index K) when unmatched. The losses:

* ``loss_ce``: cross-entropy over K + 1 classes, void weighted by ``eos_coef``;
* ``loss_mask`` / ``loss_dice``: sigmoid BCE and dice between each matched
  mask and its target, on ``num_points`` points per mask chosen by PointRend's
  importance sampling (Kirillov et al. 2020): ``oversample_ratio`` x P random
  points, of which the ``importance_sample_ratio`` x P most uncertain
  (uncertainty -|logit|) are kept, plus uniform random ones.

Mask losses are summed over masks and divided by the number of target masks in
the batch, averaged over processes and at least 1. The same losses are computed
for every auxiliary prediction (deep supervision) with suffixes ``_0``, ``_1``, ...
The caller weights them with ``weight_dict``.

Shorthand: B batch, Q queries, K classes, T targets of an image, Mt matched
masks in the batch, P points, H x W mask size.
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.projects.point_rend.point_features import (
    get_uncertain_point_coords_with_randomness,
    point_sample,
)
from detectron2.utils import comm
from torch import Tensor, nn

from .matcher import HungarianMatcher

__all__ = ["SetCriterion", "dice_loss", "sigmoid_ce_loss"]

_LOSSES = ("labels", "masks")


def dice_loss(inputs: Tensor, targets: Tensor, num_masks: float) -> Tensor:
    """Dice loss of logits (Mt, P) against binary targets (Mt, P), summed and divided by num_masks."""
    inputs = inputs.sigmoid()
    numerator = 2 * (inputs * targets).sum(-1)
    denominator = inputs.sum(-1) + targets.sum(-1)
    loss = 1 - (numerator + 1) / (denominator + 1)
    return loss.sum() / num_masks


def sigmoid_ce_loss(inputs: Tensor, targets: Tensor, num_masks: float) -> Tensor:
    """Per-mask mean sigmoid BCE of logits (Mt, P), summed and divided by num_masks."""
    loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    return loss.mean(1).sum() / num_masks


def _uncertainty(logits: Tensor) -> Tensor:
    """PointRend's uncertainty of class-agnostic mask logits (N, 1, P): -|logit|."""
    return -torch.abs(logits)


class SetCriterion(nn.Module):
    """Classification and point-sampled mask losses of matched predictions."""

    def __init__(
        self,
        num_classes: int,
        *,
        matcher: HungarianMatcher,
        weight_dict: Dict[str, float],
        eos_coef: float,
        losses: Sequence[str] = _LOSSES,
        num_points: int,
        oversample_ratio: float,
        importance_sample_ratio: float,
    ):
        """
        Args:
            num_classes: number of classes K (void is index K).
            matcher: assigns queries to targets.
            weight_dict: weight of every loss name the caller keeps (final and ``_i`` aux).
            eos_coef: cross-entropy weight of the void class.
            losses: which losses to compute, among "labels" (loss_ce) and "masks" (loss_mask, loss_dice).
            num_points: points P per mask for the mask losses.
            oversample_ratio: candidates drawn per kept point for importance sampling (>= 1).
            importance_sample_ratio: share of the P points chosen by uncertainty, in [0, 1].
        """
        super().__init__()
        unknown = set(losses) - set(_LOSSES)
        if unknown:
            raise ValueError(f"unknown losses {sorted(unknown)}; choose among {_LOSSES}")
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = weight_dict
        self.eos_coef = eos_coef
        self.losses = list(losses)
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight)
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio

    def loss_labels(
        self,
        outputs: Dict[str, Tensor],
        targets: List[Dict[str, Tensor]],
        indices: List[Tuple[Tensor, Tensor]],
        num_masks: float,
    ) -> Dict[str, Tensor]:
        """``loss_ce``: cross-entropy of ``pred_logits`` (B, Q, K + 1); unmatched queries are void."""
        logits = outputs["pred_logits"].float()
        if logits.shape[-1] != self.num_classes + 1:
            raise ValueError(
                f"pred_logits has {logits.shape[-1]} classes, expected K + 1 = {self.num_classes + 1}"
            )
        batch_idx, query_idx = self._query_permutation(indices)
        target_classes = torch.full(
            logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device
        )
        target_classes[batch_idx, query_idx] = torch.cat(
            [t["labels"][j] for t, (_, j) in zip(targets, indices)]
        ).to(logits.device)
        loss_ce = F.cross_entropy(logits.transpose(1, 2), target_classes, self.empty_weight)
        return {"loss_ce": loss_ce}

    def loss_masks(
        self,
        outputs: Dict[str, Tensor],
        targets: List[Dict[str, Tensor]],
        indices: List[Tuple[Tensor, Tensor]],
        num_masks: float,
    ) -> Dict[str, Tensor]:
        """``loss_mask`` and ``loss_dice`` of the matched masks on importance-sampled points."""
        batch_idx, query_idx = self._query_permutation(indices)
        src_masks = outputs["pred_masks"][batch_idx, query_idx][:, None]  # (Mt, 1, H, W)
        if len(src_masks) == 0:
            # No target in the batch: zero losses that keep the graph connected.
            zero = outputs["pred_masks"].sum() * 0.0
            return {"loss_mask": zero, "loss_dice": zero.clone()}
        target_masks = torch.cat([t["masks"][j] for t, (_, j) in zip(targets, indices)])
        target_masks = target_masks.to(src_masks)[:, None]  # (Mt, 1, H', W')

        with torch.no_grad():
            point_coords = get_uncertain_point_coords_with_randomness(
                src_masks, _uncertainty, self.num_points, self.oversample_ratio, self.importance_sample_ratio
            )
            point_labels = point_sample(target_masks, point_coords, align_corners=False).squeeze(1)
        point_logits = point_sample(src_masks, point_coords, align_corners=False).squeeze(1)
        return {
            "loss_mask": sigmoid_ce_loss(point_logits, point_labels, num_masks),
            "loss_dice": dice_loss(point_logits, point_labels, num_masks),
        }

    @staticmethod
    def _query_permutation(indices: List[Tuple[Tensor, Tensor]]) -> Tuple[Tensor, Tensor]:
        """(image index, query index) of every matched pair, image by image."""
        batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
        query_idx = torch.cat([src for src, _ in indices])
        return batch_idx, query_idx

    def _num_masks(self, targets: List[Dict[str, Tensor]], device: torch.device) -> float:
        """Target masks per process, averaged over processes, at least 1."""
        num_masks = torch.as_tensor(
            [float(sum(len(t["labels"]) for t in targets))], dtype=torch.float, device=device
        )
        world_size = comm.get_world_size()
        if world_size > 1:
            torch.distributed.all_reduce(num_masks)
        return torch.clamp(num_masks / world_size, min=1).item()

    def get_loss(
        self,
        loss: str,
        outputs: Dict[str, Tensor],
        targets: List[Dict[str, Tensor]],
        indices,
        num_masks: float,
    ) -> Dict[str, Tensor]:
        return {"labels": self.loss_labels, "masks": self.loss_masks}[loss](
            outputs, targets, indices, num_masks
        )

    def forward(self, outputs: Dict[str, object], targets: List[Dict[str, Tensor]]) -> Dict[str, Tensor]:
        """Unweighted losses of the final prediction and of every ``aux_outputs`` entry.

        Args:
            outputs: ``pred_logits`` (B, Q, K + 1), ``pred_masks`` (B, Q, H, W) and
                optionally ``aux_outputs``, a list of dicts with the same two keys.
            targets: per image, ``labels`` (T,) int64 and ``masks`` (T, H', W') (float or
                bool; the same size for every image, e.g. the padded image size).

        Returns:
            ``loss_ce``, ``loss_mask``, ``loss_dice`` and the same with ``_i`` for aux i.
        """
        final = {k: v for k, v in outputs.items() if k != "aux_outputs"}
        num_masks = self._num_masks(targets, final["pred_logits"].device)

        indices = self.matcher(final, targets)
        losses = {}
        for loss in self.losses:
            losses.update(self.get_loss(loss, final, targets, indices, num_masks))
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            indices = self.matcher(aux, targets)
            for loss in self.losses:
                losses.update(
                    {f"{k}_{i}": v for k, v in self.get_loss(loss, aux, targets, indices, num_masks).items()}
                )
        return losses

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, eos_coef={self.eos_coef}, losses={self.losses}, "
            f"num_points={self.num_points}, oversample_ratio={self.oversample_ratio}, "
            f"importance_sample_ratio={self.importance_sample_ratio}"
        )
