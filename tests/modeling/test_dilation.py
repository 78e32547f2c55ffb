"""Dilation kernels (score/modeling/dilation.py) against F.max_pool2d, stride 1, padding k // 2.

Forward values are compared bit for bit; gradients to float summation order
(random inputs, so no ties between distinct pixels).
"""

import pytest
import torch
import torch.nn.functional as F

from score.modeling.dilation import (
    _max_filter_1d,
    _max_filter_1d_argmax,
    _mix_dilations,
    _MixedDilation,
    dilate,
    dilate_all,
    mix_dilations,
)

KERNELS = (3, 5, 7, 9, 11, 13)
# The second shape is smaller than the larger kernels: windows run into the padding on both sides.
SHAPES = [(2, 3, 17, 23), (1, 2, 4, 5)]


def max_pool(x: torch.Tensor, kh: int, kw: int) -> torch.Tensor:
    return F.max_pool2d(x, (kh, kw), stride=1, padding=(kh // 2, kw // 2))


def pooled_mixture(mask: torch.Tensor, weights: torch.Tensor, kernels) -> torch.Tensor:
    return sum(w * max_pool(mask, k, k) for w, k in zip(weights, kernels))


def _grads(output: torch.Tensor, inputs, upstream: torch.Tensor):
    return torch.autograd.grad(output, inputs, upstream)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dim", [-2, -1])
@pytest.mark.parametrize("kernel", KERNELS)
def test_max_filter_1d_equals_max_pool_along_one_axis(kernel, dim, shape):
    torch.manual_seed(kernel)
    x = torch.randn(shape, requires_grad=True)
    reference = max_pool(x, kernel, 1) if dim == -2 else max_pool(x, 1, kernel)
    got = _max_filter_1d(x, kernel, dim)
    assert torch.equal(got, reference)
    upstream = torch.randn_like(reference)
    torch.testing.assert_close(_grads(got, x, upstream)[0], _grads(reference, x, upstream)[0])


@pytest.mark.parametrize("dim", [-2, -1])
@pytest.mark.parametrize("kernel", KERNELS)
def test_max_filter_1d_argmax_gives_max_pool_values_and_indices(kernel, dim):
    torch.manual_seed(kernel)
    x = torch.randn(2, 3, 17, 23)
    values, index = _max_filter_1d_argmax(x, kernel, dim)
    reference, flat_index = F.max_pool2d(
        x,
        (kernel, 1) if dim == -2 else (1, kernel),
        stride=1,
        padding=(kernel // 2, 0) if dim == -2 else (0, kernel // 2),
        return_indices=True,
    )
    width = x.shape[-1]
    assert torch.equal(values, reference)
    assert torch.equal(index, flat_index // width if dim == -2 else flat_index % width)
    assert torch.equal(x.gather(dim, index), values)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kernel", (1, *KERNELS, 15))
def test_dilate_equals_max_pool_values_and_gradient(kernel, shape):
    torch.manual_seed(kernel)
    x = torch.randn(shape, requires_grad=True)
    reference = max_pool(x, kernel, kernel)
    fast = dilate(x, kernel)
    assert torch.equal(fast, reference)
    upstream = torch.randn_like(reference)
    torch.testing.assert_close(
        _grads(fast, x, upstream)[0], _grads(reference, x, upstream)[0], rtol=1e-5, atol=1e-6
    )


def test_dilate_all_grows_each_kernel_from_the_smaller_ones_in_any_order():
    torch.manual_seed(0)
    masks = torch.randn(2, 3, 17, 23)
    order = [7, 3, 13, 5, 11, 9]
    for got, kernel in zip(dilate_all(masks, order), order):
        assert torch.equal(got, max_pool(masks, kernel, kernel))


def _mixture_inputs(kernels, seed: int = 0, shape=(2, 3, 17, 13)):
    torch.manual_seed(seed)
    mask = torch.randn(shape, requires_grad=True)
    weights = torch.rand(len(kernels)).softmax(0).requires_grad_(True)
    return mask, weights


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kernels", [(k,) for k in KERNELS] + [KERNELS, (13, 3, 7)])
def test_mixed_dilation_matches_max_pool_and_the_reference_mixture(kernels, shape):
    mask, weights = _mixture_inputs(kernels, seed=len(kernels), shape=shape)
    upstream = torch.randn(shape)
    got = _MixedDilation.apply(mask, weights, kernels)
    reference = _mix_dilations(mask, weights, kernels)
    pooled = pooled_mixture(mask, weights, kernels)
    assert torch.equal(got, reference) and torch.equal(got, pooled)
    new_grads = _grads(got, [mask, weights], upstream)
    # A pixel's gradient sums up to k * k terms per kernel, in another order than autograd's.
    for expected in (reference, pooled):
        for new, ref in zip(new_grads, _grads(expected, [mask, weights], upstream)):
            torch.testing.assert_close(new, ref, rtol=1e-5, atol=1e-5)


def test_mix_dilations_takes_the_custom_function_only_for_a_gradient(monkeypatch):
    mask, weights = _mixture_inputs(KERNELS)
    calls = []
    monkeypatch.setattr(_MixedDilation, "apply", lambda *a: calls.append(a) or _mix_dilations(*a))
    mix_dilations(mask, weights, KERNELS)
    assert len(calls) == 1
    with torch.no_grad():
        mix_dilations(mask, weights, KERNELS)
    mix_dilations(mask.detach(), weights.detach(), KERNELS)
    assert len(calls) == 1


def test_mixed_dilation_keeps_only_its_inputs_for_backward():
    mask, weights = _mixture_inputs(KERNELS)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        mix_dilations(mask, weights, KERNELS)
    assert sum(saved) == mask.numel() + weights.numel()
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        _mix_dilations(mask, weights, KERNELS)
    assert sum(saved) > 10 * mask.numel()


def test_mixed_dilation_gradient_to_one_input_only():
    mask, weights = _mixture_inputs((3, 7))
    (grad_mask,) = torch.autograd.grad(mix_dilations(mask, weights.detach(), (3, 7)).sum(), [mask])
    (ref,) = torch.autograd.grad(pooled_mixture(mask, weights.detach(), (3, 7)).sum(), [mask])
    torch.testing.assert_close(grad_mask, ref, rtol=1e-6, atol=1e-6)
    (grad_w,) = torch.autograd.grad(mix_dilations(mask.detach(), weights, (3, 7)).sum(), [weights])
    (ref_w,) = torch.autograd.grad(pooled_mixture(mask.detach(), weights, (3, 7)).sum(), [weights])
    torch.testing.assert_close(grad_w, ref_w, rtol=1e-6, atol=1e-6)
