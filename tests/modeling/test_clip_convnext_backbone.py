"""CLIP ConvNeXt backbone on the tiny config: FC-CLIP's features, head mapping, text tower, freezing."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from score.config import get_score_cfg
from score.modeling.backbone.clip_convnext import CLIPConvNeXtBackbone
from score.modeling.tiny_clip import TINY_CONVNEXT


def build_backbone(cfg):
    # detectron2.modeling is imported after score (its compatibility shims).
    from detectron2.modeling import build_backbone as d2_build_backbone

    return d2_build_backbone(cfg)


def _cfg():
    cfg = get_score_cfg()
    cfg.MODEL.BACKBONE.NAME = "CLIPConvNeXtBackbone"
    cfg.MODEL.SCORE.CLIP_MODEL_NAME = TINY_CONVNEXT
    cfg.MODEL.SCORE.EMBED_DIM = 64
    cfg.MODEL.SCORE.RANDOM_INIT_CLIP = True
    return cfg


@pytest.fixture(scope="module")
def backbone():
    return build_backbone(_cfg())


def test_registered_and_built_from_config(backbone):
    from detectron2.modeling import BACKBONE_REGISTRY

    assert BACKBONE_REGISTRY.get("CLIPConvNeXtBackbone") is CLIPConvNeXtBackbone
    assert isinstance(backbone, CLIPConvNeXtBackbone)
    assert backbone.embed_dim == 64 and backbone.size_divisibility == 32
    assert backbone.logit_scale is backbone.clip_model.logit_scale


def test_output_shape_from_timm_feature_info(backbone):
    info = backbone.clip_model.visual.trunk.feature_info
    shapes = backbone.output_shape()
    assert list(shapes) == ["res2", "res3", "res4", "res5", "clip_vis_dense"]
    for index, name in enumerate(["res2", "res3", "res4", "res5"]):
        assert shapes[name].channels == info[index]["num_chs"]
        assert shapes[name].stride == 4 * 2**index
    assert shapes["clip_vis_dense"].channels == info[-1]["num_chs"] and shapes["clip_vis_dense"].stride == 32


def test_forward_shapes_and_dense_map(backbone):
    x = torch.randn(2, 3, 96, 128)
    features = backbone(x)
    shapes = backbone.output_shape()
    for name, feature in features.items():
        stride = shapes[name].stride
        assert feature.shape == (2, shapes[name].channels, 96 // stride, 128 // stride)
        assert not feature.requires_grad
    with torch.no_grad():
        expected = backbone.clip_model.visual.trunk.forward_features(x)
    torch.testing.assert_close(features["clip_vis_dense"], expected)


def test_pooled_to_embedding_is_trunk_head_then_clip_head(backbone):
    x = torch.randn(2, 3, 64, 64)
    dense = backbone(x)["clip_vis_dense"]
    # Global average pooling of the dense map as a single "mask" gives CLIP's own image embedding.
    pooled = dense.mean(dim=(2, 3))[:, None, :]
    with torch.no_grad():
        expected = backbone.clip_model.encode_image(x)
    torch.testing.assert_close(backbone.pooled_to_embedding(pooled)[:, 0], expected, atol=1e-5, rtol=1e-5)

    queries = torch.randn(2, 5, dense.shape[1])
    norm = backbone.clip_model.visual.trunk.head.norm  # LayerNorm over channels
    direct = F.layer_norm(queries, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
    with torch.no_grad():
        direct = backbone.clip_model.visual.head(direct)
    out = backbone.pooled_to_embedding(queries)
    assert out.shape == (2, 5, 64)
    torch.testing.assert_close(out, direct, atol=1e-5, rtol=1e-5)


def _text_tower_direct(clip_model, tokens):
    """CLIP's text tower written out (Radford et al. 2021): causal pre-norm blocks, then the
    final LayerNorm at the end-of-text token (the largest id) times the text projection."""
    x = clip_model.token_embedding(tokens) + clip_model.positional_embedding
    length = tokens.shape[1]
    causal = torch.full((length, length), float("-inf")).triu(1)
    for block in clip_model.transformer.resblocks:
        attn = block.attn
        heads, width = attn.num_heads, x.shape[-1]
        h = F.layer_norm(x, (width,), block.ln_1.weight, block.ln_1.bias, block.ln_1.eps)
        q, k, v = (h @ attn.in_proj_weight.t() + attn.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (t.unflatten(-1, (heads, width // heads)).transpose(1, 2) for t in (q, k, v))
        weights = (q @ k.transpose(-1, -2) / math.sqrt(width // heads) + causal).softmax(-1)
        mixed = (weights @ v).transpose(1, 2).flatten(2)
        x = x + mixed @ attn.out_proj.weight.t() + attn.out_proj.bias
        h = F.layer_norm(x, (width,), block.ln_2.weight, block.ln_2.bias, block.ln_2.eps)
        fc, proj = block.mlp.c_fc, block.mlp.c_proj
        x = x + F.gelu(h @ fc.weight.t() + fc.bias) @ proj.weight.t() + proj.bias
    ln = clip_model.ln_final
    x = F.layer_norm(x, (x.shape[-1],), ln.weight, ln.bias, ln.eps)
    return x[torch.arange(len(tokens)), tokens.argmax(dim=-1)] @ clip_model.text_projection


def test_encode_text_is_the_text_tower_at_the_end_of_text_token(backbone):
    prompts = ["aerial photo of a ship.", "satellite view of the harbor."]
    out = backbone.encode_text(prompts)
    tokens = backbone.tokenizer(prompts)
    assert tokens.shape == (2, 77)
    # CLIP BPE: start-of-text 49406, end-of-text 49407 (the largest id), zeros after it.
    assert torch.all(tokens[:, 0] == 49406) and torch.all(tokens.max(dim=-1).values == 49407)
    with torch.no_grad():
        expected = _text_tower_direct(backbone.clip_model, tokens)
    assert out.shape == (2, 64)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out.norm(dim=-1), torch.ones(2))  # not normalised


def test_frozen_and_always_eval(backbone):
    assert not any(p.requires_grad for p in backbone.parameters())
    backbone.train()
    assert not backbone.training and not backbone.clip_model.training
    assert not any(m.training for m in backbone.clip_model.modules())
    backbone.eval()


def test_embed_dim_mismatch_names_both():
    cfg = _cfg()
    cfg.MODEL.SCORE.EMBED_DIM = 768
    with pytest.raises(ValueError, match=r"EMBED_DIM = 768 .*score-tiny-convnext.* embed_dim 64"):
        build_backbone(cfg)
