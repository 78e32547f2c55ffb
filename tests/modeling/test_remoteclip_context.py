"""RemoteCLIP context encoder on the tiny ViT: dense forward of SCORE.md 10 against open_clip's own blocks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from open_clip.transformer import QuickGELU

from score.config import get_score_cfg
from score.modeling.context import CONTEXT_ENCODER_REGISTRY, ContextFeatures, build_context_encoder
from score.modeling.context.remoteclip import (
    RemoteCLIPContextEncoder,
    resolve_context_dtype,
    value_only_block,
)
from score.modeling.open_vocab import mask_pool
from score.modeling.tiny_clip import TINY_CONVNEXT, TINY_VIT

B = 2


def make_encoder(weights: str = "", **kwargs) -> RemoteCLIPContextEncoder:
    args = dict(
        model_name=TINY_VIT,
        weights=weights,
        quick_gelu=True,
        dtype="float32",
        input_size=224,
        random_init=not weights,
    )
    args.update(kwargs)
    return RemoteCLIPContextEncoder(**args)


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """One random tiny-ViT state dict, so that encoders built in different ways share weights."""
    path = tmp_path_factory.mktemp("weights") / "RemoteCLIP-tiny.pt"
    torch.save(make_encoder().clip_model.state_dict(), path)
    return str(path)


@pytest.fixture(scope="module")
def encoder(weights_file):
    return make_encoder(weights_file, patch_layers=[0, 1, 2])


def _images(size=(96, 128), seed=0):
    return torch.randn(B, 3, *size, generator=torch.Generator().manual_seed(seed))


def test_value_only_block_against_direct_computation(encoder):
    block = encoder.clip_model.visual.transformer.resblocks[-1]
    x = torch.randn(B, 1 + 16 * 16, 64)
    W = x.shape[-1]
    y = F.layer_norm(x, (W,), block.ln_1.weight, block.ln_1.bias, block.ln_1.eps)
    v = y @ block.attn.in_proj_weight[2 * W :].T + block.attn.in_proj_bias[2 * W :]
    t = v @ block.attn.out_proj.weight.T + block.attn.out_proj.bias + x[:, :1]
    h = F.layer_norm(t, (W,), block.ln_2.weight, block.ln_2.bias, block.ln_2.eps)
    h = h @ block.mlp.c_fc.weight.T + block.mlp.c_fc.bias
    h = h * torch.sigmoid(1.702 * h)
    expected = t + h @ block.mlp.c_proj.weight.T + block.mlp.c_proj.bias
    with torch.no_grad():
        got = value_only_block(block, x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_dense_forward_matches_open_clip_blocks(encoder):
    images = _images()
    features = encoder(images)
    visual = encoder.clip_model.visual
    blocks = visual.transformer.resblocks
    resized = F.interpolate(images, size=(224, 224), mode="bilinear", align_corners=False)
    with torch.no_grad():
        tokens = visual._embeds(resized)  # open_clip's own patch embedding, [CLS], positions, ln_pre
        before_last, intermediates = visual.transformer.forward_intermediates(tokens, indices=[0, 1])
        pre_last = intermediates[1]  # output of blocks 1..L-1 run by open_clip
        out = visual.ln_post(value_only_block(blocks[-1], pre_last)) @ visual.proj

    def to_map(t):
        return (visual.ln_post(t) @ visual.proj)[:, 1:].transpose(1, 2).reshape(B, -1, 16, 16)

    assert isinstance(features, ContextFeatures)
    torch.testing.assert_close(features.global_embed, out[:, 0])
    torch.testing.assert_close(features.dense, out[:, 1:].transpose(1, 2).reshape(B, 64, 16, 16))
    with torch.no_grad():
        torch.testing.assert_close(features.patch_layers[0], to_map(intermediates[0]))
        torch.testing.assert_close(features.patch_layers[1], to_map(pre_last))
    torch.testing.assert_close(features.patch_layers[2], features.dense)
    # The value-only block really differs from the usual one.
    assert not torch.allclose(before_last, value_only_block(blocks[-1], pre_last))


def test_shapes_dtype_and_freezing(weights_file):
    encoder = make_encoder(weights_file, dtype="float16")
    features = encoder(_images(size=(64, 96)))
    assert features.global_embed.shape == (B, 64) and features.dense.shape == (B, 64, 16, 16)
    assert features.global_embed.dtype == torch.float16 and features.dense.dtype == torch.float16
    assert features.patch_layers == {}
    assert encoder.clip_model.visual.proj.dtype == torch.float16
    assert encoder.clip_model.visual.ln_post.weight.dtype == torch.float32
    assert not any(p.requires_grad for p in encoder.parameters())
    encoder.train()
    assert not any(m.training for m in encoder.modules())


def test_fp16_and_fp32_towers_agree(weights_file):
    images = _images()
    full = make_encoder(weights_file, dtype="float32")(images)
    half = make_encoder(weights_file, dtype="float16")(images)
    # float16 keeps about 3 significant digits; the tiny tower's outputs are O(1) (max |x| about 3)
    # and differ by about 4e-3 at most.
    for a, b in [(full.global_embed, half.global_embed), (full.dense, half.dense)]:
        torch.testing.assert_close(b.float(), a, atol=1e-2, rtol=1e-2)
        assert F.cosine_similarity(b.float().flatten(1), a.flatten(1)).min() > 0.999


def _authors_map(tokens: torch.Tensor, grid: int) -> torch.Tensor:
    """The authors' dense map: (B, 1 + h * w, D) tokens without [CLS], viewed as (B, h, w, D), permuted."""
    return tokens[:, 1:].reshape(tokens.shape[0], grid, grid, -1).permute(0, 3, 1, 2)


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_dense_maps_pool_as_the_authors_permuted_view(weights_file, dtype):
    # Same values in another memory layout pool to other last bits: the einsum of
    # mask_pool sums in a layout-dependent order. On some CPUs float16 pools both
    # layouts alike; float32 at this width (D = 64) and few queries does not.
    encoder = make_encoder(weights_file, dtype=dtype, patch_layers=[1])
    features = encoder(_images())
    masks = torch.randn(B, 4, 40, 40, generator=torch.Generator().manual_seed(1))
    for got in (features.dense, features.patch_layers[1]):
        tokens = torch.cat([torch.zeros_like(got[:, :, 0, :1]), got.flatten(2)], dim=-1).transpose(1, 2)
        reference = _authors_map(tokens.contiguous(), grid=16)
        assert torch.equal(got, reference)
        assert got.stride() == reference.stride() and not got.is_contiguous()
        assert torch.equal(mask_pool(got, masks), mask_pool(reference, masks))
        soft = mask_pool(got.float(), masks, soft_slope=10.0)
        assert torch.equal(soft, mask_pool(reference.float(), masks, soft_slope=10.0))


def test_output_keeps_tower_dtype_under_autocast(encoder):
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        features = encoder(_images())
    assert features.dense.dtype == torch.float32


def test_quick_gelu_switch(weights_file):
    quick = make_encoder(weights_file, quick_gelu=True)
    plain = make_encoder(weights_file, quick_gelu=False)
    assert isinstance(quick.clip_model.visual.transformer.resblocks[0].mlp.gelu, QuickGELU)
    assert isinstance(plain.clip_model.visual.transformer.resblocks[0].mlp.gelu, torch.nn.GELU)
    images = _images()
    assert not torch.allclose(quick(images).dense, plain(images).dense)


def test_other_grid_resizes_positional_embedding(weights_file):
    encoder = make_encoder(weights_file, input_size=112)
    assert encoder.grid_size == (8, 8)
    features = encoder(_images())
    assert features.dense.shape == (B, 64, 8, 8)

    visual = encoder.clip_model.visual
    assert encoder._positional_embedding((16, 16)) is visual.positional_embedding
    with torch.no_grad():  # rows of the 16 x 16 grid carry their row index
        visual.positional_embedding[1:] = torch.arange(16.0).repeat_interleave(16)[:, None]
    resized = encoder._positional_embedding((8, 8))
    assert resized.shape == (1 + 8 * 8, 64)
    grid = resized[1:, 0].view(8, 8)
    torch.testing.assert_close(grid, grid[:, :1].expand(8, 8))  # constant along a row
    assert (grid[1:, 0] > grid[:-1, 0]).all()  # increasing down the columns
    torch.testing.assert_close(resized[0], visual.positional_embedding[0])


def test_encode_text(weights_file):
    encoder = make_encoder(weights_file, dtype="float16")
    out = encoder.encode_text(["aerial photo of a ship.", "harbor"])
    assert out.shape == (2, 64) and out.dtype == torch.float16


def test_from_config_and_registry(weights_file):
    cfg = get_score_cfg()
    cfg.MODEL.SCORE.RSCLIP_MODEL_NAME = TINY_VIT
    cfg.MODEL.SCORE.RSCLIP_PRETRAINED_WEIGHTS = weights_file
    cfg.MODEL.SCORE.CONTEXT_INPUT_SIZE = 112
    cfg.MODEL.SCORE.RAI.CONTEXT_SOURCE = "patch"
    cfg.MODEL.SCORE.RAI.PATCH_LAYER = 1
    encoder = build_context_encoder(cfg)
    assert CONTEXT_ENCODER_REGISTRY.get("RemoteCLIPContextEncoder") is RemoteCLIPContextEncoder
    assert encoder.patch_layers == [1] and encoder.input_size == 112 and encoder.dtype == torch.float16
    assert isinstance(encoder.clip_model.visual.transformer.resblocks[0].mlp.gelu, QuickGELU)
    assert list(encoder(_images()).patch_layers) == [1]
    cfg.MODEL.SCORE.RAI.CONTEXT_SOURCE = "regional"
    assert build_context_encoder(cfg).patch_layers == []


def test_auto_context_dtype_follows_the_device(weights_file):
    """RSCLIP_DTYPE "auto": float16 on CUDA, float32 on CPU; explicit values are kept."""
    assert resolve_context_dtype("auto", "cuda") == "float16"
    assert resolve_context_dtype("auto", "cuda:1") == "float16"
    assert resolve_context_dtype("auto", "cpu") == "float32"
    assert resolve_context_dtype("float16", "cpu") == "float16"
    cfg = get_score_cfg()
    cfg.MODEL.SCORE.RSCLIP_MODEL_NAME = TINY_VIT
    cfg.MODEL.SCORE.RSCLIP_PRETRAINED_WEIGHTS = weights_file
    cfg.MODEL.SCORE.RSCLIP_DTYPE = "auto"
    cfg.MODEL.DEVICE = "cpu"
    encoder = build_context_encoder(cfg)
    assert encoder.dtype == torch.float32 and encoder.clip_model.visual.proj.dtype == torch.float32


def test_invalid_arguments(weights_file):
    with pytest.raises(ValueError, match="RSCLIP_DTYPE"):
        make_encoder(weights_file, dtype="half")
    with pytest.raises(ValueError, match=r"Patch layers \[3\] out of range"):
        make_encoder(weights_file, patch_layers=[3])
    with pytest.raises(ValueError, match="not an OpenAI-layout ViT"):
        make_encoder(model_name=TINY_CONVNEXT)


def _seq_first_block(block):
    """The authors' block: (L, B, W) attention, as open_clip's seq-first blocks computed it."""

    def forward(x, attn_mask=None):
        attn = block.attn
        y = block.ln_1(x).transpose(0, 1)  # (L, B, W)
        attended, _ = F.multi_head_attention_forward(
            y, y, y, attn.embed_dim, attn.num_heads, attn.in_proj_weight, attn.in_proj_bias,
            None, None, False, 0.0, attn.out_proj.weight, attn.out_proj.bias,
            training=False, need_weights=False,
        )  # fmt: skip
        x = x + block.ls_1(attended.transpose(0, 1))
        return x + block.ls_2(block.mlp(block.ln_2(x)))

    return forward


def test_float16_blocks_compute_attention_as_the_authors_seq_first_blocks(weights_file, monkeypatch):
    import score.modeling.context.remoteclip as remoteclip

    encoder = make_encoder(weights_file, dtype="float16", patch_layers=[0, 1])
    images = _images()
    features = encoder(images)
    with monkeypatch.context() as patch:
        for block in encoder.clip_model.visual.transformer.resblocks[:-1]:
            patch.setattr(block, "forward", _seq_first_block(block))
        reference = encoder(images)
    for got, expected in [
        (features.global_embed, reference.global_embed),
        (features.dense, reference.dense),
        (features.patch_layers[0], reference.patch_layers[0]),
    ]:
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    # PyTorch's fused fast path (what open_clip's batch-first blocks take in eval mode) differs.
    original = remoteclip._mha_fast_path
    monkeypatch.setattr(remoteclip, "_mha_fast_path", lambda enabled: original(True))
    fused = encoder(images)
    assert not torch.equal(fused.patch_layers[0], reference.patch_layers[0])
    assert torch.backends.mha.get_fastpath_enabled()  # restored
