"""Sine position encoding of a feature map (DETR, Carion et al. 2020, section A.4).

Mask2Former uses it, normalised, for the deformable pixel-decoder encoder and
the masked-attention decoder. Each axis gets ``num_pos_feats`` channels of
interleaved sin / cos of the pixel's (1-based) row or column index, scaled so
that the last index maps to ``scale``; rows come first, then columns.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["PositionEmbeddingSine"]


class PositionEmbeddingSine(nn.Module):
    """Fixed 2-D sine position encoding: (B, C, H, W) features -> (B, 2 * num_pos_feats, H, W)."""

    def __init__(
        self,
        num_pos_feats: int = 64,
        temperature: float = 10000.0,
        normalize: bool = False,
        scale: float = 2 * math.pi,
    ):
        """
        Args:
            num_pos_feats: channels per axis (even); the output has twice as many.
            temperature: base of the geometric progression of wavelengths.
            normalize: divide positions by the extent of the map, then multiply by ``scale``.
            scale: range of the normalised positions.
        """
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        """Encoding (B, 2 * num_pos_feats, H, W), float32, for the spatial size of ``x`` (B, C, H, W)."""
        batch, _, height, width = x.shape
        ones = torch.ones((batch, height, width), device=x.device, dtype=torch.float32)
        y_embed = ones.cumsum(1)
        x_embed = ones.cumsum(2)
        if self.normalize:
            eps = 1e-6
            y_embed = y_embed / (y_embed[:, -1:, :] + eps) * self.scale
            x_embed = x_embed / (x_embed[:, :, -1:] + eps) * self.scale

        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=x.device)
        dim_t = self.temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_pos_feats)

        pos_x = x_embed[:, :, :, None] / dim_t
        pos_y = y_embed[:, :, :, None] / dim_t
        pos_x = torch.stack((pos_x[:, :, :, 0::2].sin(), pos_x[:, :, :, 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[:, :, :, 0::2].sin(), pos_y[:, :, :, 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)
