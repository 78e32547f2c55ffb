"""SCORE's masked-attention transformer decoder (SCORE.md 4.3)."""

import math

import score  # noqa: F401, I001  (first: its shims let detectron2.layers import without detectron2._C)

# isort: split
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from score.config import get_score_cfg
from score.modeling.open_vocab import classification_logits
from score.modeling.transformer_decoder import build_transformer_decoder
from score.modeling.transformer_decoder.score_transformer_decoder import (
    CrossAttentionLayer,
    SCOREMultiScaleMaskedTransformerDecoder,
    SelfAttentionLayer,
    attention_mask_from_logits,
)

HIDDEN, QUERIES, HEADS, D = 32, 5, 4, 16
NUM_SYNONYMS = [2, 1, 3]  # K = 3 classes, N = 6 rows


def tiny_decoder(dec_layers=3, rai=None, **overrides) -> SCOREMultiScaleMaskedTransformerDecoder:
    kwargs = dict(
        in_channels=HIDDEN,
        hidden_dim=HIDDEN,
        num_queries=QUERIES,
        nheads=HEADS,
        dim_feedforward=64,
        dec_layers=dec_layers,
        pre_norm=False,
        dropout=0.0,
        mask_dim=HIDDEN,
        enforce_input_project=False,
        embed_dim=D,
        rai=rai,
    )
    kwargs.update(overrides)
    return SCOREMultiScaleMaskedTransformerDecoder(**kwargs)


def tiny_inputs(batch=2, height=96, width=128, seed=0):
    """Multi-scale features for a padded (height, width) input (strides 32, 16, 8) and mask features (/4)."""
    g = torch.Generator().manual_seed(seed)
    x = [torch.randn(batch, HIDDEN, height // s, width // s, generator=g) for s in (32, 16, 8)]
    mask_features = torch.randn(batch, HIDDEN, height // 4, width // 4, generator=g)
    classifier = F.normalize(torch.randn(sum(NUM_SYNONYMS) + 1, D, generator=g), dim=-1)
    return x, mask_features, classifier


def test_full_size_parameter_count_and_checkpoint_names():
    decoder = SCOREMultiScaleMaskedTransformerDecoder(
        in_channels=256,
        hidden_dim=256,
        num_queries=300,
        nheads=8,
        dim_feedforward=2048,
        dec_layers=9,
        pre_norm=False,
        dropout=0.0,
        mask_dim=256,
        enforce_input_project=False,
        embed_dim=768,
        rai=None,
    )
    assert sum(p.numel() for p in decoder.parameters()) == 14_956_289
    shapes = {k: tuple(v.shape) for k, v in decoder.state_dict().items()}
    expected = {
        "transformer_self_attention_layers.8.self_attn.in_proj_weight": (768, 256),
        "transformer_self_attention_layers.0.self_attn.out_proj.bias": (256,),
        "transformer_self_attention_layers.0.norm.weight": (256,),
        "transformer_cross_attention_layers.8.multihead_attn.in_proj_bias": (768,),
        "transformer_cross_attention_layers.0.norm.bias": (256,),
        "transformer_ffn_layers.8.linear1.weight": (2048, 256),
        "transformer_ffn_layers.0.linear2.weight": (256, 2048),
        "transformer_ffn_layers.0.norm.weight": (256,),
        "decoder_norm.weight": (256,),
        "query_feat.weight": (300, 256),
        "query_embed.weight": (300, 256),
        "level_embed.weight": (3, 256),
        "mask_embed.layers.2.weight": (256, 256),
        "_mask_pooling_proj.0.weight": (256,),
        "_mask_pooling_proj.1.weight": (256, 256),
        "class_embed.layers.2.weight": (768, 256),
        "logit_scale": (),
    }
    for name, shape in expected.items():
        assert shapes[name] == shape, name
    assert "transformer_self_attention_layers.9.norm.weight" not in shapes
    torch.testing.assert_close(decoder.logit_scale.detach(), torch.tensor(math.log(1 / 0.07)))


def test_build_from_config_reads_the_keys():
    cfg = get_score_cfg()
    cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME = "SCOREMultiScaleMaskedTransformerDecoder"
    cfg.MODEL.SCORE.RAI.ENABLED = False
    cfg.MODEL.MASK_FORMER.DEC_LAYERS = 4
    cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES = 7
    cfg.MODEL.MASK_FORMER.HIDDEN_DIM = 32
    cfg.MODEL.SEM_SEG_HEAD.MASK_DIM = 32
    cfg.MODEL.SCORE.EMBED_DIM = 24
    cfg.MODEL.SCORE.LOGIT_SCALE_INIT = 1.5
    decoder = build_transformer_decoder(cfg, 48)
    assert isinstance(decoder, SCOREMultiScaleMaskedTransformerDecoder)
    assert decoder.rai is None
    assert decoder.num_layers == 3 and len(decoder.transformer_ffn_layers) == 3
    assert decoder.query_feat.weight.shape == (7, 32)
    assert decoder.class_embed.layers[-1].out_features == 24
    assert decoder.input_proj[0].weight.shape == (32, 48, 1, 1)  # in_channels != hidden: projections
    assert decoder.logit_scale.item() == pytest.approx(1.5)
    cfg.MODEL.MASK_FORMER.DEC_LAYERS = 0
    with pytest.raises(ValueError, match="DEC_LAYERS must be >= 1"):
        build_transformer_decoder(cfg, 32)


@pytest.mark.parametrize("per_image_classifier", [False, True])
def test_output_shapes_on_odd_sizes(per_image_classifier):
    torch.manual_seed(0)
    decoder = tiny_decoder(dec_layers=3)
    x, mask_features, classifier = tiny_inputs(batch=2, height=96, width=160)
    if per_image_classifier:
        classifier = classifier.expand(2, -1, -1)
    out = decoder(x, mask_features, classifier, NUM_SYNONYMS)
    k = len(NUM_SYNONYMS)
    assert out["pred_logits"].shape == (2, QUERIES, k + 1)
    assert out["pred_masks"].shape == (2, QUERIES, 24, 40)
    assert len(out["aux_outputs"]) == 3
    for aux in out["aux_outputs"]:
        assert aux["pred_logits"].shape == (2, QUERIES, k + 1)
        assert aux["pred_masks"].shape == (2, QUERIES, 24, 40)


def test_first_aux_output_is_the_prediction_on_the_initial_queries():
    torch.manual_seed(0)
    decoder = tiny_decoder(dec_layers=2)  # dropout 0: training mode is deterministic
    x, mask_features, classifier = tiny_inputs(batch=1)
    with torch.no_grad():
        out = decoder(x, mask_features, classifier, NUM_SYNONYMS)
        queries = decoder.query_feat.weight[:, None]  # (Q, 1, C)
        logits, masks, _ = decoder.forward_prediction_heads(
            queries, mask_features, (3, 4), classifier, NUM_SYNONYMS
        )
        eval_out = decoder.eval()(x, mask_features, classifier, NUM_SYNONYMS)
    torch.testing.assert_close(out["aux_outputs"][0]["pred_masks"], masks)
    torch.testing.assert_close(out["aux_outputs"][0]["pred_logits"], logits)
    assert not torch.allclose(out["pred_masks"], masks)
    # At inference the intermediate predictions keep their masks only.
    assert [set(aux) for aux in eval_out["aux_outputs"]] == [{"pred_masks"}] * 2
    torch.testing.assert_close(eval_out["aux_outputs"][0]["pred_masks"], masks)
    torch.testing.assert_close(eval_out["pred_logits"], out["pred_logits"])


def test_single_layer_decoder_classifies_its_only_prediction_at_inference():
    torch.manual_seed(0)
    decoder = tiny_decoder(dec_layers=0).eval()
    x, mask_features, classifier = tiny_inputs(batch=1)
    with torch.no_grad():
        out = decoder(x, mask_features, classifier, NUM_SYNONYMS)
    assert out["pred_logits"].shape == (1, QUERIES, len(NUM_SYNONYMS) + 1)
    assert out["aux_outputs"] == []


def test_prediction_head_follows_fc_clip_class_embedding():
    torch.manual_seed(0)
    decoder = tiny_decoder(dec_layers=1).eval()
    _, mask_features, classifier = tiny_inputs(batch=1)
    queries = torch.randn(QUERIES, 1, HIDDEN)
    with torch.no_grad():
        logits, masks, _ = decoder.forward_prediction_heads(
            queries, mask_features, (3, 4), classifier, NUM_SYNONYMS
        )
        decoder_output = decoder.decoder_norm(queries).transpose(0, 1)
        expected_masks = torch.einsum("bqc,bchw->bqhw", decoder.mask_embed(decoder_output), mask_features)
        weights = (expected_masks > 0).float()
        pooled = torch.einsum("bchw,bqhw->bqc", mask_features, weights) / (
            weights.sum((-2, -1))[..., None] + 1e-8
        )
        embed = decoder.class_embed(decoder._mask_pooling_proj(pooled) + decoder_output)
        expected_logits = classification_logits(embed, classifier, decoder.logit_scale, NUM_SYNONYMS)
    torch.testing.assert_close(masks, expected_masks)
    torch.testing.assert_close(logits, expected_logits)


def test_attention_mask_blocks_background_and_unblocks_empty_queries():
    # Query 0: foreground in the left half; query 1: empty everywhere.
    logits = torch.full((1, 2, 4, 4), -5.0)
    logits[0, 0, :, :2] = 5.0
    mask = attention_mask_from_logits(logits, (2, 2), num_heads=3)
    assert mask.shape == (3, 2, 4) and mask.dtype == torch.float32
    inf = float("-inf")
    left = torch.tensor([0.0, inf, 0.0, inf])  # (2, 2) flattened row-major: blocked on the right
    for head in range(3):
        assert torch.equal(mask[head, 0], left)
        assert torch.equal(mask[head, 1], torch.zeros(4))  # fully blocked row is unblocked


def test_masked_cross_attention_ignores_blocked_memory():
    torch.manual_seed(0)
    layer = CrossAttentionLayer(HIDDEN, HEADS).eval()
    tgt, query_pos = torch.randn(2, 1, HIDDEN), torch.randn(2, 1, HIDDEN)
    memory, pos = torch.randn(6, 1, HIDDEN), torch.randn(6, 1, HIDDEN)
    blocked = torch.zeros(HEADS, 2, 6, dtype=torch.bool)
    blocked[:, 0, 3:] = True  # query 0 sees memory 0..2 only
    with torch.no_grad():
        ref = layer(tgt, memory, blocked, pos, query_pos)
        changed_blocked = memory.clone()
        changed_blocked[3:] += 10.0
        out = layer(tgt, changed_blocked, blocked, pos, query_pos)
        changed_visible = memory.clone()
        changed_visible[:3] += 10.0
        out_visible = layer(tgt, changed_visible, blocked, pos, query_pos)
    torch.testing.assert_close(out[0], ref[0])  # query 0 unaffected by what it cannot see
    assert not torch.allclose(out[1], ref[1])  # query 1 sees everything
    assert not torch.allclose(out_visible[0], ref[0])


class _RecordingRAI(nn.Module):
    """Stand-in for RAI: records its inputs and replaces V by a fixed embedding."""

    def __init__(self, target: torch.Tensor):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.target = target
        self.calls = []

    def forward(self, class_embed, mask_logits, context):
        self.calls.append((tuple(class_embed.shape), tuple(mask_logits.shape), context))
        return self.scale * self.target.expand_as(class_embed)


def test_rai_receives_embeddings_masks_and_context_and_feeds_the_logits():
    torch.manual_seed(0)
    x, mask_features, classifier = tiny_inputs(batch=2)
    rai = _RecordingRAI(classifier[2])  # row 2 is the first synonym of class 1
    decoder = tiny_decoder(dec_layers=2, rai=rai)
    context = object()
    out = decoder(x, mask_features, classifier, NUM_SYNONYMS, context=context)
    assert rai.calls == [((2, QUERIES, D), (2, QUERIES, 24, 32), context)] * 3
    for prediction in [out] + out["aux_outputs"]:
        assert torch.all(prediction["pred_logits"].argmax(-1) == 1)
    out["pred_logits"].sum().backward()
    assert rai.scale.grad is not None
    # At inference only the final prediction is classified, so RAI runs once.
    rai.calls.clear()
    with torch.no_grad():
        out = decoder.eval()(x, mask_features, classifier, NUM_SYNONYMS, context=context)
    assert rai.calls == [((2, QUERIES, D), (2, QUERIES, 24, 32), context)]
    assert torch.all(out["pred_logits"].argmax(-1) == 1)


def test_every_parameter_gets_a_finite_gradient():
    torch.manual_seed(0)
    decoder = tiny_decoder(dec_layers=3)
    x, mask_features, classifier = tiny_inputs(batch=2)
    out = decoder(x, mask_features, classifier, NUM_SYNONYMS)
    loss = sum(
        p["pred_logits"].log_softmax(-1).mean() + p["pred_masks"].sigmoid().mean()
        for p in [out] + out["aux_outputs"]
    )
    loss.backward()
    for name, p in decoder.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_mask_dim_must_match_hidden_dim():
    with pytest.raises(ValueError, match="mask_dim"):
        tiny_decoder(mask_dim=HIDDEN * 2)


def _explicit_attention(attn: nn.MultiheadAttention, query, key, value, blocked=None):
    """Multi-head attention written out (Vaswani et al. 2017) on (length, B, C) sequences:
    per head softmax(q k^T / sqrt(d) with blocked pairs at -inf) v, then the output projection."""
    length, batch, width = query.shape
    head_dim = width // attn.num_heads
    w_q, w_k, w_v = attn.in_proj_weight.chunk(3)
    b_q, b_k, b_v = attn.in_proj_bias.chunk(3)

    def heads(x, w, b):  # (length, B, C) -> (B * M, length, C / M)
        return F.linear(x, w, b).reshape(x.shape[0], batch * attn.num_heads, head_dim).transpose(0, 1)

    q, k, v = heads(query, w_q, b_q), heads(key, w_k, b_k), heads(value, w_v, b_v)
    scores = (q * math.sqrt(1.0 / head_dim)) @ k.transpose(1, 2)
    if blocked is not None:
        scores = scores.masked_fill(blocked, float("-inf"))
    mixed = (scores.softmax(-1) @ v).transpose(0, 1).reshape(length * batch, width)
    return F.linear(mixed, attn.out_proj.weight, attn.out_proj.bias).view(length, batch, width)


@pytest.mark.parametrize("fused", [False, True])
def test_attention_layers_compute_the_explicit_softmax_unless_fused(fused):
    torch.manual_seed(0)
    cross = CrossAttentionLayer(HIDDEN, HEADS, fused_attention=fused).eval()
    self_attn = SelfAttentionLayer(HIDDEN, HEADS, fused_attention=fused).eval()
    tgt, query_pos = torch.randn(300, 2, HIDDEN), torch.randn(300, 2, HIDDEN)
    memory, pos = torch.randn(96, 2, HIDDEN), torch.randn(96, 2, HIDDEN)
    blocked = torch.rand(2 * HEADS, 300, 96) < 0.5
    with torch.no_grad():
        got = [cross(tgt, memory, blocked, pos, query_pos), self_attn(tgt, query_pos)]
        q = tgt + query_pos
        expected = [
            cross.norm(tgt + _explicit_attention(cross.multihead_attn, q, memory + pos, memory, blocked)),
            self_attn.norm(tgt + _explicit_attention(self_attn.self_attn, q, q, tgt)),
        ]
    for out, ref in zip(got, expected):
        if fused:
            # The same values up to the fused kernel's rounding, which differs.
            torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
            assert not torch.equal(out, ref)
        else:
            # The authors' computation (need_weights=True): bit for bit.
            torch.testing.assert_close(out, ref, atol=0, rtol=0)


def test_fused_attention_key_reaches_every_layer_and_runs():
    cfg = get_score_cfg()
    cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME = "SCOREMultiScaleMaskedTransformerDecoder"
    cfg.MODEL.SCORE.RAI.ENABLED = False
    cfg.MODEL.MASK_FORMER.HIDDEN_DIM = cfg.MODEL.SEM_SEG_HEAD.MASK_DIM = HIDDEN
    cfg.MODEL.MASK_FORMER.NHEADS, cfg.MODEL.MASK_FORMER.DIM_FEEDFORWARD = HEADS, 64
    cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES, cfg.MODEL.MASK_FORMER.DEC_LAYERS = QUERIES, 4
    cfg.MODEL.SCORE.EMBED_DIM = D
    assert cfg.MODEL.SCORE.DECODER_FUSED_ATTENTION is False
    decoders = []
    for fused in (False, True):
        cfg.MODEL.SCORE.DECODER_FUSED_ATTENTION = fused
        torch.manual_seed(0)
        decoders.append(build_transformer_decoder(cfg, HIDDEN).eval())
        layers = [
            *decoders[-1].transformer_cross_attention_layers,
            *decoders[-1].transformer_self_attention_layers,
        ]
        assert [layer.fused_attention for layer in layers] == [fused] * 6
    x, mask_features, classifier = tiny_inputs()
    with torch.no_grad():
        explicit, fused = (decoder(x, mask_features, classifier, NUM_SYNONYMS) for decoder in decoders)
    torch.testing.assert_close(fused["pred_logits"], explicit["pred_logits"], atol=1e-4, rtol=1e-4)
    assert torch.isfinite(fused["pred_masks"]).all()


def _dropout_rates(module: nn.Module, skip: str = "") -> set:
    """Rates of the nn.Dropout and nn.MultiheadAttention modules of ``module``, but those under ``skip``."""
    rates = set()
    for name, m in module.named_modules():
        if skip and name.startswith(skip):
            continue
        if isinstance(m, nn.Dropout):
            rates.add(m.p)
        elif isinstance(m, nn.MultiheadAttention):
            rates.add(m.dropout)
    return rates


@pytest.mark.parametrize("dropout", [get_score_cfg().MODEL.MASK_FORMER.DROPOUT, 0.3])
def test_decoder_has_no_dropout_and_mask_former_dropout_is_the_pixel_decoders(dropout):
    """As in Mask2Former: MASK_FORMER.DROPOUT reaches the deformable encoder only."""
    from detectron2.modeling import build_model

    from tests.conftest import tiny_cfg

    assert dropout > 0
    model = build_model(tiny_cfg("MODEL.MASK_FORMER.DROPOUT", str(dropout)))
    # RAI's integration layers have their own key (MODEL.SCORE.RAI.DROPOUT).
    assert _dropout_rates(model.sem_seg_head.predictor, skip="rai") == {0.0}
    assert _dropout_rates(model.sem_seg_head.pixel_decoder) == {dropout}
