"""Context encoders: the frozen remote-sensing CLIP image tower of SCORE's context branch (SCORE.md 2, 10).

Shorthand: B batch, D joint embedding width, h x w context grid
(CONTEXT_INPUT_SIZE / patch size, 16 x 16 for 224 / 14).

A context encoder registered in ``CONTEXT_ENCODER_REGISTRY`` is an
``nn.Module`` built as ``Encoder(cfg)`` (detectron2 ``@configurable``) with:

- ``forward(images)``: ``images`` (B, 3, H, W) is the normalised, padded
  batch of the instance branch; returns :class:`ContextFeatures`.
- ``encode_text(prompts: list[str]) -> (N, D)``: its own text tower, not
  normalised, for the out-of-vocabulary ablation of paper Table 6.
- ``clip_model``: the frozen open_clip model (state-dict prefix of the
  meta-architecture's ``clip_rs.clip_model.``).

Its outputs are already in the joint space D, so, unlike the ConvNeXt
backbone, it has no ``pooled_to_embedding``: pooled dense context is scored
against text directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict

from detectron2.utils.registry import Registry
from torch import Tensor, nn

__all__ = ["CONTEXT_ENCODER_REGISTRY", "ContextFeatures", "build_context_encoder"]

CONTEXT_ENCODER_REGISTRY = Registry("CONTEXT_ENCODER")
CONTEXT_ENCODER_REGISTRY.__doc__ = """
Registry for context encoders (SCORE.md 10). A registered class is built as
``cls(cfg)`` and provides ``forward(images (B, 3, H, W) normalised, padded) ->
ContextFeatures``, ``encode_text(prompts) -> (N, D)`` and ``clip_model``.
"""


@dataclass
class ContextFeatures:
    """What the context branch hands to RAI and GCA.

    Attributes:
        global_embed: (B, D) the projected [CLS] token, NOT normalised (GCA
            normalises it).
        dense: (B, D, h, w) the projected patch tokens of the last block.
        patch_layers: block index (0-based) -> (B, D, h, w) patch tokens of
            that block's output, passed through the tower's final LayerNorm
            (ln_post) and projection so that they live in the same joint space
            as ``dense`` (paper Table 4 "patch embeddings"); only the blocks
            asked for are kept. Our choice: the paper does not say how the
            intermediate tokens are brought to width D; the tower's own output
            head is the one map from its width to D that exists.
    """

    global_embed: Tensor
    dense: Tensor
    patch_layers: Dict[int, Tensor] = field(default_factory=dict)


def build_context_encoder(cfg) -> nn.Module:
    """The context encoder named by ``MODEL.SCORE.CONTEXT_ENCODER_NAME``."""
    return CONTEXT_ENCODER_REGISTRY.get(cfg.MODEL.SCORE.CONTEXT_ENCODER_NAME)(cfg)


# Imported last: it registers itself with the registry defined above.
from . import remoteclip  # noqa: E402, F401
