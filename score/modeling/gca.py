"""Global Context Adaptation (GCA): adapt the text classifier to each image's global context.

SCORE.md section 6 (paper Sec. 3.3, Table 5). The L2-normalised [CLS]
embedding g of the remote-sensing CLIP shifts the rows of the text classifier
T, giving one classifier per image. The "concat" ablation is our own
construction (docs/DESIGN.md, "GCA"). The void row is appended by the
meta-architecture after GCA.

Shorthand: B batch, N text-classifier rows (one per synonym), D joint embedding width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from torch import Tensor, nn

__all__ = ["GlobalContextAdaptation", "build_gca"]

_MODES = ("mha", "add", "concat", "none")


class GlobalContextAdaptation(nn.Module):
    """T (N, D) and g (B, D) -> per-image classifier T-hat (B, N, D), not re-normalised."""

    @configurable
    def __init__(self, *, embed_dim: int, mode: str = "mha", nheads: int = 8):
        """
        Args:
            embed_dim: width D of the text classifier and of the global context embedding.
            mode: "mha" (T + MHA(query=T, key=g, value=g), the authors'), "add"
                (T + g), "concat" (Linear(2D, D) on [T, g], initialised to
                return T) or "none" (T for every image; no parameters).
            nheads: attention heads of the "mha" mode.
        """
        super().__init__()
        if mode not in _MODES:
            raise ValueError(f"MODEL.SCORE.GCA.MODE must be one of {_MODES}, got {mode!r}")
        self.embed_dim = embed_dim
        self.mode = mode
        if mode == "mha":
            self.attn = nn.MultiheadAttention(embed_dim, nheads, bias=True, batch_first=True)
        elif mode == "concat":
            self.concat_proj = nn.Linear(2 * embed_dim, embed_dim)
            # Start as the "none" variant (weights [I, 0], bias 0): the text rows
            # keep their alignment with the CLIP image space at the start, and
            # training decides how much context to mix in (docs/DESIGN.md).
            with torch.no_grad():
                self.concat_proj.weight.zero_()
                self.concat_proj.weight[:, :embed_dim].copy_(torch.eye(embed_dim))
                self.concat_proj.bias.zero_()

    @classmethod
    def from_config(cls, cfg, embed_dim: int) -> dict:
        return {
            "embed_dim": embed_dim,
            "mode": cfg.MODEL.SCORE.GCA.MODE,
            "nheads": cfg.MODEL.SCORE.GCA.NHEADS,
        }

    def forward(self, text_classifier: Tensor, global_embed: Tensor) -> Tensor:
        """Text classifier T (N, D), rows L2-normalised, and [CLS] embeddings (B, D) -> T-hat (B, N, D)."""
        if text_classifier.dim() != 2 or text_classifier.shape[-1] != global_embed.shape[-1]:
            raise ValueError(
                f"GCA expects a (N, D) text classifier and (B, D) global embeddings, "
                f"got {tuple(text_classifier.shape)} and {tuple(global_embed.shape)}"
            )
        num_images = global_embed.shape[0]
        # Normalised in the context tower's dtype (float16 by default), then cast to the
        # classifier's, as the authors compute it (docs/DESIGN.md, "Numeric differences").
        g = F.normalize(global_embed, dim=-1).to(text_classifier.dtype)
        rows = text_classifier[None]
        if self.mode == "none":
            return rows.expand(num_images, -1, -1)
        if self.mode == "add":
            return rows + g[:, None, :]
        if self.mode == "mha":
            query = rows.expand(num_images, -1, -1)
            # One key/value row (B, 1, D). The authors repeat g once per text row,
            # (B, N, D): the same output but for the last bits, at several times the
            # cost (docs/DESIGN.md, "Numeric differences").
            key_value = g[:, None, :]
            shift, _ = self.attn(query, key_value, key_value, need_weights=False)
            return rows + shift
        # "concat": W [T, g] + b = W_T T + (W_g g + b), so the (N, D) part is
        # computed once for the batch instead of on B copies of [T, g].
        d = self.embed_dim
        weight = self.concat_proj.weight
        return (
            F.linear(text_classifier, weight[:, :d])[None]
            + F.linear(g, weight[:, d:], self.concat_proj.bias)[:, None, :]
        )


def build_gca(cfg, embed_dim: int) -> GlobalContextAdaptation:
    """GCA from ``cfg.MODEL.SCORE.GCA``; mode "none" gives a parameter-free module that broadcasts T."""
    return GlobalContextAdaptation(cfg, embed_dim)
