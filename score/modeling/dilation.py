"""Dilation of mask logits by stride-1 max-pools: the kernels of RAI's adaptive region formation.

SCORE.md 5.1 dilates each mask-logit map by a max-pool of odd kernel k,
stride 1 and padding k // 2 (``F.max_pool2d`` semantics, padding never the
max), and during the Gumbel warm-up mixes the dilations of every kernel
candidate. ``F.max_pool2d`` is the reference; these kernels give its values
bit for bit (tests/modeling/test_dilation.py) and exist for speed and memory:

- ``dilate``: a square max filter is separable, and each 1-D filter runs as
  log2(k) element-wise maxima (sparse-table doubling), several times faster
  than ``max_pool2d`` on a CPU for the larger kernels;
- ``dilate_all``: max filters compose, so each kernel grows from the next smaller;
- ``mix_dilations``: the Gumbel mixture through an autograd Function that
  keeps only its two inputs for backward instead of every intermediate maximum
  (docs/PERFORMANCE.md, "Gumbel-phase dilation memory").

Shorthand: B batch, Q queries, H x W mask-logit size, n kernel candidates.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["dilate", "dilate_all", "mix_dilations"]


def _max_filter_1d(x: Tensor, kernel: int, dim: int) -> Tensor:
    """Stride-1 max over windows of odd ``kernel`` along ``dim`` (-2 or -1), padding kernel // 2.

    The padding is -inf, so it is never the maximum (``max_pool``'s rule).

    Sparse-table doubling: after j steps each position holds the max of the
    2^j values from it on; a window of ``kernel`` is the max of two such
    windows of the largest 2^j <= kernel that overlap to cover it exactly.
    """
    radius, size = kernel // 2, x.shape[dim]
    pad = [0, 0, radius, radius] if dim == -2 else [radius, radius]
    y = F.pad(x, pad, value=float("-inf"))
    width = 1
    while 2 * width <= kernel:
        length = y.shape[dim] - width
        y = torch.maximum(y.narrow(dim, 0, length), y.narrow(dim, width, length))
        width *= 2
    return torch.maximum(y.narrow(dim, 0, size), y.narrow(dim, kernel - width, size))


def dilate(mask_logits: Tensor, kernel: int) -> Tensor:
    """``F.max_pool2d(M, kernel, stride=1, padding=kernel // 2)`` for odd ``kernel``: (B, Q, H, W) -> same.

    Two 1-D max filters (rows, then columns): the same values, and gradients
    through autograd that equal max_pool2d's wherever the maximum is unique.
    """
    return _max_filter_1d(_max_filter_1d(mask_logits, kernel, -2), kernel, -1)


def dilate_all(mask_logits: Tensor, kernels: Sequence[int]) -> List[Tensor]:
    """``dilate(mask_logits, k)`` for every k of ``kernels``, in that order.

    A window of a, then one of b, is one of a + b - 1 (padding included), so
    each kernel is grown from the next smaller one.
    """
    dilated, grown, size = {}, mask_logits, 1
    for kernel in sorted(set(kernels)):
        grown = dilate(grown, kernel - size + 1)
        size = kernel
        dilated[kernel] = grown
    return [dilated[k] for k in kernels]


def _mix_dilations(mask_logits: Tensor, weights: Tensor, kernels: Sequence[int]) -> Tensor:
    """Reference Gumbel mixture sum_k w_k * dilate_k(M) under plain autograd: (B, Q, H, W) -> same."""
    return sum(w * m for w, m in zip(weights, dilate_all(mask_logits, kernels)))


def _max_filter_1d_argmax(x: Tensor, kernel: int, dim: int) -> Tuple[Tensor, Tensor]:
    """``_max_filter_1d`` through ``max_pool1d``: the values and, per output, the index along ``dim``
    of the input element that holds the maximum (padding excluded)."""
    moved = x.movedim(dim, -1)
    shape = moved.shape
    values, index = F.max_pool1d(
        moved.reshape(-1, 1, shape[-1]), kernel, stride=1, padding=kernel // 2, return_indices=True
    )
    return values.view(shape).movedim(-1, dim), index.view(shape).movedim(-1, dim)


class _MixedDilation(torch.autograd.Function):
    """``_mix_dilations`` with a backward that keeps only its two inputs and routes through indices.

    Under autograd the reference keeps every padded copy and every element-wise
    maximum of the n max filters (about 40 full-size tensors per call for six
    kernels, and RAI runs once per decoder layer), and its backward through
    those chains of maxima costs several times the forward. This keeps M and
    the weights; the backward recomputes each dilation as two 1-D
    ``max_pool1d`` passes with their argmax indices and scatters the gradient
    back along them: dL/dw_k = sum(G * dilate_k(M)), dL/dM = sum_k
    adjoint_k(w_k G). The forward values are the reference's, bit for bit; the
    gradients equal it up to float summation order, except at exact ties
    between distinct pixels, where the whole gradient goes to one of them
    (``max_pool``'s rule) instead of being split.
    """

    @staticmethod
    def forward(ctx, mask_logits: Tensor, weights: Tensor, kernels: Tuple[int, ...]) -> Tensor:
        ctx.kernels = kernels
        ctx.save_for_backward(mask_logits, weights)
        return _mix_dilations(mask_logits, weights, kernels)

    @staticmethod
    def backward(ctx, grad: Tensor):
        mask_logits, weights = ctx.saved_tensors
        need_mask, need_weights = ctx.needs_input_grad[:2]
        grad_mask = torch.zeros_like(mask_logits) if need_mask else None
        grad_weights = torch.zeros_like(weights) if need_weights else None
        for i, (w, kernel) in enumerate(zip(weights, ctx.kernels)):
            rows, row_index = _max_filter_1d_argmax(mask_logits, kernel, -2)
            dilated, col_index = _max_filter_1d_argmax(rows, kernel, -1)
            if need_weights:
                grad_weights[i] = (grad * dilated).sum()
            if need_mask:
                grad_rows = torch.zeros_like(rows).scatter_add_(-1, col_index, grad * w)
                grad_mask.scatter_add_(-2, row_index, grad_rows)
        return grad_mask, grad_weights, None


def mix_dilations(mask_logits: Tensor, weights: Tensor, kernels: Sequence[int]) -> Tensor:
    """Gumbel mixture sum_k w_k * dilate_k(M): (B, Q, H, W), weights (n,) -> (B, Q, H, W).

    Through ``_MixedDilation`` when a gradient is needed, else the plain sum.
    """
    if torch.is_grad_enabled() and (mask_logits.requires_grad or weights.requires_grad):
        return _MixedDilation.apply(mask_logits, weights, tuple(kernels))
    return _mix_dilations(mask_logits, weights, kernels)
