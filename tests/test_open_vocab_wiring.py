"""Wiring of the open-vocabulary path at the meta-architecture level (SCORE.md 6, 7.1, 7.3).

Each test recomputes one link of ``SCORE.forward`` directly, from the model's
own modules, and compares it with what the model passes on at the call site:
the classifier handed to the head (GCA before the void row), the
out-of-vocabulary logits (``clip_vis_dense``, hard mask pooling, the ConvNeXt
head, the original classifier plus void, the ConvNeXt CLIP's own logit scale)
and the ensemble (alpha for seen, beta for unseen, ENSEMBLE_ON_VALID_MASK,
void from the in-vocabulary softmax).
"""

import math

import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling import build_model

import score.meta_arch
from score.config import get_score_cfg
from tests.conftest import tiny_cfg

ALPHA, BETA = 0.25, 0.75  # not the defaults
NUM_EMPTY = 5  # queries whose mask is forced empty


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    # Exponents other than the defaults, through the config keys the model reads.
    model = build_model(
        tiny_cfg(
            "MODEL.SCORE.GEOMETRIC_ENSEMBLE_ALPHA",
            str(ALPHA),
            "MODEL.SCORE.GEOMETRIC_ENSEMBLE_BETA",
            str(BETA),
        )
    ).eval()
    # Two distinct logit scales, so that using the head's instead of the CLIP's shows.
    with torch.no_grad():
        model.backbone.logit_scale.fill_(math.log(30.0))
        model.sem_seg_head.predictor.logit_scale.fill_(math.log(60.0))
        model.void_embedding.weight.normal_()
    train = model.train_class_names
    # Three seen classes and two unseen ones.
    model.set_vocabulary([train[0], train[3], "solar panel", train[5], "wind turbine"], train)
    return model


def _inputs(make_inputs):
    inputs = make_inputs([(96, 128)])
    del inputs[0]["instances"]
    return inputs


def _run(model, make_inputs, monkeypatch):
    """Run inference; return the head's inputs and outputs and the logits of instance inference."""
    seen = {}

    def pre_hook(module, args):
        seen["head_args"] = args

    def hook(module, args, outputs):
        # Some queries get an empty mask, so that ENSEMBLE_ON_VALID_MASK matters.
        outputs["pred_masks"][:, :NUM_EMPTY] = -10.0
        seen["outputs"] = {k: v for k, v in outputs.items() if k != "aux_outputs"}

    captured_logits = []

    def fake_instance_inference(class_logits, mask_logits, **kwargs):
        captured_logits.append(class_logits)
        from detectron2.structures import Instances

        return Instances(kwargs["output_size"])

    monkeypatch.setattr(score.meta_arch, "instance_inference", fake_instance_inference)
    handles = [
        model.sem_seg_head.register_forward_pre_hook(pre_hook),
        model.sem_seg_head.register_forward_hook(hook),
    ]
    try:
        with torch.no_grad():
            model(_inputs(make_inputs))
    finally:
        for h in handles:
            h.remove()
    seen["class_logits"] = torch.stack(captured_logits)
    return seen


def _direct_reference(model, make_inputs, outputs):
    """Everything recomputed directly from the model's modules and the head's outputs."""
    with torch.no_grad():
        images = model.preprocess_image(_inputs(make_inputs))
        features = model.backbone(images.tensor)
        context = model.context_encoder(images.tensor)
        classifier, num_synonyms = model.text_classifiers.get(model.test_class_names)
        adapted = model.gca(classifier, context.global_embed)  # (B, N, D)
        void = F.normalize(model.void_embedding.weight, dim=-1)  # (1, D)
        head_classifier = torch.cat([adapted, void.expand(adapted.shape[0], -1, -1)], dim=1)

        # Out-of-vocabulary logits: hard-pooled clip_vis_dense through the ConvNeXt head,
        # against the original classifier plus void, with the CLIP's logit scale.
        dense = features["clip_vis_dense"]  # (B, C, h, w)
        masks = F.interpolate(
            outputs["pred_masks"], size=dense.shape[-2:], mode="bilinear", align_corners=False
        )
        weights = (masks > 0).float()
        pooled = (dense[:, None] * weights[:, :, None]).sum((-2, -1)) / (
            weights.sum((-2, -1))[..., None] + 1e-8
        )
        embeddings = F.normalize(model.backbone.pooled_to_embedding(pooled), dim=-1)  # (B, Q, D)
        rows = torch.cat([classifier, void], dim=0)
        row_logits = model.backbone.logit_scale.exp().clamp(max=100) * embeddings @ rows.t()
        per_class, start = [], 0
        for n in num_synonyms:
            per_class.append(row_logits[..., start : start + n].max(-1).values)
            start += n
        out_logits = torch.stack(per_class + [row_logits[..., -1]], dim=-1)
        valid = (masks > 0).flatten(2).any(-1)  # (B, Q)
    return head_classifier, num_synonyms, out_logits, valid


def _ensemble(in_logits, out_logits, seen, valid, alpha, beta):
    """SCORE.md 7.3 written out with probabilities."""
    p_in = in_logits[..., :-1].softmax(-1)
    p_out = out_logits[..., :-1].softmax(-1)
    e = torch.where(seen, torch.tensor(alpha), torch.tensor(beta)).expand_as(p_in).clone()
    if valid is not None:
        e[~valid] = 0.0
    p = p_in ** (1 - e) * p_out**e
    p = p / p.sum(-1, keepdim=True)
    p_void = in_logits.softmax(-1)[..., -1:]
    return torch.log(torch.cat([p * (1 - p_void), p_void], dim=-1) + 1e-8)


def test_vocabulary_has_seen_and_unseen(model):
    assert model._seen.tolist() == [True, True, False, True, False]


def test_head_gets_gca_adapted_rows_then_void(model, make_inputs, monkeypatch):
    seen = _run(model, make_inputs, monkeypatch)
    head_classifier, num_synonyms, _, _ = _direct_reference(model, make_inputs, seen["outputs"])
    _, classifier, head_synonyms, _ = seen["head_args"]
    assert list(head_synonyms) == list(num_synonyms)
    torch.testing.assert_close(classifier, head_classifier, rtol=1e-5, atol=1e-6)
    # The void row is the normalised void embedding itself, untouched by GCA.
    torch.testing.assert_close(
        classifier[:, -1], F.normalize(model.void_embedding.weight, dim=-1).expand(1, -1)
    )


def test_out_of_vocabulary_logits(model, make_inputs, monkeypatch):
    seen = _run(model, make_inputs, monkeypatch)
    _, _, out_logits, valid = _direct_reference(model, make_inputs, seen["outputs"])
    with torch.no_grad():
        images = model.preprocess_image(_inputs(make_inputs))
        features = model.backbone(images.tensor)
        context = model.context_encoder(images.tensor)
        logits, model_valid = model.out_vocab_logits(features, context, seen["outputs"]["pred_masks"])
    torch.testing.assert_close(logits, out_logits, rtol=1e-5, atol=1e-4)
    assert torch.equal(model_valid, valid)
    assert not valid[:, :NUM_EMPTY].any() and valid[:, NUM_EMPTY:].any()


@pytest.mark.parametrize("on_valid_mask", [True, False])
def test_final_logits_are_the_ensemble(model, make_inputs, monkeypatch, on_valid_mask):
    monkeypatch.setattr(model, "ensemble_on_valid_mask", on_valid_mask)
    seen = _run(model, make_inputs, monkeypatch)
    _, _, out_logits, valid = _direct_reference(model, make_inputs, seen["outputs"])
    expected = _ensemble(
        seen["outputs"]["pred_logits"], out_logits, model._seen, valid if on_valid_mask else None, ALPHA, BETA
    )
    torch.testing.assert_close(seen["class_logits"], expected, rtol=1e-4, atol=1e-4)
    # ... and not the ensemble with the default exponents: the model used the configured ones.
    defaults = get_score_cfg().MODEL.SCORE
    assert (defaults.GEOMETRIC_ENSEMBLE_ALPHA, defaults.GEOMETRIC_ENSEMBLE_BETA) != (ALPHA, BETA)
    for alpha, beta in ((defaults.GEOMETRIC_ENSEMBLE_ALPHA, BETA), (ALPHA, defaults.GEOMETRIC_ENSEMBLE_BETA)):
        other = _ensemble(
            seen["outputs"]["pred_logits"],
            out_logits,
            model._seen,
            valid if on_valid_mask else None,
            alpha,
            beta,
        )
        assert not torch.allclose(seen["class_logits"], other, rtol=1e-4, atol=1e-4), (alpha, beta)
    # Void comes from the in-vocabulary softmax alone.
    p_void = seen["outputs"]["pred_logits"].softmax(-1)[..., -1]
    torch.testing.assert_close(seen["class_logits"][..., -1].exp(), p_void + 1e-8, rtol=1e-5, atol=1e-6)
    if on_valid_mask:
        # A query with an empty mask keeps its in-vocabulary class probabilities.
        p_in = seen["outputs"]["pred_logits"][:, :NUM_EMPTY].softmax(-1)
        torch.testing.assert_close(
            seen["class_logits"][:, :NUM_EMPTY].exp(), p_in + 1e-8, rtol=1e-4, atol=1e-6
        )
