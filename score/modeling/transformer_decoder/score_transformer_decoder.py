"""SCORE's transformer decoder: Mask2Former's masked-attention decoder with FC-CLIP's class head.

Mask2Former (Cheng et al. 2022, section 3.2): learnable queries pass through
layers of masked cross-attention, self-attention and FFN; each layer attends to
one level of the pixel decoder's multi-scale features (round-robin, coarse to
fine), and only inside the foreground of the previous layer's mask prediction.
A prediction head runs on the initial queries and after every layer, giving
deep supervision.

The class head is FC-CLIP's (Yu et al. 2023): the mask-pooled pixel embeddings
of a query, projected, are added to its decoder output and mapped by an MLP to
the CLIP joint space (class embedding V), which is scored against a text
classifier. SCORE (SCORE.md 4.3) inserts Region-Aware Integration between the
two, turning V into V-hat with regional scene context.

Shorthand: B batch, Q queries, C hidden width, D joint embedding width,
M attention heads, K classes, N text-classifier rows (synonyms), h_l x w_l the
size of feature level l, H x W the padded input size (mask_features at H/4 x W/4).
Sequences inside the decoder are (length, B, C), PyTorch's MultiheadAttention
default layout.

Attention is computed as the authors' Mask2Former computes it: MultiheadAttention
with its default ``need_weights=True``, i.e. explicit scaled scores, softmax and
weighted sum. ``fused_attention`` (MODEL.SCORE.DECODER_FUSED_ATTENTION) asks for
``need_weights=False`` instead, PyTorch's fused scaled_dot_product_attention:
faster, but its rounding differs (about 6e-7 at first), and the sigmoid < 0.5
attention mask of the next layer can then flip pixels, which grows the
difference to about 4e-3 in late masks (docs/DESIGN.md, "Numeric differences").
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d
from torch import Tensor, nn

from score.modeling.open_vocab import classification_logits, mask_pool
from score.modeling.pixel_decoder.position_encoding import PositionEmbeddingSine

from . import TRANSFORMER_DECODER_REGISTRY

__all__ = ["SCOREMultiScaleMaskedTransformerDecoder", "attention_mask_from_logits"]


def attention_mask_from_logits(
    mask_logits: Tensor, size: Tuple[int, int], num_heads: int, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Masked-attention mask of Mask2Former eq. 2: (B, Q, H', W') logits -> (B * M, Q, h * w) additive.

    -inf (blocked) where the mask, resized bilinearly to ``size`` (h, w), has
    probability below 0.5, 0 elsewhere. A query whose mask is empty everywhere
    would have nothing to attend to (softmax over nothing), so its row is
    unblocked entirely. The mask carries no gradient. ``dtype`` is the one of
    the attention's query.

    These are the values MultiheadAttention makes of the authors' boolean mask
    (zeros, -inf where True, in the query's dtype), so the attention is
    unchanged; made here once per image and shared by the M heads (a view for
    one image) instead of repeated per head as booleans and converted per head.
    """
    resized = F.interpolate(mask_logits.detach(), size=size, mode="bilinear", align_corners=False)
    blocked = resized.sigmoid().flatten(2) < 0.5  # (B, Q, h * w)
    blocked[blocked.all(-1)] = False
    additive = torch.zeros_like(blocked, dtype=dtype).masked_fill_(blocked, float("-inf"))
    return additive.unsqueeze(1).expand(-1, num_heads, -1, -1).flatten(0, 1)


class SelfAttentionLayer(nn.Module):
    """Query self-attention with residual and LayerNorm (post-norm, or pre-norm)."""

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dropout: float = 0.0,
        normalize_before: bool = False,
        fused_attention: bool = False,
    ):
        super().__init__()
        self.fused_attention = fused_attention
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.normalize_before = normalize_before
        _xavier_init(self)

    def forward(self, tgt: Tensor, query_pos: Tensor) -> Tensor:
        """(Q, B, C) queries and their position embeddings -> (Q, B, C)."""
        x = self.norm(tgt) if self.normalize_before else tgt
        q = k = x + query_pos
        attended = self.self_attn(q, k, value=x, need_weights=not self.fused_attention)[0]
        tgt = tgt + self.dropout(attended)
        return tgt if self.normalize_before else self.norm(tgt)


class CrossAttentionLayer(nn.Module):
    """Masked cross-attention from the queries to one feature level, residual and LayerNorm."""

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dropout: float = 0.0,
        normalize_before: bool = False,
        fused_attention: bool = False,
    ):
        super().__init__()
        self.fused_attention = fused_attention
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.normalize_before = normalize_before
        _xavier_init(self)

    def forward(
        self, tgt: Tensor, memory: Tensor, memory_mask: Optional[Tensor], pos: Tensor, query_pos: Tensor
    ) -> Tensor:
        """(Q, B, C) queries attend to (h*w, B, C) memory; ``memory_mask`` (B * M, Q, h*w),
        bool (True = blocked) or additive float (-inf = blocked). Returns (Q, B, C)."""
        x = self.norm(tgt) if self.normalize_before else tgt
        # The fused path (need_weights=False) took 403 instead of 617 ms for 300 queries x
        # 64 x 64 memory, batch 2, on a CPU.
        attended = self.multihead_attn(
            query=x + query_pos,
            key=memory + pos,
            value=memory,
            attn_mask=memory_mask,
            need_weights=not self.fused_attention,
        )[0]
        tgt = tgt + self.dropout(attended)
        return tgt if self.normalize_before else self.norm(tgt)


class FFNLayer(nn.Module):
    """Two-layer ReLU feed-forward block with residual and LayerNorm."""

    def __init__(
        self, d_model: int, dim_feedforward: int, dropout: float = 0.0, normalize_before: bool = False
    ):
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.normalize_before = normalize_before
        _xavier_init(self)

    def forward(self, tgt: Tensor) -> Tensor:
        """(Q, B, C) -> (Q, B, C)."""
        x = self.norm(tgt) if self.normalize_before else tgt
        tgt = tgt + self.dropout(self.linear2(self.dropout(F.relu(self.linear1(x)))))
        return tgt if self.normalize_before else self.norm(tgt)


def _xavier_init(module: nn.Module) -> None:
    for p in module.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them (DETR's box / mask MLP)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        hidden = [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(
            nn.Linear(n, k) for n, k in zip([input_dim] + hidden, hidden + [output_dim])
        )

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


@TRANSFORMER_DECODER_REGISTRY.register()
class SCOREMultiScaleMaskedTransformerDecoder(nn.Module):
    """Masked-attention decoder with the open-vocabulary class head of SCORE.md 4.3."""

    # The pixel decoder gives three scales (strides 32, 16, 8).
    num_feature_levels = 3

    @configurable
    def __init__(
        self,
        in_channels: int,
        *,
        hidden_dim: int,
        num_queries: int,
        nheads: int,
        dim_feedforward: int,
        dec_layers: int,
        pre_norm: bool,
        mask_dim: int,
        enforce_input_project: bool,
        embed_dim: int,
        logit_scale_init: float = math.log(1 / 0.07),
        rai: Optional[nn.Module] = None,
        fused_attention: bool = False,
        dropout: float = 0.0,
    ):
        """
        Args:
            in_channels: channels of the multi-scale features.
            hidden_dim: query width C.
            num_queries: number of queries Q.
            nheads: attention heads M.
            dim_feedforward: FFN width of the decoder layers.
            dec_layers: number of decoder layers (the config's DEC_LAYERS - 1: one
                prediction is made on the initial queries).
            pre_norm: pre-norm layers instead of post-norm.
            mask_dim: channels of ``mask_features`` (the mask MLP's output width).
            enforce_input_project: add 1x1 input projections even when in_channels == hidden_dim.
            embed_dim: width D of the class embeddings (the CLIP joint space).
            logit_scale_init: initial value of the learnable log logit scale.
            rai: Region-Aware Integration, called as ``rai(V (B, Q, D), mask logits
                (B, Q, H/4, W/4), context) -> (B, Q, D)``; None skips it.
            fused_attention: PyTorch's fused attention (``need_weights=False``) in the
                cross- and self-attention instead of the authors' explicit softmax.
            dropout: dropout of the attention and FFN layers.
        """
        super().__init__()
        if mask_dim != hidden_dim:
            # The pooled mask features join the decoder output (FC-CLIP), so the widths must agree.
            raise ValueError(f"mask_dim ({mask_dim}) must equal hidden_dim ({hidden_dim})")
        self.pe_layer = PositionEmbeddingSine(hidden_dim // 2, normalize=True)
        self.num_heads = nheads
        self.num_layers = dec_layers
        self.transformer_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(hidden_dim, nheads, dropout, pre_norm, fused_attention)
            for _ in range(dec_layers)
        )
        self.transformer_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(hidden_dim, nheads, dropout, pre_norm, fused_attention)
            for _ in range(dec_layers)
        )
        self.transformer_ffn_layers = nn.ModuleList(
            FFNLayer(hidden_dim, dim_feedforward, dropout, pre_norm) for _ in range(dec_layers)
        )
        self.decoder_norm = nn.LayerNorm(hidden_dim)

        self.num_queries = num_queries
        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.level_embed = nn.Embedding(self.num_feature_levels, hidden_dim)
        self.input_proj = nn.ModuleList()
        for _ in range(self.num_feature_levels):
            if in_channels != hidden_dim or enforce_input_project:
                proj = Conv2d(in_channels, hidden_dim, kernel_size=1)
                weight_init.c2_xavier_fill(proj)
                self.input_proj.append(proj)
            else:
                self.input_proj.append(nn.Identity())

        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)
        # FC-CLIP's class head: mask-pooled pixel embeddings, projected, join the decoder output.
        self._mask_pooling_proj = nn.Sequential(nn.LayerNorm(hidden_dim), nn.Linear(hidden_dim, hidden_dim))
        self.class_embed = MLP(hidden_dim, hidden_dim, embed_dim, 3)
        self.rai = rai
        self.logit_scale = nn.Parameter(torch.tensor(float(logit_scale_init)))

    @classmethod
    def from_config(cls, cfg, in_channels: int) -> dict:
        # Imported here so that this module does not depend on RAI's at import time.
        from score.modeling.rai import build_rai

        mf = cfg.MODEL.MASK_FORMER
        if mf.DEC_LAYERS < 1:
            raise ValueError(f"MODEL.MASK_FORMER.DEC_LAYERS must be >= 1, got {mf.DEC_LAYERS}")
        embed_dim = cfg.MODEL.SCORE.EMBED_DIM
        return {
            "in_channels": in_channels,
            "hidden_dim": mf.HIDDEN_DIM,
            "num_queries": mf.NUM_OBJECT_QUERIES,
            "nheads": mf.NHEADS,
            "dim_feedforward": mf.DIM_FEEDFORWARD,
            "dec_layers": mf.DEC_LAYERS - 1,
            "pre_norm": mf.PRE_NORM,
            "mask_dim": cfg.MODEL.SEM_SEG_HEAD.MASK_DIM,
            "enforce_input_project": mf.ENFORCE_INPUT_PROJ,
            "embed_dim": embed_dim,
            "logit_scale_init": cfg.MODEL.SCORE.LOGIT_SCALE_INIT,
            "rai": build_rai(cfg, embed_dim),
            "fused_attention": cfg.MODEL.SCORE.DECODER_FUSED_ATTENTION,
            # Mask2Former, FC-CLIP and the authors build the decoder without dropout;
            # MASK_FORMER.DROPOUT is the pixel decoder's.
            "dropout": 0.0,
        }

    def forward(
        self,
        x: List[Tensor],
        mask_features: Tensor,
        text_classifier: Tensor,
        num_synonyms: Sequence[int],
        context=None,
    ) -> Dict[str, object]:
        """Decode the queries against the multi-scale features.

        Args:
            x: 3 feature maps (B, C_in, h_l, w_l), coarse to fine.
            mask_features: (B, mask_dim, H/4, W/4) per-pixel embeddings.
            text_classifier: (N + 1, D) or per image (B, N + 1, D), synonym rows then void.
            num_synonyms: rows per class, K entries summing to N.
            context: passed unchanged to RAI.

        Returns:
            ``pred_logits`` (B, Q, K + 1), ``pred_masks`` (B, Q, H/4, W/4) of the last layer, and
            ``aux_outputs``: the dec_layers earlier predictions (initial queries first). In
            training each is a dict with the same two keys (deep supervision); at inference
            (``self.training`` False) it holds ``pred_masks`` only: the intermediate class
            logits feed nothing but the losses (RAI's V-hat does not flow back into the
            queries, SCORE.md 4.3), so their class branch (mask pooling, class MLP, RAI,
            classification) is skipped. The final prediction is computed the same either way.
        """
        if len(x) != self.num_feature_levels:
            raise ValueError(f"expected {self.num_feature_levels} feature levels, got {len(x)}")
        src, pos, size_list = [], [], []
        for i in range(self.num_feature_levels):
            size_list.append(x[i].shape[-2:])
            # (B, C, h, w) -> (h*w, B, C)
            pos.append(self.pe_layer(x[i]).flatten(2).permute(2, 0, 1))
            level = self.input_proj[i](x[i]).flatten(2) + self.level_embed.weight[i][None, :, None]
            src.append(level.permute(2, 0, 1))

        batch = src[0].shape[1]
        query_embed = self.query_embed.weight.unsqueeze(1).repeat(1, batch, 1)
        output = self.query_feat.weight.unsqueeze(1).repeat(1, batch, 1)

        head = dict(text_classifier=text_classifier, num_synonyms=num_synonyms, context=context)
        # Only the losses read the intermediate class logits (see Returns).
        classify_aux = self.training
        outputs_class, outputs_mask, attn_mask = self.forward_prediction_heads(
            output, mask_features, size_list[0], **head, classify=classify_aux or self.num_layers == 0
        )
        predictions_class, predictions_mask = [outputs_class], [outputs_mask]
        for i in range(self.num_layers):
            level = i % self.num_feature_levels
            output = self.transformer_cross_attention_layers[i](
                output, src[level], memory_mask=attn_mask, pos=pos[level], query_pos=query_embed
            )
            output = self.transformer_self_attention_layers[i](output, query_pos=query_embed)
            output = self.transformer_ffn_layers[i](output)
            outputs_class, outputs_mask, attn_mask = self.forward_prediction_heads(
                output,
                mask_features,
                size_list[(i + 1) % self.num_feature_levels],
                **head,
                classify=classify_aux or i == self.num_layers - 1,
            )
            predictions_class.append(outputs_class)
            predictions_mask.append(outputs_mask)

        aux_outputs = [{"pred_masks": m} for m in predictions_mask[:-1]]
        if classify_aux:
            for aux, logits in zip(aux_outputs, predictions_class[:-1]):
                aux["pred_logits"] = logits
        return {
            "pred_logits": predictions_class[-1],
            "pred_masks": predictions_mask[-1],
            "aux_outputs": aux_outputs,
        }

    def forward_prediction_heads(
        self,
        output: Tensor,
        mask_features: Tensor,
        attn_mask_target_size: Tuple[int, int],
        text_classifier: Tensor,
        num_synonyms: Sequence[int],
        context=None,
        classify: bool = True,
    ) -> Tuple[Optional[Tensor], Tensor, Tensor]:
        """Prediction head on (Q, B, C) queries -> (class logits (B, Q, K + 1), mask logits
        (B, Q, H/4, W/4), attention mask (B * M, Q, h*w) for the next layer at
        ``attn_mask_target_size``). With ``classify`` False the class branch is not run and
        the class logits are None; the masks and attention mask do not depend on it."""
        decoder_output = self.decoder_norm(output).transpose(0, 1)  # (B, Q, C)
        mask_embed = self.mask_embed(decoder_output)
        outputs_mask = torch.einsum("bqc,bchw->bqhw", mask_embed, mask_features)
        attn_mask = attention_mask_from_logits(
            outputs_mask, attn_mask_target_size, self.num_heads, dtype=output.dtype
        )
        if not classify:
            return None, outputs_mask, attn_mask

        pooled = self._mask_pooling_proj(mask_pool(mask_features, outputs_mask))
        class_embed = self.class_embed(pooled + decoder_output)  # V (B, Q, D)
        if self.rai is not None:
            class_embed = self.rai(class_embed, outputs_mask, context)
        outputs_class = classification_logits(class_embed, text_classifier, self.logit_scale, num_synonyms)
        return outputs_class, outputs_mask, attn_mask
