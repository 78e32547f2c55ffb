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


def _bilinear_at(masks, coords):
    """Values of masks (N, H, W) at normalised points (N, P, 2) in [0, 1] (x, y), bilinear with
    pixel centres at (i + 0.5) / size and zeros outside, as PointRend's point_sample samples."""
    n, height, width = masks.shape
    x = coords[..., 0] * width - 0.5
    y = coords[..., 1] * height - 0.5
    x0, y0 = x.floor(), y.floor()
    values = torch.zeros(coords.shape[:2])
    for dx in (0, 1):
        for dy in (0, 1):
            xi, yi = x0 + dx, y0 + dy
            weight = (1 - (x - xi).abs()) * (1 - (y - yi).abs())
            inside = (xi >= 0) & (xi < width) & (yi >= 0) & (yi < height)
            flat = (yi.clamp(0, height - 1) * width + xi.clamp(0, width - 1)).long()
            values += torch.where(inside, weight * masks.flatten(1).gather(1, flat), 0.0)
    return values


def _bce(logits, targets):
    """Sigmoid BCE of every point: -(y log s(x) + (1 - y) log(1 - s(x)))."""
    return -(targets * F.logsigmoid(logits) + (1 - targets) * F.logsigmoid(-logits))


def _dice(logits, targets):
    """1 - (2 sum(s(x) y) + 1) / (sum s(x) + sum y + 1) over the points."""
    probs = logits.sigmoid()
    return 1 - (2 * (probs * targets).sum(-1) + 1) / (probs.sum(-1) + targets.sum(-1) + 1)


def test_matcher_cost_matrix_equals_a_direct_computation_on_the_same_points():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(5, K + 1, generator=g)
    masks = 3 * torch.randn(5, 12, 10, generator=g)
    labels = torch.tensor([1, 0, 1])
    target_masks = (torch.rand(3, 24, 20, generator=g) > 0.5).float()
    matcher = HungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=3.0, num_points=64)
    torch.manual_seed(7)
    cost = matcher.image_cost(logits, masks, labels, target_masks)
    torch.manual_seed(7)  # the matcher draws its uniform points with torch.rand
    coords = torch.rand(1, 64, 2)

    pred = _bilinear_at(masks, coords.expand(5, -1, -1))
    target = _bilinear_at(target_masks, coords.expand(3, -1, -1))
    probs = logits.softmax(-1)
    expected = torch.empty(5, 3)
    for q in range(5):
        for t in range(3):
            expected[q, t] = (
                -2.0 * probs[q, labels[t]]
                + 5.0 * _bce(pred[q], target[t]).mean()
                + 3.0 * _dice(pred[q], target[t])
            )
    torch.testing.assert_close(cost, expected, atol=1e-5, rtol=1e-5)


def test_matcher_assignment_has_the_minimal_total_cost():
    import itertools

    g = torch.Generator().manual_seed(4)
    outputs = {
        "pred_logits": torch.randn(1, 5, K + 1, generator=g),
        "pred_masks": torch.randn(1, 5, 8, 8, generator=g),
    }
    targets = [
        {"labels": torch.tensor([0, 1, 1]), "masks": (torch.rand(3, 16, 16, generator=g) > 0.5).float()}
    ]
    matcher = HungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=32)
    torch.manual_seed(5)
    ((rows, cols),) = matcher(outputs, targets)
    torch.manual_seed(5)
    cost = matcher.image_cost(
        outputs["pred_logits"][0], outputs["pred_masks"][0], targets[0]["labels"], targets[0]["masks"]
    )
    best = min(sum(cost[q, t] for t, q in enumerate(qs)) for qs in itertools.permutations(range(5), 3))
    torch.testing.assert_close(cost[rows, cols].sum(), best)


def test_mask_losses_equal_a_direct_computation_on_the_sampled_points(monkeypatch):
    import score.modeling.criterion as criterion_module

    drawn = {}
    real = criterion_module.get_uncertain_point_coords_with_randomness

    def recording(*args, **kwargs):
        drawn["coords"] = real(*args, **kwargs)
        return drawn["coords"]

    monkeypatch.setattr(criterion_module, "get_uncertain_point_coords_with_randomness", recording)
    outputs = random_outputs(batch=2, queries=4, size=(8, 12), num_aux=0, seed=5)
    targets = [
        {"labels": torch.tensor([0, 1]), "masks": half_masks(16, 24)},
        {"labels": torch.tensor([1]), "masks": half_masks(16, 24)[1:]},
    ]
    criterion = make_criterion(num_aux=0, num_points=50)
    torch.manual_seed(0)
    indices = criterion.matcher(outputs, targets)
    torch.manual_seed(0)
    losses = criterion(outputs, targets)

    pred = torch.cat([outputs["pred_masks"][b, rows] for b, (rows, _) in enumerate(indices)]).detach()
    target = torch.cat([t["masks"][cols] for t, (_, cols) in zip(targets, indices)])
    coords = drawn["coords"]
    assert coords.shape == (3, 50, 2)
    point_logits = _bilinear_at(pred, coords)
    point_labels = _bilinear_at(target, coords)
    num_masks = 3
    torch.testing.assert_close(
        losses["loss_mask"], _bce(point_logits, point_labels).mean(-1).sum() / num_masks
    )
    torch.testing.assert_close(losses["loss_dice"], _dice(point_logits, point_labels).sum() / num_masks)
    # PointRend importance sampling: 3/4 of the points are the most uncertain of 3 x 50 candidates,
    # so they lie nearer the mask boundary (logit 0) than uniform points do.
    uniform = _bilinear_at(pred, torch.rand(3, 50, 2)).abs().mean()
    assert point_logits.abs().mean() < uniform
