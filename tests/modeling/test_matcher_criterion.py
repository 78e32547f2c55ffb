"""Hungarian matcher and Mask2Former set criterion (SCORE.md 8)."""

import score  # noqa: F401, I001  (first: its shims let detectron2 import without detectron2._C)

# isort: split
import pytest
import torch
import torch.nn.functional as F

from score.modeling.criterion import SetCriterion
from score.modeling.matcher import HungarianMatcher
from score.modeling.transformer_decoder.score_transformer_decoder import (
    SCOREMultiScaleMaskedTransformerDecoder,
)

K = 2  # classes; void is index K


def make_criterion(num_aux=2, matcher=None, num_points=256) -> SetCriterion:
    final = {"loss_ce": 2.0, "loss_mask": 5.0, "loss_dice": 5.0}
    weight_dict = dict(final)
    for i in range(num_aux):
        weight_dict.update({f"{k}_{i}": v for k, v in final.items()})
    return SetCriterion(
        K,
        matcher=matcher
        or HungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=num_points),
        weight_dict=weight_dict,
        eos_coef=0.1,
        losses=["labels", "masks"],
        num_points=num_points,
        oversample_ratio=3.0,
        importance_sample_ratio=0.75,
    )


def half_masks(height=16, width=16):
    """Two targets at the padded image size: the left half and the right half."""
    masks = torch.zeros(2, height, width)
    masks[0, :, : width // 2] = 1
    masks[1, :, width // 2 :] = 1
    return masks


def random_outputs(batch=2, queries=4, size=(8, 8), num_aux=2, seed=0):
    g = torch.Generator().manual_seed(seed)

    def one():
        return {
            "pred_logits": torch.randn(batch, queries, K + 1, generator=g).requires_grad_(),
            "pred_masks": torch.randn(batch, queries, *size, generator=g).requires_grad_(),
        }

    outputs = one()
    outputs["aux_outputs"] = [one() for _ in range(num_aux)]
    return outputs


def test_matcher_finds_optimal_class_assignment_where_greedy_fails():
    # Class-only cost -p: greedy would give target 0 to query 0 (0.5) and then only 0.05 is left for
    # target 1; the optimum is query 1 -> target 0 (0.45) and query 0 -> target 1 (0.45).
    probs = torch.tensor([[0.5, 0.45, 0.05], [0.45, 0.05, 0.5], [0.05, 0.05, 0.9]])
    outputs = {"pred_logits": probs.log()[None], "pred_masks": torch.zeros(1, 3, 4, 4)}
    targets = [{"labels": torch.tensor([0, 1]), "masks": torch.zeros(2, 16, 16)}]
    matcher = HungarianMatcher(cost_class=1.0, cost_mask=0.0, cost_dice=0.0, num_points=16)
    ((rows, cols),) = matcher(outputs, targets)
    assert rows.tolist() == [0, 1] and cols.tolist() == [1, 0]
    assert rows.dtype == torch.int64 and cols.dtype == torch.int64


def test_matcher_assigns_by_mask_overlap():
    torch.manual_seed(0)
    masks = torch.full((1, 3, 8, 8), -8.0)
    masks[0, 0, :, 4:] = 8.0  # query 0 predicts the right half
    masks[0, 2, :, :4] = 8.0  # query 2 predicts the left half; query 1 predicts nothing
    outputs = {"pred_logits": torch.zeros(1, 3, K + 1), "pred_masks": masks}
    targets = [{"labels": torch.tensor([1, 1]), "masks": half_masks(32, 32)}]
    matcher = HungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=500)
    ((rows, cols),) = matcher(outputs, targets)
    assert dict(zip(rows.tolist(), cols.tolist())) == {0: 1, 2: 0}


def test_matcher_handles_an_image_without_targets():
    outputs = random_outputs(batch=2, num_aux=0)
    targets = [
        {"labels": torch.tensor([1]), "masks": half_masks()[:1]},
        {"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 16, 16)},
    ]
    indices = HungarianMatcher(num_points=64)(outputs, targets)
    assert len(indices[0][0]) == 1 and len(indices[1][0]) == 0 and len(indices[1][1]) == 0


def test_loss_names_cover_final_and_aux_predictions_and_are_finite():
    torch.manual_seed(0)
    criterion = make_criterion(num_aux=2)
    outputs = random_outputs(num_aux=2)
    targets = [{"labels": torch.tensor([0, 1]), "masks": half_masks()} for _ in range(2)]
    losses = criterion(outputs, targets)
    assert set(losses) == set(criterion.weight_dict)
    assert set(losses) == {f"loss_{n}{s}" for n in ("ce", "mask", "dice") for s in ("", "_0", "_1")}
    assert all(torch.isfinite(v) for v in losses.values())
    assert "empty_weight" in criterion.state_dict()
    torch.testing.assert_close(criterion.empty_weight, torch.tensor([1.0, 1.0, 0.1]))


def test_loss_ce_is_weighted_cross_entropy_with_void_for_unmatched_queries():
    outputs = random_outputs(batch=2, queries=4, num_aux=0)
    targets = [
        {"labels": torch.tensor([0, 1]), "masks": half_masks()},
        {"labels": torch.tensor([1]), "masks": half_masks()[:1]},
    ]
    matcher = HungarianMatcher(cost_class=1.0, cost_mask=0.0, cost_dice=0.0, num_points=16)
    criterion = make_criterion(num_aux=0, matcher=matcher)
    indices = matcher(outputs, targets)
    target_classes = torch.full((2, 4), K)
    for b, (rows, cols) in enumerate(indices):
        target_classes[b, rows] = targets[b]["labels"][cols]
    logits = outputs["pred_logits"].detach().reshape(-1, K + 1)
    weights = torch.tensor([1.0, 1.0, 0.1])
    expected = F.cross_entropy(logits, target_classes.reshape(-1), weight=weights)
    loss = criterion(outputs, targets)["loss_ce"]
    torch.testing.assert_close(loss, expected)


def test_mask_losses_are_small_for_exact_masks_and_large_for_empty_ones():
    torch.manual_seed(0)
    targets = [{"labels": torch.tensor([0, 1]), "masks": half_masks(32, 32)}]
    exact = torch.where(half_masks(32, 32) > 0, 20.0, -20.0)[None]
    logits = torch.tensor([[[8.0, -8.0, -8.0], [-8.0, 8.0, -8.0]]])
    criterion = make_criterion(num_aux=0, num_points=512)
    good = criterion({"pred_logits": logits, "pred_masks": exact}, targets)
    bad = criterion({"pred_logits": logits, "pred_masks": torch.full_like(exact, -20.0)}, targets)
    # Importance sampling puts most points on the boundary between the halves, where both the
    # prediction and the target are interpolated: the exact masks do not reach exactly 0.
    assert good["loss_dice"] < 0.1 and good["loss_mask"] < 1.0
    assert bad["loss_dice"] > 0.9 and bad["loss_mask"] > 5.0
    assert good["loss_ce"] < 0.01


def test_images_without_targets():
    torch.manual_seed(0)
    criterion = make_criterion(num_aux=1)
    empty = {"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 16, 16)}

    outputs = random_outputs(num_aux=1)
    losses = criterion(outputs, [{"labels": torch.tensor([1]), "masks": half_masks()[:1]}, empty])
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert torch.isfinite(outputs["pred_masks"].grad).all()

    outputs = random_outputs(num_aux=1)
    losses = criterion(outputs, [empty, empty])
    assert losses["loss_mask"] == 0 and losses["loss_dice_0"] == 0
    assert losses["loss_ce"] > 0  # every query is pushed towards void
    sum(losses.values()).backward()
    assert torch.isfinite(outputs["pred_logits"].grad).all()


def test_unknown_loss_name_is_rejected():
    with pytest.raises(ValueError, match="unknown losses"):
        SetCriterion(
            K,
            matcher=HungarianMatcher(num_points=16),
            weight_dict={},
            eos_coef=0.1,
            losses=["labels", "boxes"],
            num_points=16,
            oversample_ratio=3.0,
            importance_sample_ratio=0.75,
        )


def test_a_few_steps_of_a_tiny_decoder_reduce_the_loss():
    torch.manual_seed(0)
    hidden, embed = 32, 16
    decoder = SCOREMultiScaleMaskedTransformerDecoder(
        in_channels=hidden,
        hidden_dim=hidden,
        num_queries=4,
        nheads=4,
        dim_feedforward=64,
        dec_layers=2,
        pre_norm=False,
        dropout=0.0,
        mask_dim=hidden,
        enforce_input_project=False,
        embed_dim=embed,
    )
    criterion = make_criterion(num_aux=2, num_points=256)
    g = torch.Generator().manual_seed(1)
    x = [torch.randn(1, hidden, 64 // s, 64 // s, generator=g) for s in (32, 16, 8)]
    mask_features = torch.randn(1, hidden, 16, 16, generator=g)
    classifier = F.normalize(torch.randn(K + 1, embed, generator=g), dim=-1)
    targets = [{"labels": torch.tensor([0, 1]), "masks": half_masks(64, 64)}]
    optimizer = torch.optim.Adam(decoder.parameters(), lr=1e-3)

    def total_loss():
        losses = criterion(decoder(x, mask_features, classifier, [1] * K), targets)
        return sum(v * criterion.weight_dict[k] for k, v in losses.items())

    history = []
    for _ in range(25):
        loss = total_loss()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    assert sum(history[-3:]) / 3 < 0.6 * history[0]
