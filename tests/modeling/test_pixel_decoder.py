"""Pixel decoder: deformable attention core, sine position encoding, MSDeformAttnPixelDecoder."""

import math

import score  # noqa: F401, I001  (first: its shims let detectron2.layers import without detectron2._C)

# isort: split
import pytest
import torch
from detectron2.layers import ShapeSpec

from score.config import get_score_cfg
from score.modeling.pixel_decoder import PIXEL_DECODER_REGISTRY, build_pixel_decoder
from score.modeling.pixel_decoder.ms_deform_attn import (
    HAS_FUSED_MS_DEFORM_ATTN,
    MSDeformAttn,
    ms_deform_attn_core_pytorch,
    ms_deform_attn_fused,
)
from score.modeling.pixel_decoder.msdeformattn import MSDeformAttnPixelDecoder
from score.modeling.pixel_decoder.position_encoding import PositionEmbeddingSine

BACKBONE_CHANNELS = {"res2": 192, "res3": 384, "res4": 768, "res5": 1536}


def _input_shape(channels=BACKBONE_CHANNELS):
    return {name: ShapeSpec(channels=c, stride=4 * 2**i) for i, (name, c) in enumerate(channels.items())}


def _tiny_decoder(**overrides) -> MSDeformAttnPixelDecoder:
    kwargs = dict(
        input_shape=_input_shape({"res2": 8, "res3": 16, "res4": 24, "res5": 40}),
        transformer_in_features=["res3", "res4", "res5"],
        conv_dim=32,
        mask_dim=32,
        norm="GN",
        transformer_dropout=0.0,
        transformer_nheads=4,
        transformer_n_points=2,
        transformer_dim_feedforward=64,
        transformer_enc_layers=2,
        common_stride=4,
        deformable_attention_impl="pytorch",
    )
    kwargs.update(overrides)
    return MSDeformAttnPixelDecoder(**kwargs)


def _random_problem(batch=2, heads=2, head_dim=3, shapes=((3, 4), (2, 5)), queries=4, points=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    spatial_shapes = torch.tensor(shapes, dtype=torch.long)
    total = int(spatial_shapes.prod(1).sum())
    value = torch.randn(batch, total, heads, head_dim, generator=g, dtype=torch.float64)
    # Some locations fall outside [0, 1] to exercise the zero padding.
    locations = torch.rand(batch, queries, heads, len(shapes), points, 2, generator=g, dtype=torch.float64)
    locations = locations * 1.4 - 0.2
    weights = torch.rand(batch, queries, heads, len(shapes), points, generator=g, dtype=torch.float64)
    weights = weights / weights.sum(dim=(-1, -2), keepdim=True)
    return value, spatial_shapes, locations, weights


def _naive_bilinear(image, x, y):
    """Bilinear read of image (C, H, W) at normalised (x, y), align_corners False, zeros outside."""
    _, h, w = image.shape
    px, py = x * w - 0.5, y * h - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    out = torch.zeros(image.shape[0], dtype=image.dtype)
    for xi, yi in ((x0, y0), (x0 + 1, y0), (x0, y0 + 1), (x0 + 1, y0 + 1)):
        weight = (1 - abs(px - xi)) * (1 - abs(py - yi))
        if 0 <= xi < w and 0 <= yi < h:
            out += weight * image[:, yi, xi]
    return out


def test_ms_deform_attn_core_matches_naive_per_point_computation():
    value, spatial_shapes, locations, weights = _random_problem()
    batch, _, heads, head_dim = value.shape
    _, queries, _, levels, points, _ = locations.shape
    starts = [0, 12]
    expected = torch.zeros(batch, queries, heads * head_dim, dtype=value.dtype)
    for b in range(batch):
        for q in range(queries):
            for m in range(heads):
                acc = torch.zeros(head_dim, dtype=value.dtype)
                for lvl in range(levels):
                    h, w = spatial_shapes[lvl].tolist()
                    image = value[b, starts[lvl] : starts[lvl] + h * w, m].T.reshape(head_dim, h, w)
                    for p in range(points):
                        x, y = locations[b, q, m, lvl, p].tolist()
                        acc += weights[b, q, m, lvl, p] * _naive_bilinear(image, x, y)
                expected[b, q, m * head_dim : (m + 1) * head_dim] = acc
    out = ms_deform_attn_core_pytorch(value, spatial_shapes, locations, weights)
    assert out.shape == (batch, queries, heads * head_dim)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


def _one_pass_core(value, spatial_shapes, sampling_locations, attention_weights):
    """The core as it was before the query chunks: every query sampled in one pass."""
    batch, _, num_heads, head_dim = value.shape
    _, num_queries, _, num_levels, num_points, _ = sampling_locations.shape
    shapes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    value_list = value.split([h * w for h, w in shapes], dim=1)
    sampling_grids = 2 * sampling_locations - 1
    sampled = []
    for level, (h, w) in enumerate(shapes):
        value_l = value_list[level].flatten(2).transpose(1, 2).reshape(batch * num_heads, head_dim, h, w)
        grid_l = sampling_grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        sampled.append(
            torch.nn.functional.grid_sample(
                value_l, grid_l, mode="bilinear", padding_mode="zeros", align_corners=False
            )
        )
    weights = attention_weights.transpose(1, 2).reshape(
        batch * num_heads, 1, num_queries, num_levels * num_points
    )
    output = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1)
    return output.view(batch, num_heads * head_dim, num_queries).transpose(1, 2).contiguous()


@pytest.mark.parametrize("chunk", [1, 7, 512])
def test_ms_deform_attn_core_in_query_chunks_equals_one_pass(chunk, monkeypatch):
    """Bit-equal outputs without autograd, whatever the chunk; with autograd, one pass, equal gradients."""
    import score.modeling.pixel_decoder.ms_deform_attn as msda

    monkeypatch.setattr(msda, "_QUERIES_PER_CHUNK", chunk)
    problem = _random_problem(heads=4, head_dim=8, shapes=((6, 9), (3, 5), (2, 2)), queries=45, points=4)
    value, spatial_shapes, locations, weights = (t.float() if t.is_floating_point() else t for t in problem)
    with torch.no_grad():
        expected = _one_pass_core(value, spatial_shapes, locations, weights)
        assert torch.equal(ms_deform_attn_core_pytorch(value, spatial_shapes, locations, weights), expected)
    inputs = [t.clone().requires_grad_() for t in (value, locations, weights)]
    ref_inputs = [t.clone().requires_grad_() for t in (value, locations, weights)]
    out = ms_deform_attn_core_pytorch(inputs[0], spatial_shapes, *inputs[1:])
    ref = _one_pass_core(ref_inputs[0], spatial_shapes, *ref_inputs[1:])
    assert torch.equal(out, ref)
    grad = torch.randn_like(ref)
    for got, want in zip(torch.autograd.grad(out, inputs, grad), torch.autograd.grad(ref, ref_inputs, grad)):
        assert torch.equal(got, want)


_NO_FUSED_REASON = (
    "the fused op needs a CUDA device"
    if HAS_FUSED_MS_DEFORM_ATTN
    else "compiled MultiScaleDeformableAttention op not importable"
)


@pytest.mark.skipif(not (HAS_FUSED_MS_DEFORM_ATTN and torch.cuda.is_available()), reason=_NO_FUSED_REASON)
def test_fused_kernel_matches_pytorch_core():
    value, spatial_shapes, locations, weights = _random_problem(
        batch=2, heads=4, head_dim=8, queries=16, seed=1
    )
    value, locations, weights = (t.float().cuda().requires_grad_() for t in (value, locations, weights))
    spatial_shapes = spatial_shapes.cuda()
    start = torch.cat((spatial_shapes.new_zeros(1), spatial_shapes.prod(1).cumsum(0)[:-1]))
    ref = ms_deform_attn_core_pytorch(value, spatial_shapes, locations, weights)
    fused = ms_deform_attn_fused(value, spatial_shapes, start, locations, weights)
    # float32 accumulation order differs between the kernel and grid_sample.
    torch.testing.assert_close(fused, ref, rtol=1e-4, atol=1e-5)
    grads_ref = torch.autograd.grad(ref.square().sum(), (value, locations, weights))
    grads_fused = torch.autograd.grad(fused.square().sum(), (value, locations, weights))
    for g_fused, g_ref in zip(grads_fused, grads_ref):
        torch.testing.assert_close(g_fused, g_ref, rtol=1e-3, atol=1e-4)


def test_ms_deform_attn_init_and_bad_arguments():
    attn = MSDeformAttn(d_model=16, n_levels=2, n_heads=4, n_points=3)
    offsets = attn.sampling_offsets.bias.view(4, 2, 3, 2)
    # Head 0 looks along +x, head 1 along +y, at distances 1..P on every level.
    torch.testing.assert_close(offsets[0, 1, :, 0], torch.tensor([1.0, 2.0, 3.0]))
    torch.testing.assert_close(offsets[1, 0, :, 1], torch.tensor([1.0, 2.0, 3.0]))
    assert torch.all(attn.attention_weights.weight == 0) and torch.all(attn.attention_weights.bias == 0)
    with pytest.raises(ValueError, match="impl must be one of"):
        MSDeformAttn(d_model=16, n_levels=2, n_heads=4, n_points=3, impl="cuda")
    with pytest.raises(ValueError, match="divisible"):
        MSDeformAttn(d_model=10, n_levels=2, n_heads=4, n_points=3)


def test_sine_position_encoding_matches_formula():
    pe = PositionEmbeddingSine(num_pos_feats=4, normalize=True)
    out = pe(torch.zeros(1, 7, 2, 3))
    assert out.shape == (1, 8, 2, 3) and out.dtype == torch.float32
    row, col = 1, 0
    y = (row + 1) / 2 * 2 * math.pi
    x = (col + 1) / 3 * 2 * math.pi
    expected = [math.sin(y), math.cos(y), math.sin(y / 100), math.cos(y / 100)]
    expected += [math.sin(x), math.cos(x), math.sin(x / 100), math.cos(x / 100)]
    torch.testing.assert_close(out[0, :, row, col], torch.tensor(expected), rtol=1e-5, atol=1e-5)


def test_full_size_parameter_count_and_checkpoint_names():
    cfg = get_score_cfg()
    cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME = "MSDeformAttnPixelDecoder"  # Base-SCORE.yaml's
    cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM = 256
    cfg.MODEL.SEM_SEG_HEAD.MASK_DIM = 256
    cfg.MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS = 6
    decoder = build_pixel_decoder(cfg, _input_shape())
    assert isinstance(decoder, MSDeformAttnPixelDecoder)
    assert sum(p.numel() for p in decoder.parameters()) == 5_790_144
    shapes = {k: tuple(v.shape) for k, v in decoder.state_dict().items()}
    assert shapes["input_proj.0.0.weight"] == (256, 1536, 1, 1)
    assert shapes["input_proj.2.0.weight"] == (256, 384, 1, 1)
    assert shapes["transformer.level_embed"] == (3, 256)
    assert shapes["transformer.encoder.layers.5.self_attn.sampling_offsets.weight"] == (192, 256)
    assert shapes["transformer.encoder.layers.5.self_attn.attention_weights.weight"] == (96, 256)
    assert shapes["transformer.encoder.layers.0.linear1.weight"] == (1024, 256)
    assert shapes["mask_features.weight"] == (256, 256, 1, 1)
    assert shapes["adapter_1.weight"] == (256, 192, 1, 1)
    assert shapes["layer_1.weight"] == (256, 256, 3, 3)
    assert {"adapter_1.norm.weight", "layer_1.norm.bias", "transformer.encoder.layers.0.norm2.bias"} <= set(
        shapes
    )
    assert "MSDeformAttnPixelDecoder" in PIXEL_DECODER_REGISTRY


def test_forward_shapes_on_odd_padded_size_and_gradients():
    torch.manual_seed(0)
    decoder = _tiny_decoder()
    height, width = 96, 128  # padded to 32; 96 / 32 = 3 is odd
    features = {
        name: torch.randn(2, spec.channels, height // spec.stride, width // spec.stride)
        for name, spec in _input_shape({"res2": 8, "res3": 16, "res4": 24, "res5": 40}).items()
    }
    mask_features, encoder_out, multi_scale = decoder.forward_features(features)
    assert mask_features.shape == (2, 32, 24, 32)
    assert encoder_out.shape == (2, 32, 3, 4)
    assert [tuple(f.shape) for f in multi_scale] == [(2, 32, 3, 4), (2, 32, 6, 8), (2, 32, 12, 16)]
    (mask_features.square().mean() + sum(f.square().mean() for f in multi_scale)).backward()
    for name, p in decoder.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_forward_runs_in_float32_under_autocast():
    decoder = _tiny_decoder(transformer_enc_layers=1)
    features = {
        name: torch.randn(1, spec.channels, 64 // spec.stride, 64 // spec.stride, dtype=torch.bfloat16)
        for name, spec in _input_shape({"res2": 8, "res3": 16, "res4": 24, "res5": 40}).items()
    }
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mask_features, _, multi_scale = decoder.forward_features(features)
    assert mask_features.dtype == torch.float32
    assert all(f.dtype == torch.float32 for f in multi_scale)
