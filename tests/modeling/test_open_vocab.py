"""Equations of SCORE.md 7.1 and 7.3 and FC-CLIP mask pooling against direct computations."""

import math

import pytest
import torch
import torch.nn.functional as F

from score.modeling.open_vocab import classification_logits, geometric_ensemble, mask_pool


def test_hard_mask_pool_is_mean_inside_positive_pixels():
    features = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    masks = torch.full((2, 2, 4, 4), -1.0)
    masks[0, 0, :2, :2] = 1.0  # four pixels
    masks[1, 1, 3, 3] = 5.0  # one pixel; query 0 of image 1 and query 1 of image 0 are empty
    pooled = mask_pool(features, masks)
    assert pooled.shape == (2, 2, 3)
    torch.testing.assert_close(pooled[0, 0], features[0, :, :2, :2].mean(dim=(-1, -2)))
    torch.testing.assert_close(pooled[1, 1], features[1, :, 3, 3])
    assert torch.all(pooled[0, 1] == 0) and torch.all(pooled[1, 0] == 0)


def test_hard_mask_pool_resizes_masks_and_passes_no_gradient():
    features = torch.randn(1, 5, 4, 4)
    masks = torch.randn(1, 3, 8, 8, requires_grad=True)
    pooled = mask_pool(features, masks)
    resized = F.interpolate(masks.detach(), size=(4, 4), mode="bilinear", align_corners=False)
    weights = (resized > 0).float()
    expected = torch.einsum(
        "bchw,bqhw->bqc", features, weights / (weights.sum((-1, -2), keepdim=True) + 1e-8)
    )
    torch.testing.assert_close(pooled, expected)
    assert not pooled.requires_grad


def test_soft_mask_pool_weights_and_gradient():
    features = torch.randn(1, 4, 3, 3)
    masks = torch.randn(1, 2, 3, 3, requires_grad=True)
    pooled = mask_pool(features, masks, soft_slope=10.0)
    w = torch.sigmoid(10.0 * (masks - 0.5))
    expected = torch.einsum("bchw,bqhw->bqc", features, w / (w.sum((-1, -2), keepdim=True) + 1e-8))
    torch.testing.assert_close(pooled, expected)
    pooled.sum().backward()
    assert masks.grad is not None and torch.isfinite(masks.grad).all() and masks.grad.abs().sum() > 0


def test_classification_logits_synonym_max_and_void_last():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8)
    rows = F.normalize(torch.randn(6, 8), dim=-1)  # class 0: 2 synonyms, class 1: 1, class 2: 2, void
    logit_scale = torch.tensor(math.log(1 / 0.07))
    logits = classification_logits(x, rows, logit_scale, [2, 1, 2])
    raw = min(math.exp(logit_scale.item()), 100) * F.normalize(x, dim=-1) @ rows.t()
    expected = torch.stack(
        [raw[..., 0:2].max(-1).values, raw[..., 2], raw[..., 3:5].max(-1).values, raw[..., 5]], dim=-1
    )
    torch.testing.assert_close(logits, expected)


def test_classification_logits_caps_scale_at_100_and_accepts_per_image_classifier():
    x = torch.randn(2, 4, 8)
    rows = F.normalize(torch.randn(2, 4, 8), dim=-1)  # per image: 3 classes + void
    logits = classification_logits(x, rows, torch.tensor(10.0), [1, 1, 1])
    expected = 100 * torch.einsum("bqd,bnd->bqn", F.normalize(x, dim=-1), rows)
    torch.testing.assert_close(logits, expected)


def test_classification_logits_rejects_wrong_synonym_count():
    with pytest.raises(ValueError, match="num_synonyms"):
        classification_logits(torch.randn(1, 2, 4), torch.randn(4, 4), torch.tensor(1.0), [1, 1])


def test_geometric_ensemble_seen_unseen_and_void():
    torch.manual_seed(1)
    in_logits = torch.randn(2, 5, 4)  # 3 classes + void
    out_logits = torch.randn(2, 5, 4)
    seen = torch.tensor([True, False, True])
    alpha, beta = 0.4, 0.8
    result = geometric_ensemble(in_logits, out_logits, seen, alpha, beta)

    p_in = in_logits[..., :3].softmax(-1)
    p_out = out_logits[..., :3].softmax(-1)
    e = torch.tensor([alpha, beta, alpha])
    p = p_in ** (1 - e) * p_out**e
    void = in_logits.softmax(-1)[..., 3:]
    probs = torch.cat([p / p.sum(-1, keepdim=True) * (1 - void), void], dim=-1)
    torch.testing.assert_close(result, torch.log(probs + 1e-8))


def _ensemble_direct(in_logits, out_logits, exponents):
    """SCORE.md 7.3 written out: p = p_in^(1 - e) p_out^e over the K classes (void removed),
    renormalised, times 1 - p_void of the in-vocabulary softmax with void; void appended."""
    p_in = in_logits[..., :-1].softmax(-1)
    p_out = out_logits[..., :-1].softmax(-1)
    p = p_in ** (1 - exponents) * p_out**exponents
    void = in_logits.softmax(-1)[..., -1:]
    return torch.log(torch.cat([p / p.sum(-1, keepdim=True) * (1 - void), void], dim=-1) + 1e-8)


def test_geometric_ensemble_valid_mask_keeps_in_vocabulary_for_empty_masks():
    torch.manual_seed(2)
    in_logits = torch.randn(2, 3, 4)  # 3 classes + void
    out_logits = torch.randn(2, 3, 4)
    seen = torch.tensor([True, False, True])
    valid = torch.tensor([[True, False, True], [False, True, True]])
    result = geometric_ensemble(in_logits, out_logits, seen, 0.4, 0.8, valid)

    ensembled = _ensemble_direct(in_logits, out_logits, torch.tensor([0.4, 0.8, 0.4]))
    # An empty mask keeps p_in: renormalised over K and times 1 - p_void, that is the
    # in-vocabulary softmax with void, unchanged.
    in_vocabulary = torch.log(in_logits.softmax(-1) + 1e-8)
    expected = torch.where(valid[..., None], ensembled, in_vocabulary)
    torch.testing.assert_close(result, expected)
    assert not torch.allclose(ensembled[~valid], in_vocabulary[~valid], atol=1e-3)


def test_geometric_ensemble_is_finite_when_probabilities_underflow():
    in_logits = torch.tensor([[[200.0, -200.0, 0.0]]])
    out_logits = torch.tensor([[[-200.0, 200.0, 0.0]]])
    result = geometric_ensemble(in_logits, out_logits, torch.tensor([True, True]), 1.0, 1.0)
    assert torch.isfinite(result).all()


@pytest.mark.parametrize("soft_slope", [None, 10.0])
def test_mask_pool_of_an_empty_mask_is_zero_in_float16(soft_slope):
    features = torch.randn(1, 4, 6, 6).half()
    masks = torch.full((1, 2, 6, 6), -30.0)
    masks[0, 1, 2:4, 2:4] = 3.0
    pooled = mask_pool(features, masks, soft_slope=soft_slope)
    assert pooled.dtype == torch.float16 and torch.isfinite(pooled).all()
    if soft_slope is None:
        assert torch.all(pooled[0, 0] == 0)
        torch.testing.assert_close(
            pooled[0, 1].float(), features[0, :, 2:4, 2:4].float().mean((-1, -2)), atol=1e-3, rtol=1e-3
        )
