"""Global Context Adaptation (SCORE.md 6): each mode against its equation."""

import pytest
import torch
import torch.nn.functional as F

from score.config import get_score_cfg
from score.modeling.gca import GlobalContextAdaptation, build_gca

D = 16


def classifier(n=5):
    return F.normalize(torch.randn(n, D), dim=-1)


def test_mha_parameter_count_matches_authors():
    gca = GlobalContextAdaptation(embed_dim=768, mode="mha", nheads=8)
    assert sum(p.numel() for p in gca.parameters()) == 2_362_368


def test_mha_equals_value_and_output_projections():
    gca = GlobalContextAdaptation(embed_dim=D, mode="mha", nheads=4)
    text, global_embed = classifier(), torch.randn(3, D)
    out = gca(text, global_embed)
    assert out.shape == (3, 5, D)
    attn = gca.attn
    g = F.normalize(global_embed, dim=-1)
    value = F.linear(g, attn.in_proj_weight[2 * D :], attn.in_proj_bias[2 * D :])
    shift = F.linear(value, attn.out_proj.weight, attn.out_proj.bias)  # (B, D)
    torch.testing.assert_close(out, text[None] + shift[:, None], atol=1e-6, rtol=1e-5)
    # The same shift for every class row of an image, different across images.
    deltas = out - text[None]
    torch.testing.assert_close(deltas, deltas[:, :1].expand_as(deltas), atol=1e-6, rtol=1e-5)
    assert not torch.allclose(deltas[0, 0], deltas[1, 0])


def test_mha_agrees_with_the_authors_repeated_key_value_to_rounding():
    # The authors' key/value is g repeated once per text row, (B, N, D); ours is the
    # one row (B, 1, D). Same attention output in exact arithmetic, other last bits
    # (docs/DESIGN.md, "Numeric differences").
    gca = GlobalContextAdaptation(embed_dim=D, mode="mha", nheads=4)
    text, global_embed = classifier(40), torch.randn(2, D)
    g = F.normalize(global_embed, dim=-1)
    one_row, _ = gca.attn(text[None].expand(2, -1, -1), g[:, None], g[:, None], need_weights=False)
    repeated = g[:, None].repeat(1, len(text), 1)
    authors, _ = gca.attn(text[None].expand(2, -1, -1), repeated, repeated, need_weights=False)
    out = gca(text, global_embed)
    assert torch.equal(out, text[None] + one_row)
    torch.testing.assert_close(out, text[None] + authors, rtol=0, atol=1e-6)


def test_mha_gradients_skip_query_and_key_projections():
    gca = GlobalContextAdaptation(embed_dim=D, mode="mha", nheads=4)
    out = gca(classifier(), torch.randn(2, D))
    (out * torch.randn_like(out)).sum().backward()
    # Expected: one key, so the attention weight is identically 1 and the query
    # and key projections get no gradient (SCORE.md 6), up to softmax rounding.
    grad = gca.attn.in_proj_weight.grad
    assert grad[2 * D :].abs().max() > 0
    assert grad[: 2 * D].abs().max() <= 1e-6 * grad[2 * D :].abs().max()
    assert gca.attn.out_proj.weight.grad.abs().sum() > 0


def test_add_equals_text_plus_normalised_context():
    gca = GlobalContextAdaptation(embed_dim=D, mode="add")
    assert not list(gca.parameters())
    text, global_embed = classifier(), torch.randn(2, D) * 7
    out = gca(text, global_embed)
    torch.testing.assert_close(out, text[None] + F.normalize(global_embed, dim=-1)[:, None])


def test_none_returns_text_for_every_image_as_a_view():
    gca = GlobalContextAdaptation(embed_dim=D, mode="none")
    assert not list(gca.parameters())
    text = classifier()
    out = gca(text, torch.randn(4, D))
    assert out.shape == (4, 5, D)
    for b in range(4):
        assert torch.equal(out[b], text)
    assert out.data_ptr() == text.data_ptr() and out.stride(0) == 0


def test_concat_starts_as_text_and_matches_linear_on_concatenation():
    gca = GlobalContextAdaptation(embed_dim=D, mode="concat")
    text, global_embed = classifier(), torch.randn(3, D)
    torch.testing.assert_close(gca(text, global_embed), text[None].expand(3, -1, -1))
    with torch.no_grad():
        gca.concat_proj.weight.normal_()
        gca.concat_proj.bias.normal_()
    g = F.normalize(global_embed, dim=-1)
    joined = torch.cat([text[None].expand(3, -1, -1), g[:, None].expand(-1, 5, -1)], dim=-1)
    torch.testing.assert_close(gca(text, global_embed), gca.concat_proj(joined), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["mha", "add", "concat", "none"])
def test_fp16_global_embed_gives_classifier_dtype(mode):
    gca = GlobalContextAdaptation(embed_dim=D, mode=mode, nheads=2)
    out = gca(classifier(), torch.randn(2, D).half())
    assert out.dtype == torch.float32 and out.shape == (2, 5, D)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("mode", ["mha", "add"])
def test_fp16_global_embed_is_normalised_in_fp16_then_cast(mode):
    torch.manual_seed(0)
    gca = GlobalContextAdaptation(embed_dim=D, mode=mode, nheads=2)
    text, global_embed = classifier(), (3 * torch.randn(4, D)).half()
    # ||g|| and g / ||g|| computed in float16, as the authors' fp16 tower gives it, then cast.
    g16 = global_embed / global_embed.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    g = g16.float()
    assert not torch.equal(g, F.normalize(global_embed.float(), dim=-1))  # float32 would differ
    if mode == "add":
        expected = text[None] + g[:, None]
    else:
        attn = gca.attn
        value = F.linear(g, attn.in_proj_weight[2 * D :], attn.in_proj_bias[2 * D :])
        expected = text[None] + F.linear(value, attn.out_proj.weight, attn.out_proj.bias)[:, None]
    with torch.no_grad():
        torch.testing.assert_close(gca(text, global_embed), expected, atol=1e-6, rtol=1e-6)


def test_wrong_mode_names_key_and_value():
    with pytest.raises(ValueError, match="MODEL.SCORE.GCA.MODE.*'sum'"):
        GlobalContextAdaptation(embed_dim=D, mode="sum")


def test_wrong_shapes_raise():
    gca = GlobalContextAdaptation(embed_dim=D, mode="add")
    with pytest.raises(ValueError, match="text classifier"):
        gca(torch.randn(2, 5, D), torch.randn(2, D))


def test_build_from_config():
    cfg = get_score_cfg()
    cfg.MODEL.SCORE.GCA.NHEADS = 4
    gca = build_gca(cfg, D)
    assert gca.mode == "mha" and gca.attn.num_heads == 4
    cfg.MODEL.SCORE.GCA.MODE = "none"
    gca = build_gca(cfg, D)
    assert isinstance(gca, GlobalContextAdaptation) and not list(gca.parameters())
