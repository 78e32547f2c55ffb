"""Region-Aware Integration (SCORE.md 5): dilation, pooling, integration, warm-up state, gradients."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from score.config import get_score_cfg
from score.modeling.dilation import _mix_dilations, _MixedDilation
from score.modeling.rai import RegionAwareIntegration, build_rai

D = 16
KERNELS = (3, 5, 7, 9, 11, 13)


def make_rai(**kwargs) -> RegionAwareIntegration:
    args = dict(embed_dim=D, nheads=2, dim_feedforward=32, num_layers=2, warmup_iters=3)
    args.update(kwargs)
    return RegionAwareIntegration(**args)


def make_context(b=2, h=4, w=4, dtype=torch.float32, layers=(22,)):
    """Stand-in for ContextFeatures (score/modeling/context)."""
    return SimpleNamespace(
        global_embed=torch.randn(b, D).to(dtype),
        dense=torch.randn(b, D, h, w).to(dtype),
        patch_layers={i: torch.randn(b, D, h, w).to(dtype) for i in layers},
    )


def set_argmax(rai: RegionAwareIntegration, kernel: int) -> None:
    with torch.no_grad():
        rai.kernel_logits.zero_()
        rai.kernel_logits[rai.kernel_candidates.index(kernel)] = 1.0


def finish_warmup(rai: RegionAwareIntegration) -> None:
    """The warm-up's iterations, then the first dilation after it, which fixes the kernel."""
    for _ in range(rai.warmup_iters):
        rai.step()
    rai.dilate(torch.zeros(1, 1, 4, 4))


def direct_pool(features, masks, soft_slope=None):
    """Weighted average of (B, C, h, w) features inside (B, Q, h', w') masks, written out."""
    masks = F.interpolate(masks, size=features.shape[-2:], mode="bilinear", align_corners=False)
    weights = (masks > 0).float() if soft_slope is None else torch.sigmoid(soft_slope * (masks - 0.5))
    num = (features[:, None] * weights[:, :, None]).sum(dim=(-2, -1))
    return num / (weights.sum(dim=(-2, -1))[..., None] + 1e-8)


# ---------------------------------------------------------------- dilation


@pytest.mark.parametrize("kernel", KERNELS)
def test_single_pixel_dilates_to_square(kernel):
    rai = make_rai().eval()
    set_argmax(rai, kernel)
    mask = torch.full((1, 1, 31, 31), -1.0)
    mask[0, 0, 15, 15] = 2.0
    dilated, soft = rai.dilate(mask)
    expected = torch.zeros(31, 31, dtype=torch.bool)
    r = kernel // 2
    expected[15 - r : 16 + r, 15 - r : 16 + r] = True
    assert not soft
    assert torch.equal(dilated[0, 0] > 0, expected)
    assert dilated.shape == mask.shape


def test_gumbel_mixture_equals_weighted_sum_of_maxpools():
    rai = make_rai().train()
    assert rai.in_gumbel_phase
    mask = torch.randn(2, 3, 12, 10)
    torch.manual_seed(7)
    weights = F.gumbel_softmax(rai.kernel_logits.detach(), tau=2.0, hard=False)
    expected = sum(w * F.max_pool2d(mask, k, stride=1, padding=k // 2) for w, k in zip(weights, KERNELS))
    torch.manual_seed(7)
    dilated, soft = rai.dilate(mask)
    assert soft
    torch.testing.assert_close(dilated, expected)


def test_gumbel_mixture_with_known_weights(monkeypatch):
    rai = make_rai().train()
    known = torch.tensor([0.0, 0.5, 0.0, 0.0, 0.25, 0.25])
    monkeypatch.setattr(F, "gumbel_softmax", lambda logits, tau, hard: known + 0 * logits)
    mask = torch.randn(1, 2, 9, 9, requires_grad=True)
    dilated, _ = rai.dilate(mask)
    pool = [F.max_pool2d(mask, k, stride=1, padding=k // 2) for k in (5, 11, 13)]
    torch.testing.assert_close(dilated, 0.5 * pool[0] + 0.25 * pool[1] + 0.25 * pool[2])
    dilated.sum().backward()
    assert mask.grad is not None and mask.grad.abs().sum() > 0


def test_fixed_path_uses_argmax_kernel_and_is_detached():
    rai = make_rai().train()
    set_argmax(rai, 7)
    finish_warmup(rai)
    assert not rai.in_gumbel_phase
    mask = torch.randn(2, 3, 12, 12, requires_grad=True)
    dilated, soft = rai.dilate(mask)
    assert not soft
    torch.testing.assert_close(dilated, F.max_pool2d(mask.detach(), 7, stride=1, padding=3))
    out = rai(torch.randn(2, 3, D, requires_grad=True), mask, make_context())
    (out * torch.randn_like(out)).sum().backward()
    assert mask.grad is None
    # An exact zero gradient, so that DistributedDataParallel sees every parameter used.
    assert torch.equal(rai.kernel_logits.grad, torch.zeros_like(rai.kernel_logits))
    assert rai.lambda_weight.grad is not None


def test_kernel_is_fixed_once_when_the_phase_ends():
    rai = make_rai().train()
    set_argmax(rai, 9)
    finish_warmup(rai)
    assert int(rai.fixed_kernel) == 9
    # Later changes of the logits (e.g. optimiser momentum) no longer move the kernel.
    set_argmax(rai, 3)
    mask = torch.randn(1, 1, 15, 15)
    torch.testing.assert_close(rai.dilate(mask)[0], F.max_pool2d(mask, 9, stride=1, padding=4))
    assert rai.summary()["rai/kernel"] == 9.0


def test_eval_before_fixing_uses_current_argmax():
    rai = make_rai().eval()
    set_argmax(rai, 11)
    mask = torch.randn(1, 1, 15, 15)
    torch.testing.assert_close(rai.dilate(mask)[0], F.max_pool2d(mask, 11, stride=1, padding=5))


def test_phase_ends_exactly_after_warmup_iters_and_never_in_eval():
    rai = make_rai(warmup_iters=4).train()
    for i in range(4):
        assert rai.in_gumbel_phase, i
        rai.eval()
        assert not rai.in_gumbel_phase
        rai.train()
        rai.step()
    assert int(rai.iteration) == 4
    assert not rai.in_gumbel_phase
    assert not make_rai(warmup_iters=0).train().in_gumbel_phase
    assert not make_rai(dilation="paper").train().in_gumbel_phase


def test_state_dict_round_trip_keeps_warmup_state():
    rai = make_rai(warmup_iters=5).train()
    set_argmax(rai, 13)
    for _ in range(7):
        rai.step()
    rai.dilate(torch.zeros(1, 1, 4, 4))
    state = rai.state_dict()
    assert int(state["iteration"]) == 7 and int(state["fixed_kernel"]) == 13

    fresh = make_rai(warmup_iters=5).train()
    assert fresh.in_gumbel_phase
    # Loading through a parent module, as a checkpointer does.
    parent = torch.nn.ModuleDict({"rai": fresh})
    parent.load_state_dict({f"rai.{k}": v for k, v in state.items()})
    assert int(fresh.iteration) == 7
    assert not fresh.in_gumbel_phase
    assert fresh.current_kernel() == 13

    early = make_rai(warmup_iters=5).train()
    for _ in range(2):
        early.step()
    restored = make_rai(warmup_iters=5).train()
    restored.load_state_dict(early.state_dict())
    for _ in range(3):
        assert restored.in_gumbel_phase
        restored.step()
    assert not restored.in_gumbel_phase


# ---------------------------------------------------------------- "paper" dilation


@pytest.mark.parametrize(
    "delta, k_lo, t",
    [(2.4, 5, 0.2), (1.0, 3, 0.5), (0.0, 3, 0.0), (-1.0, 3, 0.0), (3.0, 5, 0.5), (12.0, 13, 0.0)],
)
def test_paper_dilation_interpolates_odd_kernels(delta, k_lo, t):
    rai = make_rai(dilation="paper", delta_init=delta, max_delta=10.0)
    assert not hasattr(rai, "kernel_logits")
    mask = torch.randn(2, 2, 16, 16)

    def pool(k):
        return F.max_pool2d(mask, k, stride=1, padding=k // 2)

    expected = (1 - t) * pool(k_lo) + t * pool(k_lo + 2)
    for training in (True, False):
        rai.train(training)
        dilated, soft = rai.dilate(mask)
        torch.testing.assert_close(dilated, expected)
        assert soft == training


def test_paper_dilation_gradient_reaches_delta():
    rai = make_rai(dilation="paper", delta_init=2.4).train()
    mask = torch.randn(1, 2, 10, 10)
    upstream = torch.randn(1, 2, 10, 10)
    dilated, _ = rai.dilate(mask)
    (dilated * upstream).sum().backward()
    # k = 5.4: M' = (1 - t) maxpool_5 + t maxpool_7 with t = (k - 5) / 2, dk / d delta = 1.
    pool5 = F.max_pool2d(mask, 5, stride=1, padding=2)
    pool7 = F.max_pool2d(mask, 7, stride=1, padding=3)
    expected = ((pool7 - pool5) / 2 * upstream).sum()
    torch.testing.assert_close(rai.delta.grad, expected)
    assert rai.delta.grad != 0

    out = rai(torch.randn(1, 2, D), torch.randn(1, 2, 10, 10), make_context(b=1))
    rai.delta.grad = None
    (out * torch.randn_like(out)).sum().backward()
    assert rai.delta.grad is not None and torch.isfinite(rai.delta.grad) and rai.delta.grad != 0


# ---------------------------------------------------------------- pooling


def test_hard_and_soft_pooling_match_direct_average():
    rai = make_rai(soft_pool_slope=10.0)
    context = make_context(b=2, h=4, w=4)
    dilated = torch.randn(2, 3, 8, 8)
    dilated[0, 0] = -1.0  # an empty mask pools to zeros
    hard = rai.regional_context(dilated, False, context, torch.float32)
    soft = rai.regional_context(dilated, True, context, torch.float32)
    torch.testing.assert_close(hard, direct_pool(context.dense, dilated))
    torch.testing.assert_close(soft, direct_pool(context.dense, dilated, soft_slope=10.0))
    assert torch.equal(hard[0, 0], torch.zeros(D))


def test_pooling_on_hand_made_grid():
    rai = make_rai()
    dense = torch.arange(4.0).reshape(1, 1, 2, 2).repeat(1, D, 1, 1)  # values 0, 1 / 2, 3
    context = SimpleNamespace(global_embed=torch.zeros(1, D), dense=dense, patch_layers={})
    dilated = torch.tensor([[[[1.0, -1.0], [1.0, -1.0]]]])  # left column
    hard = rai.regional_context(dilated, False, context, torch.float32)
    torch.testing.assert_close(hard, torch.full((1, 1, D), 1.0))  # (0 + 2) / 2
    soft = rai.regional_context(dilated, True, context, torch.float32)
    w_in, w_out = torch.sigmoid(torch.tensor(5.0)), torch.sigmoid(torch.tensor(-15.0))
    expected = (w_in * 2 + w_out * 4) / (2 * w_in + 2 * w_out + 1e-8)
    torch.testing.assert_close(soft, expected.expand(1, 1, D))


def test_cls_source_gives_global_embed_for_every_query():
    rai = make_rai(context_source="cls", lambda_init=0.5).train()
    # No region is formed, hence no dilation parameter (each one must get a gradient).
    assert not hasattr(rai, "kernel_logits") and not hasattr(rai, "delta")
    assert not rai.in_gumbel_phase
    rai.eval()
    context = make_context(b=2)
    class_embed = torch.randn(2, 5, D)
    out = rai(class_embed, torch.randn(2, 5, 8, 8), context)
    x = class_embed + 0.5 * context.global_embed[:, None].expand(2, 5, D)
    torch.testing.assert_close(out, rai.encoder(x.reshape(10, 1, D)).reshape(2, 5, D))
    # Independent of the masks.
    torch.testing.assert_close(rai(class_embed, torch.randn(2, 5, 8, 8), context), out)
    rai.train()
    for _ in range(rai.warmup_iters):
        rai.step()
    assert "rai/kernel" not in rai.summary()


def test_patch_source_pools_the_chosen_layer():
    rai = make_rai(context_source="patch", patch_layer=7).eval()
    context = make_context(layers=(3, 7))
    dilated = torch.randn(2, 3, 8, 8)
    region = rai.regional_context(dilated, False, context, torch.float32)
    torch.testing.assert_close(region, direct_pool(context.patch_layers[7], dilated))
    with pytest.raises(KeyError, match="MODEL.SCORE.RAI.PATCH_LAYER = 7"):
        rai.regional_context(dilated, False, make_context(layers=(3,)), torch.float32)


def test_fp16_context_pooling_precision():
    rai = make_rai().train()
    context = make_context(dtype=torch.float16)
    dilated = torch.randn(2, 3, 8, 8)
    from score.modeling.open_vocab import mask_pool

    # After the phase: pooled in fp16 (the context's dtype), then cast.
    hard = rai.regional_context(dilated, False, context, torch.float32)
    assert hard.dtype == torch.float32
    assert torch.equal(hard, mask_pool(context.dense, dilated).float())
    torch.testing.assert_close(hard, direct_pool(context.dense.float(), dilated), atol=1e-2, rtol=1e-2)
    # In the phase: pooled in float32.
    soft = rai.regional_context(dilated, True, context, torch.float32)
    torch.testing.assert_close(soft, direct_pool(context.dense.float(), dilated, soft_slope=10.0))


@pytest.mark.parametrize("source", ["regional", "cls", "patch"])
@pytest.mark.parametrize("training", [True, False])
def test_fp16_context_forward(source, training):
    rai = make_rai(context_source=source).train(training)
    context = make_context(dtype=torch.float16)
    out = rai(torch.randn(2, 3, D), torch.randn(2, 3, 16, 16), context)
    assert out.shape == (2, 3, D) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


# ---------------------------------------------------------------- integration


def test_integration_equals_direct_computation():
    rai = make_rai(lambda_init=0.3).eval()
    set_argmax(rai, 5)
    context = make_context()
    class_embed = torch.randn(2, 3, D)
    mask = torch.randn(2, 3, 16, 16)
    pooled = direct_pool(context.dense, F.max_pool2d(mask, 5, stride=1, padding=2))
    x = class_embed + 0.3 * pooled
    expected = rai.encoder(x.reshape(6, 1, D)).reshape(2, 3, D)
    torch.testing.assert_close(rai(class_embed, mask, context), expected)
    # Queries do not interact: changing one query changes only its own output.
    other = class_embed.clone()
    other[0, 1] += 1.0
    changed = rai(other, mask, context)
    assert not torch.allclose(changed[0, 1], expected[0, 1])
    torch.testing.assert_close(changed[:, [0, 2]], expected[:, [0, 2]])
    torch.testing.assert_close(changed[1], expected[1])


def test_encoder_layer_is_residual_mlp_on_length_one_sequences():
    rai = make_rai().eval()
    layer = rai.encoder.layers[0]
    x = torch.randn(5, 1, D)
    attn = layer.self_attn
    v = F.linear(x, attn.in_proj_weight[2 * D :], attn.in_proj_bias[2 * D :])
    h = layer.norm1(x + attn.out_proj(v))
    expected = layer.norm2(h + layer.linear2(torch.relu(layer.linear1(h))))
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)


def test_gradients_in_gumbel_phase():
    rai = make_rai().train()
    assert rai.in_gumbel_phase
    class_embed = torch.randn(2, 3, D, requires_grad=True)
    mask = torch.randn(2, 3, 16, 16, requires_grad=True)
    out = rai(class_embed, mask, make_context(dtype=torch.float16))
    (out * torch.randn_like(out)).sum().backward()
    for name, param in rai.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
    assert rai.kernel_logits.grad.abs().sum() > 0
    assert rai.lambda_weight.grad.abs().sum() > 0
    assert mask.grad is not None and mask.grad.abs().sum() > 0
    for layer in rai.encoder.layers:
        # Expected: with one key the softmax weight is identically 1, so the
        # query and key projections get no gradient (SCORE.md 5.3); zero up to
        # the rounding of the softmax backward.
        grad = layer.self_attn.in_proj_weight.grad
        assert grad[2 * D :].abs().max() > 0
        assert grad[: 2 * D].abs().max() <= 1e-6 * grad[2 * D :].abs().max()
        assert layer.self_attn.in_proj_bias.grad[: 2 * D].abs().max() <= 1e-6 * grad[2 * D :].abs().max()
        assert layer.linear1.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------- construction


def test_parameter_count_matches_authors():
    rai = RegionAwareIntegration(embed_dim=768, num_layers=5, nheads=8, dim_feedforward=2048)
    assert sum(p.numel() for p in rai.parameters()) == 27_569_927  # 5 x 5,513,984 + lambda + 6 logits
    paper = RegionAwareIntegration(embed_dim=768, dilation="paper", num_layers=1)
    assert sum(p.numel() for p in paper.parameters()) == 5_513_984 + 1 + 1  # no kernel logits, one delta


def test_kernel_logits_initialised_in_range():
    rai = make_rai()
    assert rai.kernel_logits.shape == (6,)
    assert (rai.kernel_logits.abs() <= 0.5).all()
    assert rai.lambda_weight.shape == (1,) and rai.lambda_weight.item() == pytest.approx(0.1)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(dilation="fixed"), "MODEL.SCORE.RAI.DILATION.*'fixed'"),
        (dict(kernel_candidates=[3, 4]), r"MODEL.SCORE.RAI.KERNEL_CANDIDATES.*\[3, 4\]"),
        (dict(kernel_candidates=[]), r"MODEL.SCORE.RAI.KERNEL_CANDIDATES.*\[\]"),
        (dict(context_source="global"), "MODEL.SCORE.RAI.CONTEXT_SOURCE.*'global'"),
        (dict(gumbel_tau=0.0), "MODEL.SCORE.RAI.GUMBEL_TAU.*0.0"),
        (dict(warmup_iters=-1), "MODEL.SCORE.RAI.GUMBEL_WARMUP_ITERS.*-1"),
    ],
)
def test_invalid_values_name_the_key(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_rai(**kwargs)


def test_build_from_config():
    cfg = get_score_cfg()
    cfg.MODEL.SCORE.RAI.NUM_LAYERS = 1
    cfg.MODEL.SCORE.RAI.NHEADS = 2
    cfg.MODEL.SCORE.RAI.DIM_FEEDFORWARD = 8
    cfg.MODEL.SCORE.RAI.GUMBEL_WARMUP_ITERS = 10
    cfg.MODEL.SCORE.RAI.KERNEL_CANDIDATES = [3, 5]
    rai = build_rai(cfg, D)
    assert isinstance(rai, RegionAwareIntegration)
    assert len(rai.encoder.layers) == 1 and rai.warmup_iters == 10 and rai.kernel_candidates == (3, 5)
    assert rai.encoder.layers[0].linear1.out_features == 8
    cfg.MODEL.SCORE.RAI.ENABLED = False
    assert build_rai(cfg, D) is None


def test_summary_scalars():
    rai = make_rai().train()
    summary = rai.summary()
    assert summary["rai/iteration"] == 0.0 and summary["rai/in_gumbel_phase"] == 1.0
    assert summary["rai/lambda"] == pytest.approx(0.1)
    probs = [summary[f"rai/kernel_prob_k{k}"] for k in KERNELS]
    assert sum(probs) == pytest.approx(1.0)
    assert summary["rai/kernel"] == KERNELS[int(torch.tensor(probs).argmax())]
    paper = make_rai(dilation="paper", delta_init=2.5).summary()
    assert paper["rai/kernel"] == pytest.approx(5.5) and paper["rai/delta"] == pytest.approx(2.5)


# ---------------------------------------------------------------- low-memory Gumbel mixture


def test_gumbel_phase_uses_the_low_memory_mixture(monkeypatch):
    rai = make_rai().train()
    calls = []
    monkeypatch.setattr(_MixedDilation, "apply", lambda *a: calls.append(a) or _mix_dilations(*a))
    rai.dilate(torch.randn(1, 2, 9, 9, requires_grad=True))
    assert len(calls) == 1
