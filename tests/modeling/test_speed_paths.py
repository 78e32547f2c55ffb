"""Speed paths against their references: RAI's single-token attention, the per-device
vocabulary classifier of the meta-architecture, the frozen-tower autocast key
(bfloat16 on the CPU too, so the key is exercised where the tests run), and the
class branch of the intermediate predictions, skipped at inference."""

import pytest
import torch
from torch import nn

from score.modeling.rai import RegionAwareIntegration
from score.modeling.single_token_encoder import single_token_attention, single_token_encoder


def _encoder(dropout: float = 0.0, layers: int = 2) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(
        d_model=16, nhead=4, dim_feedforward=32, dropout=dropout, activation="relu", batch_first=True
    )
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


@pytest.mark.parametrize("training", [False, True])
def test_single_token_encoder_matches_transformer_encoder(training):
    torch.manual_seed(0)
    encoder = _encoder().train(training)
    x = torch.randn(12, 1, 16, requires_grad=True)
    expected = encoder(x)
    got = single_token_encoder(encoder, x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)

    grad = torch.randn_like(expected)
    ref_grads = torch.autograd.grad(expected, [x, *encoder.parameters()], grad)
    new_grads = torch.autograd.grad(got, [x, *encoder.parameters()], grad)
    for ref, new in zip(ref_grads, new_grads):
        torch.testing.assert_close(new, ref, rtol=1e-4, atol=1e-6)
    # The query and key thirds of the input projection get a zero gradient, as with softmax over one key.
    in_proj_grad = new_grads[
        1 + [n for n, _ in encoder.named_parameters()].index("layers.0.self_attn.in_proj_weight")
    ]
    assert torch.count_nonzero(in_proj_grad[:32]) == 0 and torch.count_nonzero(in_proj_grad[32:]) > 0


def test_single_token_attention_dropout_drops_whole_heads():
    torch.manual_seed(0)
    encoder = _encoder(dropout=0.5, layers=1).train()
    attn = encoder.layers[0].self_attn
    x = torch.randn(400, 1, 16)
    out = single_token_attention(attn, x)
    # Undo the output projection: each head's 4 values are either all dropped or all scaled by 2.
    value = torch.nn.functional.linear(x, attn.in_proj_weight[32:], attn.in_proj_bias[32:])
    recovered = torch.linalg.solve(attn.out_proj.weight, (out - attn.out_proj.bias).squeeze(1).T).T
    recovered, value = recovered.view(400, 4, 4), value.view(400, 4, 4)
    dropped = recovered.abs().amax(-1) < 1e-4  # (tokens, heads)
    factor = torch.where(dropped, 0.0, 2.0)[..., None]
    torch.testing.assert_close(recovered, value * factor, rtol=1e-3, atol=1e-4)
    assert 0.3 < dropped.float().mean() < 0.7


def test_rai_keeps_its_state_dict_keys():
    rai = RegionAwareIntegration(embed_dim=16, nheads=4, dim_feedforward=32, num_layers=2)
    keys = set(rai.state_dict())
    assert "encoder.layers.0.self_attn.in_proj_weight" in keys
    assert "encoder.layers.1.linear2.bias" in keys


def test_vocabulary_classifier_is_kept_per_device_and_usable_for_training_after_inference_mode(make_inputs):
    from detectron2.modeling import build_model

    from tests.conftest import tiny_cfg

    torch.manual_seed(0)
    model = build_model(tiny_cfg()).eval()
    inputs = make_inputs([(64, 64)])
    with torch.inference_mode():
        model(inputs)
    classifier, num_synonyms = model.vocabulary_classifier(model.text_classifiers)
    expected, expected_synonyms = model.text_classifiers.get(model.class_names)
    torch.testing.assert_close(classifier, expected, rtol=0, atol=0)
    assert num_synonyms == expected_synonyms
    assert not classifier.is_inference()
    assert model.vocabulary_classifier(model.text_classifiers)[0] is classifier  # no copy per forward
    # The bank's classifier was built under inference mode; training must still work (GCA's autograd).
    model.train()
    losses = model(inputs)
    sum(losses.values()).backward()
    assert model.sem_seg_head.predictor.class_embed.layers[0].weight.grad is not None


def test_seen_flags_follow_the_vocabulary_and_are_not_saved():
    from detectron2.modeling import build_model

    from tests.conftest import tiny_cfg

    model = build_model(tiny_cfg())
    model.set_vocabulary(["ship", "dog"])
    assert model._seen.tolist() == [True, False]
    assert not any("_seen" in key for key in model.state_dict())


def test_frozen_towers_autocast_runs_the_tower_in_bf16_and_keeps_the_query_classes(make_inputs):
    from detectron2.modeling import build_model

    from tests.conftest import tiny_cfg

    torch.manual_seed(0)
    reference = build_model(tiny_cfg()).eval()
    bf16 = build_model(tiny_cfg("MODEL.SCORE.FROZEN_TOWERS_AUTOCAST", "bf16")).eval()
    bf16.load_state_dict(reference.state_dict())
    inputs = make_inputs([(64, 96)])
    for x in inputs:
        del x["instances"]
    stem_dtypes = []
    stem = bf16.backbone.clip_model.visual.trunk.stem[0]
    hook = stem.register_forward_hook(lambda module, args, out: stem_dtypes.append(out.dtype))
    heads = []
    for model in (reference, bf16):
        handle = model.sem_seg_head.register_forward_hook(lambda module, args, out: heads.append(out))
        with torch.inference_mode():
            images = model.preprocess_image(inputs).tensor
            heads.append(model.image_features(images))
            model(inputs)
        handle.remove()
    hook.remove()
    (features, head), (bf16_features, bf16_head) = heads[:2], heads[2:]

    # The tower's convolutions ran in bfloat16; the head gets float32 features that differ
    # from the float32 tower's by bfloat16's rounding (8-bit mantissa), not more.
    assert stem_dtypes and all(dtype == torch.bfloat16 for dtype in stem_dtypes)
    for name, feature in features.items():
        assert bf16_features[name].dtype == torch.float32
        assert not torch.equal(bf16_features[name], feature)
        assert (bf16_features[name] - feature).norm() < 2e-2 * feature.norm()
    # Every query keeps its class.
    assert torch.equal(bf16_head["pred_logits"].argmax(-1), head["pred_logits"].argmax(-1))


def test_frozen_towers_autocast_rejects_unknown_modes():
    from detectron2.modeling import build_model

    from tests.conftest import tiny_cfg

    with pytest.raises(ValueError, match="FROZEN_TOWERS_AUTOCAST must be one of"):
        build_model(tiny_cfg("MODEL.SCORE.FROZEN_TOWERS_AUTOCAST", "fp8"))


@pytest.mark.parametrize("training", [False, True])
def test_decoder_attention_layers_match_explicit_attention_weights(training):
    from score.modeling.transformer_decoder.score_transformer_decoder import (
        CrossAttentionLayer,
        SelfAttentionLayer,
        attention_mask_from_logits,
    )

    torch.manual_seed(0)
    cross, self_attn = CrossAttentionLayer(32, 4).train(training), SelfAttentionLayer(32, 4).train(training)
    tgt, query_pos = torch.randn(10, 2, 32, requires_grad=True), torch.randn(10, 2, 32)
    memory, pos = torch.randn(48, 2, 32), torch.randn(48, 2, 32)
    mask = attention_mask_from_logits(torch.randn(2, 10, 12, 16), (6, 8), 4)
    assert mask.isinf().any()
    # The reference: MultiheadAttention with its explicit (need_weights=True) path.
    ref_cross = cross.norm(
        tgt + cross.multihead_attn(tgt + query_pos, memory + pos, memory, attn_mask=mask)[0]
    )
    ref_self = self_attn.norm(tgt + self_attn.self_attn(tgt + query_pos, tgt + query_pos, tgt)[0])
    got_cross = cross(tgt, memory, mask, pos, query_pos)
    got_self = self_attn(tgt, query_pos)
    torch.testing.assert_close(got_cross, ref_cross, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_self, ref_self, rtol=1e-5, atol=1e-5)
    (ref_grad,) = torch.autograd.grad(ref_cross.sum() + ref_self.sum(), tgt)
    (got_grad,) = torch.autograd.grad(got_cross.sum() + got_self.sum(), tgt)
    torch.testing.assert_close(got_grad, ref_grad, rtol=1e-4, atol=1e-5)


def _head_outputs_and_rai_calls(model, inputs):
    """The head's outputs of one forward of ``model`` on ``inputs``, and how often RAI ran."""
    recorded, calls = {}, []
    handles = [
        model.sem_seg_head.register_forward_hook(lambda module, args, out: recorded.update(out)),
        model.sem_seg_head.predictor.rai.register_forward_hook(lambda module, args, out: calls.append(1)),
    ]
    try:
        with torch.no_grad():
            results = model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    return recorded, len(calls), results


def test_inference_skips_the_intermediate_class_branch_with_equal_outputs(make_inputs, monkeypatch):
    import copy

    from detectron2.modeling import build_model

    from tests.conftest import tiny_cfg

    torch.manual_seed(0)
    # No warm-up: RAI fixes its kernel at its first call in eval mode too, so the
    # state that this leaves must not depend on how many calls are skipped.
    model = build_model(tiny_cfg("MODEL.SCORE.RAI.GUMBEL_WARMUP_ITERS", "0")).eval()
    reference = copy.deepcopy(model)
    predictor = reference.sem_seg_head.predictor
    every_head = predictor.forward_prediction_heads
    # The reference computes the class branch of every prediction, as training does.
    monkeypatch.setattr(
        predictor, "forward_prediction_heads", lambda *a, **kw: every_head(*a, **{**kw, "classify": True})
    )
    inputs = make_inputs([(96, 128)])
    for x in inputs:
        del x["instances"]

    out, rai_calls, results = _head_outputs_and_rai_calls(model, inputs)
    ref_out, ref_rai_calls, ref_results = _head_outputs_and_rai_calls(reference, inputs)

    predictions = model.sem_seg_head.predictor.num_layers + 1
    assert (rai_calls, ref_rai_calls) == (1, predictions)
    assert torch.equal(out["pred_logits"], ref_out["pred_logits"])
    assert torch.equal(out["pred_masks"], ref_out["pred_masks"])
    assert len(out["aux_outputs"]) == predictions - 1
    for aux, ref_aux in zip(out["aux_outputs"], ref_out["aux_outputs"]):
        assert set(aux) == {"pred_masks"}
        assert torch.equal(aux["pred_masks"], ref_aux["pred_masks"])
    got, expected = results[0]["instances"], ref_results[0]["instances"]
    assert torch.equal(got.scores, expected.scores)
    assert torch.equal(got.pred_classes, expected.pred_classes)
    assert torch.equal(got.pred_masks, expected.pred_masks)
    rai, ref_rai = model.sem_seg_head.predictor.rai, predictor.rai
    assert rai._host_fixed_kernel != 0 and rai._host_fixed_kernel == ref_rai._host_fixed_kernel
    for name, buffer in rai.named_buffers():
        assert torch.equal(buffer, dict(ref_rai.named_buffers())[name]), name


def test_training_keeps_the_class_logits_of_every_prediction(make_inputs):
    from detectron2.modeling import build_model

    from tests.conftest import tiny_cfg

    torch.manual_seed(0)
    model = build_model(tiny_cfg()).train()
    out, rai_calls, _ = _head_outputs_and_rai_calls(model, make_inputs([(96, 128)]))
    predictions = model.sem_seg_head.predictor.num_layers + 1
    assert rai_calls == predictions
    assert len(out["aux_outputs"]) == predictions - 1
    for aux in out["aux_outputs"]:
        assert set(aux) == {"pred_logits", "pred_masks"}
        assert aux["pred_logits"].shape == out["pred_logits"].shape


def _authors_bool_mask(mask_logits, size, num_heads):
    """Mask2Former's attention mask: booleans (True = blocked), repeated per head."""
    resized = torch.nn.functional.interpolate(mask_logits, size=size, mode="bilinear", align_corners=False)
    blocked = resized.sigmoid().flatten(2).unsqueeze(1).repeat(1, num_heads, 1, 1).flatten(0, 1) < 0.5
    blocked[blocked.all(-1)] = False
    return blocked


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("batch", [1, 2])
def test_additive_attention_mask_gives_the_attention_of_the_authors_bool_mask(batch, fused):
    from score.modeling.transformer_decoder.score_transformer_decoder import (
        CrossAttentionLayer,
        attention_mask_from_logits,
    )

    torch.manual_seed(batch)
    logits = torch.randn(batch, 10, 12, 16)
    logits[0, 3] = -10.0  # an empty mask: its row is unblocked
    bool_mask = _authors_bool_mask(logits, (6, 8), 4)
    additive = attention_mask_from_logits(logits, (6, 8), 4)
    # The values MultiheadAttention makes of the boolean mask.
    assert torch.equal(additive, torch.zeros(bool_mask.shape).masked_fill_(bool_mask, float("-inf")))
    cross = CrossAttentionLayer(32, 4, fused_attention=fused).eval()
    tgt, query_pos = torch.randn(10, batch, 32), torch.randn(10, batch, 32)
    memory, pos = torch.randn(48, batch, 32), torch.randn(48, batch, 32)
    with torch.no_grad():
        assert torch.equal(
            cross(tgt, memory, additive, pos, query_pos), cross(tgt, memory, bool_mask, pos, query_pos)
        )
