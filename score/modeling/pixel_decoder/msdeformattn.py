"""Mask2Former's multi-scale deformable-attention pixel decoder (Cheng et al. 2022, section 4.1).

The coarsest backbone levels (res3..res5 by default) are projected to a common
width and refined jointly by a Deformable DETR encoder (Zhu et al. 2021): every
pixel of every level attends, through multi-scale deformable attention, to a few
sampled points on all levels. The finer levels (res2) are then added FPN-style
(lateral 1x1 conv, upsampled coarser map added, 3x3 output conv), and a 1x1
conv of the finest map gives the per-pixel embeddings the masks are read from.

Shorthand: B batch, C = conv_dim, L encoder levels, S sum of H_l * W_l over
them, H x W padded input size.
"""

from __future__ import annotations

import math
from typing import Dict, List, Tuple

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from torch import Tensor, nn

from ..inference_compile import InferenceCompiled
from . import PIXEL_DECODER_REGISTRY
from .ms_deform_attn import MSDeformAttn
from .position_encoding import PositionEmbeddingSine

__all__ = ["MSDeformAttnPixelDecoder", "MSDeformAttnTransformerEncoderOnly"]


class MSDeformAttnEncoderLayer(nn.Module):
    """Deformable DETR encoder layer: deformable self-attention, then FFN; post-norm, ReLU."""

    def __init__(
        self,
        d_model: int,
        dim_feedforward: int,
        dropout: float,
        n_levels: int,
        n_heads: int,
        n_points: int,
        attention_impl: str,
    ):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points, impl=attention_impl)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(
        self,
        src: Tensor,
        pos: Tensor,
        reference_points: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
    ) -> Tensor:
        """(B, S, C) tokens with their (B, S, C) position embeddings -> (B, S, C)."""
        attended = self.self_attn(src + pos, reference_points, src, spatial_shapes, level_start_index)
        src = self.norm1(src + self.dropout1(attended))
        ffn = self.linear2(self.dropout2(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout3(ffn))


class MSDeformAttnEncoder(nn.Module):
    """A stack of encoder layers sharing one set of reference points (the pixel centres)."""

    def __init__(self, layers: List[MSDeformAttnEncoderLayer]):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    @staticmethod
    def reference_points(spatial_shapes: List[Tuple[int, int]], num_levels: int, device) -> Tensor:
        """(1, S, L, 2) normalised (x, y) centre of every pixel, the same on every level.

        Deformable DETR scales them by each image's valid ratio; Mask2Former
        passes no padding mask, so every ratio is 1 and that step drops out.
        """
        points = []
        for h, w in spatial_shapes:
            ref_y, ref_x = torch.meshgrid(
                torch.linspace(0.5, h - 0.5, h, dtype=torch.float32, device=device),
                torch.linspace(0.5, w - 0.5, w, dtype=torch.float32, device=device),
                indexing="ij",
            )
            points.append(torch.stack((ref_x.reshape(-1) / w, ref_y.reshape(-1) / h), -1))
        return torch.cat(points, 0)[None, :, None].expand(1, -1, num_levels, 2)

    def forward(self, src: Tensor, pos: Tensor, spatial_shapes: Tensor, level_start_index: Tensor) -> Tensor:
        """(B, S, C) flattened levels and position embeddings -> (B, S, C)."""
        shapes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
        reference_points = self.reference_points(shapes, len(shapes), src.device)
        for layer in self.layers:
            src = layer(src, pos, reference_points, spatial_shapes, level_start_index)
        return src


class MSDeformAttnTransformerEncoderOnly(nn.Module):
    """Flattens the levels, adds position + level embeddings, and runs the deformable encoder."""

    def __init__(
        self,
        d_model: int,
        nhead: int,
        num_encoder_layers: int,
        dim_feedforward: int,
        dropout: float,
        num_feature_levels: int,
        enc_n_points: int,
        attention_impl: str,
    ):
        super().__init__()
        self.encoder = MSDeformAttnEncoder(
            [
                MSDeformAttnEncoderLayer(
                    d_model, dim_feedforward, dropout, num_feature_levels, nhead, enc_n_points, attention_impl
                )
                for _ in range(num_encoder_layers)
            ]
        )
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m.reset_parameters()
        nn.init.normal_(self.level_embed)

    def forward(self, srcs: List[Tensor], pos_embeds: List[Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
        """Levels (B, C, H_l, W_l) and their position embeddings -> (memory (B, S, C),
        spatial_shapes (L, 2) int64, level_start_index (L,) int64)."""
        src_flatten, pos_flatten, spatial_shapes = [], [], []
        for level, (src, pos) in enumerate(zip(srcs, pos_embeds)):
            spatial_shapes.append(src.shape[-2:])
            src_flatten.append(src.flatten(2).transpose(1, 2))
            pos_flatten.append(pos.flatten(2).transpose(1, 2) + self.level_embed[level].view(1, 1, -1))
        src_flatten = torch.cat(src_flatten, 1)
        pos_flatten = torch.cat(pos_flatten, 1)
        spatial_shapes = torch.as_tensor(spatial_shapes, dtype=torch.long, device=src_flatten.device)
        level_start_index = torch.cat((spatial_shapes.new_zeros((1,)), spatial_shapes.prod(1).cumsum(0)[:-1]))
        memory = self.encoder(src_flatten, pos_flatten, spatial_shapes, level_start_index)
        return memory, spatial_shapes, level_start_index


@PIXEL_DECODER_REGISTRY.register()
class MSDeformAttnPixelDecoder(nn.Module):
    """Deformable-attention encoder over the coarse levels plus an FPN step for the finer ones."""

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        transformer_in_features: List[str],
        conv_dim: int,
        mask_dim: int,
        norm: str,
        transformer_dropout: float,
        transformer_nheads: int,
        transformer_n_points: int,
        transformer_dim_feedforward: int,
        transformer_enc_layers: int,
        common_stride: int,
        deformable_attention_impl: str = "auto",
        compile_at_inference: bool = False,
    ):
        """
        Args:
            input_shape: backbone levels the decoder reads (e.g. res2..res5), with channels and stride.
            transformer_in_features: the levels refined by the deformable encoder (e.g. res3..res5).
            conv_dim: width C of the encoder and the FPN convs.
            mask_dim: channels of ``mask_features``.
            norm: detectron2 norm name of the FPN convs ("GN": GroupNorm(32)).
            transformer_dropout: dropout of the encoder layers.
            transformer_nheads: deformable attention heads.
            transformer_n_points: sampling points per head and level.
            transformer_dim_feedforward: FFN width of the encoder layers.
            transformer_enc_layers: number of encoder layers.
            common_stride: stride of ``mask_features``; FPN levels are added down to it.
            deformable_attention_impl: "auto" or "pytorch", see ``MSDeformAttn``.
            compile_at_inference: without autograd, run ``forward_features`` through
                ``torch.compile`` (``InferenceCompiled``; the deformable sampling stays
                eager; close to, not equal to, eager).
        """
        super().__init__()
        shapes = sorted(input_shape.items(), key=lambda kv: kv[1].stride)
        self.in_features = [k for k, _ in shapes]  # fine to coarse, e.g. res2..res5
        feature_channels = [v.channels for _, v in shapes]

        transformer_shapes = [(k, v) for k, v in shapes if k in transformer_in_features]
        self.transformer_in_features = [k for k, _ in transformer_shapes]  # fine to coarse
        transformer_strides = [v.stride for _, v in transformer_shapes]
        self.transformer_num_feature_levels = len(self.transformer_in_features)

        # Coarse to fine (res5 first): input_proj.0 reads the coarsest level.
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(v.channels, conv_dim, kernel_size=1), nn.GroupNorm(32, conv_dim))
            for _, v in transformer_shapes[::-1]
        )
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.constant_(proj[0].bias, 0)

        self.transformer = MSDeformAttnTransformerEncoderOnly(
            d_model=conv_dim,
            nhead=transformer_nheads,
            num_encoder_layers=transformer_enc_layers,
            dim_feedforward=transformer_dim_feedforward,
            dropout=transformer_dropout,
            num_feature_levels=self.transformer_num_feature_levels,
            enc_n_points=transformer_n_points,
            attention_impl=deformable_attention_impl,
        )
        self.pe_layer = PositionEmbeddingSine(conv_dim // 2, normalize=True)

        self.mask_dim = mask_dim
        # 1x1, as in Mask2Former's code and the authors' checkpoint.
        self.mask_features = Conv2d(conv_dim, mask_dim, kernel_size=1, stride=1, padding=0)
        weight_init.c2_xavier_fill(self.mask_features)

        # The transformer decoder reads three scales.
        self.maskformer_num_feature_levels = 3
        self.common_stride = common_stride

        # FPN levels between the finest encoder level and common_stride (res2 for 8 -> 4).
        self.num_fpn_levels = int(math.log2(min(transformer_strides)) - math.log2(common_stride))
        use_bias = norm == ""
        lateral_convs, output_convs = [], []
        for idx, in_channels in enumerate(feature_channels[: self.num_fpn_levels]):
            lateral_conv = Conv2d(
                in_channels, conv_dim, kernel_size=1, bias=use_bias, norm=get_norm(norm, conv_dim)
            )
            output_conv = Conv2d(
                conv_dim,
                conv_dim,
                kernel_size=3,
                stride=1,
                padding=1,
                bias=use_bias,
                norm=get_norm(norm, conv_dim),
                activation=F.relu,
            )
            weight_init.c2_xavier_fill(lateral_conv)
            weight_init.c2_xavier_fill(output_conv)
            # Attribute names match Mask2Former's checkpoints (adapter_1, layer_1, ...).
            self.add_module(f"adapter_{idx + 1}", lateral_conv)
            self.add_module(f"layer_{idx + 1}", output_conv)
            lateral_convs.append(lateral_conv)
            output_convs.append(output_conv)
        # Plain lists (already registered above), coarse to fine for the top-down pass.
        self.lateral_convs = lateral_convs[::-1]
        self.output_convs = output_convs[::-1]
        self._compiled_forward_features = (
            InferenceCompiled(self._forward_features, self, "the pixel decoder")
            if compile_at_inference
            else None
        )

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]) -> dict:
        head = cfg.MODEL.SEM_SEG_HEAD
        return {
            "input_shape": {k: v for k, v in input_shape.items() if k in head.IN_FEATURES},
            "transformer_in_features": list(head.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES),
            "conv_dim": head.CONVS_DIM,
            "mask_dim": head.MASK_DIM,
            "norm": head.NORM,
            "transformer_dropout": cfg.MODEL.MASK_FORMER.DROPOUT,
            "transformer_nheads": head.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS,
            "transformer_n_points": head.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS,
            "transformer_dim_feedforward": head.DEFORMABLE_TRANSFORMER_ENCODER_DIM_FEEDFORWARD,
            "transformer_enc_layers": head.TRANSFORMER_ENC_LAYERS,
            "common_stride": head.COMMON_STRIDE,
            "deformable_attention_impl": head.DEFORMABLE_ATTENTION_IMPL,
            "compile_at_inference": "pixel_decoder" in cfg.MODEL.SCORE.COMPILE_AT_INFERENCE,
        }

    def forward_features(self, features: Dict[str, Tensor]) -> Tuple[Tensor, Tensor, List[Tensor]]:
        """Backbone levels -> (mask_features (B, mask_dim, H/4, W/4), encoder output at the
        coarsest level (B, C, H/32, W/32), multi-scale features [(B, C, H/32, W/32),
        (B, C, H/16, W/16), (B, C, H/8, W/8)]), for res2..res5 inputs.

        Runs in float32 with autocast off, as Mask2Former does: the deformable
        attention kernels have no half-precision path.
        """
        if self._compiled_forward_features is not None and not torch.is_grad_enabled():
            return self._compiled_forward_features(features)
        return self._forward_features(features)

    def _forward_features(self, features: Dict[str, Tensor]) -> Tuple[Tensor, Tensor, List[Tensor]]:
        device_type = next(iter(features.values())).device.type
        with torch.autocast(device_type=device_type, enabled=False):
            srcs, pos = [], []
            for idx, name in enumerate(self.transformer_in_features[::-1]):
                x = features[name].float()
                srcs.append(self.input_proj[idx](x))
                pos.append(self.pe_layer(x))

            memory, spatial_shapes, level_start_index = self.transformer(srcs, pos)
            batch = memory.shape[0]
            level_sizes = spatial_shapes.prod(1).tolist()
            out = [
                z.transpose(1, 2).view(batch, -1, int(h), int(w))
                for z, (h, w) in zip(memory.split(level_sizes, dim=1), spatial_shapes.tolist())
            ]

            # Top-down FPN over the levels the encoder skipped.
            for idx, name in enumerate(self.in_features[: self.num_fpn_levels][::-1]):
                lateral = self.lateral_convs[idx](features[name].float())
                y = lateral + F.interpolate(
                    out[-1], size=lateral.shape[-2:], mode="bilinear", align_corners=False
                )
                out.append(self.output_convs[idx](y))

            multi_scale_features = out[: self.maskformer_num_feature_levels]
            return self.mask_features(out[-1]), out[0], multi_scale_features
