"""Hungarian matching of predictions to ground-truth instances (Mask2Former, Cheng et al. 2022).

For each image, the cost of assigning query q to target t is

    cost_class * (-p_q(class_t)) + cost_mask * BCE(q, t) + cost_dice * dice(q, t),

with p_q the softmax over K + 1 classes and both mask costs computed on
``num_points`` points sampled uniformly in the image, the same points for every
prediction and target (Mask2Former section 3.3, "efficient training"). The
one-to-one assignment of minimal total cost is found with
``scipy.optimize.linear_sum_assignment``.

Shorthand: B batch, Q queries, K classes, T targets of an image, P points,
H x W mask size.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from detectron2.projects.point_rend.point_features import point_sample
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

__all__ = ["HungarianMatcher", "batch_dice_cost", "batch_sigmoid_ce_cost"]


def batch_dice_cost(inputs: Tensor, targets: Tensor) -> Tensor:
    """Dice loss of every pair: logits (Q, P) and binary targets (T, P) -> (Q, T)."""
    inputs = inputs.sigmoid()
    numerator = 2 * torch.einsum("qp,tp->qt", inputs, targets)
    denominator = inputs.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


def batch_sigmoid_ce_cost(inputs: Tensor, targets: Tensor) -> Tensor:
    """Mean sigmoid BCE of every pair: logits (Q, P) and binary targets (T, P) -> (Q, T)."""
    num_points = inputs.shape[1]
    pos = F.binary_cross_entropy_with_logits(inputs, torch.ones_like(inputs), reduction="none")
    neg = F.binary_cross_entropy_with_logits(inputs, torch.zeros_like(inputs), reduction="none")
    loss = torch.einsum("qp,tp->qt", pos, targets) + torch.einsum("qp,tp->qt", neg, 1 - targets)
    return loss / num_points


class HungarianMatcher(nn.Module):
    """One-to-one matching of the Q predictions of each image to its targets."""

    def __init__(
        self,
        *,
        cost_class: float = 1.0,
        cost_mask: float = 1.0,
        cost_dice: float = 1.0,
        num_points: int = 12544,
    ):
        """
        Args:
            cost_class: weight of the class cost (minus the target class's probability).
            cost_mask: weight of the sigmoid BCE cost.
            cost_dice: weight of the dice cost.
            num_points: points sampled per image for the mask costs.
        """
        super().__init__()
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError("all costs are 0")
        if num_points <= 0:
            raise ValueError(f"num_points must be positive, got {num_points}")
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.num_points = num_points

    @torch.no_grad()
    def image_cost(self, logits: Tensor, masks: Tensor, labels: Tensor, target_masks: Tensor) -> Tensor:
        """Cost matrix (Q, T) of one image: logits (Q, K + 1), mask logits (Q, H, W), labels (T,),
        target masks (T, H', W') (any size: points are in normalised coordinates)."""
        cost_class = -logits.float().softmax(-1)[:, labels]
        point_coords = torch.rand(1, self.num_points, 2, device=masks.device)
        target_points = point_sample(
            target_masks[:, None].to(masks), point_coords.repeat(len(target_masks), 1, 1), align_corners=False
        ).squeeze(1)
        pred_points = point_sample(
            masks[:, None], point_coords.repeat(len(masks), 1, 1), align_corners=False
        ).squeeze(1)
        # Costs in float32 whatever the autocast state: BCE of half logits overflows.
        with torch.autocast(device_type=masks.device.type, enabled=False):
            pred_points = pred_points.float()
            target_points = target_points.float()
            cost_mask = batch_sigmoid_ce_cost(pred_points, target_points)
            cost_dice = batch_dice_cost(pred_points, target_points)
        return self.cost_class * cost_class + self.cost_mask * cost_mask + self.cost_dice * cost_dice

    @torch.no_grad()
    def forward(
        self, outputs: Dict[str, Tensor], targets: List[Dict[str, Tensor]]
    ) -> List[Tuple[Tensor, Tensor]]:
        """Match each image's queries to its targets.

        Args:
            outputs: ``pred_logits`` (B, Q, K + 1) and ``pred_masks`` (B, Q, H, W).
            targets: per image, ``labels`` (T,) int64 and ``masks`` (T, H', W').

        Returns:
            Per image, (query indices, target indices), both int64 of length min(Q, T),
            query indices increasing.
        """
        indices = []
        for b, target in enumerate(targets):
            labels = target["labels"]
            if len(labels) == 0:
                empty = torch.empty(0, dtype=torch.int64)
                indices.append((empty, empty.clone()))
                continue
            cost = self.image_cost(
                outputs["pred_logits"][b], outputs["pred_masks"][b], labels, target["masks"]
            )
            rows, cols = linear_sum_assignment(cost.cpu().numpy())
            indices.append(
                (torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64))
            )
        return indices

    def extra_repr(self) -> str:
        return (
            f"cost_class={self.cost_class}, cost_mask={self.cost_mask}, "
            f"cost_dice={self.cost_dice}, num_points={self.num_points}"
        )
