"""Multi-scale deformable attention (Deformable DETR, Zhu et al. 2021, eq. 3).

Each query attends to ``n_points`` sampled locations per head and per level:
the locations are its reference point plus learned offsets, the values there
are read by bilinear interpolation, and the samples are averaged with learned,
softmax-normalised weights (softmax over levels x points of one head).

Two implementations of that core:

* ``ms_deform_attn_core_pytorch``: bilinear ``grid_sample`` per level; runs on
  any device and is the reference.
* the fused CUDA kernel ``MultiScaleDeformableAttention`` that Deformable DETR
  and Mask2Former compile (``ops/make.sh``). It is tried once at import; where
  it is importable, ``impl="auto"`` uses it for float CUDA inputs.

Shorthand: B batch, Lq queries, S sum of H_l * W_l over levels, L levels,
M heads, P points per head and level, Dh = d_model / M channels per head.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd import Function
from torch.autograd.function import once_differentiable

__all__ = ["HAS_FUSED_MS_DEFORM_ATTN", "MSDeformAttn", "ms_deform_attn_core_pytorch", "ms_deform_attn_fused"]

logger = logging.getLogger(__name__)

try:
    import MultiScaleDeformableAttention as _MSDA
except ImportError as e:
    _MSDA = None
    HAS_FUSED_MS_DEFORM_ATTN = False
    logger.info("Fused MultiScaleDeformableAttention op not importable (%s); using the PyTorch path.", e)
else:
    HAS_FUSED_MS_DEFORM_ATTN = True
    logger.info("Fused MultiScaleDeformableAttention op found; used for float CUDA inputs.")

_IMPLS = ("auto", "pytorch")
# Queries sampled together by the PyTorch core at inference (a speed setting, not a result one).
_QUERIES_PER_CHUNK = 512


# Left out of torch.compile (MODEL.SCORE.COMPILE_AT_INFERENCE): inductor's own grid_sample made
# the compiled pixel decoder about 5 times slower on CPU (docs/BENCHMARKS.md).
@torch.compiler.disable
def ms_deform_attn_core_pytorch(
    value: Tensor, spatial_shapes: Tensor, sampling_locations: Tensor, attention_weights: Tensor
) -> Tensor:
    """Reference core: weighted bilinear samples of ``value`` -> (B, Lq, M * Dh).

    Args:
        value: (B, S, M, Dh) the levels flattened row-major and concatenated, finest last or
            first as ``spatial_shapes`` says.
        spatial_shapes: (L, 2) int (H_l, W_l) of each level, in the order of ``value``.
        sampling_locations: (B, Lq, M, L, P, 2) (x, y) in [0, 1] of the level's extent;
            samples outside read zeros (``padding_mode="zeros"``, ``align_corners=False``).
        attention_weights: (B, Lq, M, L, P), summing to 1 over L x P.
    """
    batch, _, num_heads, head_dim = value.shape
    _, num_queries, _, num_levels, num_points, _ = sampling_locations.shape
    shapes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    value_list = value.split([h * w for h, w in shapes], dim=1)
    # (B, h*w, M, Dh) -> (B*M, Dh, h, w) per level
    values = [
        v.flatten(2).transpose(1, 2).reshape(batch * num_heads, head_dim, h, w)
        for v, (h, w) in zip(value_list, shapes)
    ]
    sampling_grids = 2 * sampling_locations - 1  # grid_sample wants [-1, 1]
    # (B, Lq, M, P, 2) -> (B*M, Lq, P, 2) per level
    grids = [sampling_grids[:, :, :, level].transpose(1, 2).flatten(0, 1) for level in range(num_levels)]
    # (B, Lq, M, L, P) -> (B*M, 1, Lq, L*P)
    weights = attention_weights.transpose(1, 2).reshape(
        batch * num_heads, 1, num_queries, num_levels * num_points
    )
    # Without autograd, a few queries at a time: the (B*M, Dh, Lq, L*P) samples and their
    # weighted copy then stay in the cache. Each query's samples and sum are computed on
    # their own, so the values are those of one pass (which autograd keeps, so that the
    # gradients are accumulated as before).
    differentiable = torch.is_grad_enabled() and (
        value.requires_grad or sampling_locations.requires_grad or attention_weights.requires_grad
    )
    step = num_queries if differentiable else _QUERIES_PER_CHUNK
    outputs = []
    for start in range(0, num_queries, step):
        # (B*M, Dh, n, P) per level
        sampled = [
            F.grid_sample(
                value_l,
                grid_l[:, start : start + step],
                mode="bilinear",
                padding_mode="zeros",
                align_corners=False,
            )
            for value_l, grid_l in zip(values, grids)
        ]
        chunk_weights = weights[:, :, start : start + step]
        outputs.append((torch.stack(sampled, dim=-2).flatten(-2) * chunk_weights).sum(-1))
    output = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=-1)
    return output.view(batch, num_heads * head_dim, num_queries).transpose(1, 2).contiguous()


class _MSDeformAttnFunction(Function):
    """Autograd wrapper of the fused kernel's forward and backward."""

    @staticmethod
    def forward(
        ctx, value, spatial_shapes, level_start_index, sampling_locations, attention_weights, im2col_step
    ):
        ctx.im2col_step = im2col_step
        output = _MSDA.ms_deform_attn_forward(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights, im2col_step
        )
        ctx.save_for_backward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
        return output

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights = ctx.saved_tensors
        grad_value, grad_sampling_loc, grad_attn_weight = _MSDA.ms_deform_attn_backward(
            value,
            spatial_shapes,
            level_start_index,
            sampling_locations,
            attention_weights,
            grad_output,
            ctx.im2col_step,
        )
        return grad_value, None, None, grad_sampling_loc, grad_attn_weight, None


def ms_deform_attn_fused(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
    im2col_step: int = 128,
) -> Tensor:
    """The fused CUDA kernel, same contract as ``ms_deform_attn_core_pytorch`` -> (B, Lq, M * Dh).

    ``level_start_index`` (L,) is the offset of each level in S. Raises
    RuntimeError where the op is not importable.
    """
    if not HAS_FUSED_MS_DEFORM_ATTN:
        raise RuntimeError("the fused MultiScaleDeformableAttention op is not importable")
    return _MSDeformAttnFunction.apply(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights, im2col_step
    )


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention module with Deformable DETR's projections and initialisation."""

    def __init__(
        self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4, impl: str = "auto"
    ):
        """
        Args:
            d_model: width of queries and values.
            n_levels: number of feature levels L.
            n_heads: attention heads M; d_model must be divisible by it.
            n_points: sampled points P per head and level.
            impl: "auto" (fused kernel for float CUDA inputs where importable, else PyTorch)
                or "pytorch" (always the reference path).
        """
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model must be divisible by n_heads, got {d_model} and {n_heads}")
        if impl not in _IMPLS:
            raise ValueError(f"impl must be one of {_IMPLS}, got {impl!r}")
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points
        self.impl = impl
        # Batch chunk of the fused kernel (Mask2Former's value).
        self.im2col_step = 128

        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable DETR's init: offsets start on a ring of directions, one per head, at
        distances 1..P; attention starts uniform; projections are Xavier."""
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(self.n_heads, 1, 1, 2)
        grid = grid.repeat(1, self.n_levels, self.n_points, 1)
        grid = grid * torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.view(-1))
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.constant_(self.value_proj.bias, 0.0)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.constant_(self.output_proj.bias, 0.0)

    def _use_fused(self, value: Tensor) -> bool:
        return (
            self.impl == "auto"
            and HAS_FUSED_MS_DEFORM_ATTN
            and value.is_cuda
            and value.dtype in (torch.float32, torch.float64)
        )

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        input_flatten: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
    ) -> Tensor:
        """Attend from ``query`` (B, Lq, d_model) to the flattened levels -> (B, Lq, d_model).

        Args:
            query: (B, Lq, d_model), position embedding already added.
            reference_points: (B or 1, Lq, L, 2) (x, y) in [0, 1] per level.
            input_flatten: (B, S, d_model) all levels flattened and concatenated.
            spatial_shapes: (L, 2) int64 (H_l, W_l).
            level_start_index: (L,) int64 start of each level in S.

        Mask2Former passes no padding mask (padded pixels are attended like
        any other), so this module has none.
        """
        batch, num_queries, _ = query.shape
        _, num_inputs, _ = input_flatten.shape
        if int((spatial_shapes[:, 0] * spatial_shapes[:, 1]).sum()) != num_inputs:
            raise ValueError(f"spatial_shapes {spatial_shapes.tolist()} do not add up to {num_inputs} inputs")

        value = self.value_proj(input_flatten).view(
            batch, num_inputs, self.n_heads, self.d_model // self.n_heads
        )
        offsets = self.sampling_offsets(query).view(
            batch, num_queries, self.n_heads, self.n_levels, self.n_points, 2
        )
        weights = self.attention_weights(query).view(batch, num_queries, self.n_heads, -1)
        weights = F.softmax(weights, -1).view(batch, num_queries, self.n_heads, self.n_levels, self.n_points)
        # Offsets are in pixels of each level; normalise by (W_l, H_l).
        normalizer = torch.stack([spatial_shapes[..., 1], spatial_shapes[..., 0]], -1).to(offsets.dtype)
        locations = (
            reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        )

        if self._use_fused(value):
            output = ms_deform_attn_fused(
                value, spatial_shapes, level_start_index, locations, weights, self.im2col_step
            )
        else:
            output = ms_deform_attn_core_pytorch(value, spatial_shapes, locations, weights)
        return self.output_proj(output)
