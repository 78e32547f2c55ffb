"""Transformer decoders: learnable queries -> per-query mask logits and class logits.

A transformer decoder is registered in ``TRANSFORMER_DECODER_REGISTRY`` and
built as ``cls(cfg, in_channels)``, ``in_channels`` being the width of the
pixel decoder's multi-scale features. It is called as

    decoder(x, mask_features, text_classifier, num_synonyms, context=None) -> dict

with ``x`` the 3 multi-scale features (B, C, h_l, w_l) (strides 32, 16, 8),
``mask_features`` (B, MASK_DIM, H/4, W/4), ``text_classifier`` (N + 1, D) or
per image (B, N + 1, D) (synonym rows then the void row), ``num_synonyms`` the
rows per class (K entries, summing to N) and ``context`` an opaque object for
the region-aware integration module. It returns ``pred_logits`` (B, Q, K + 1),
``pred_masks`` (B, Q, H/4, W/4) and ``aux_outputs``, a list of dicts for the
intermediate predictions: with the same two keys in training (deep
supervision), with ``pred_masks`` only at inference, where nothing reads their
class logits.
"""

from detectron2.utils.registry import Registry
from torch import nn

__all__ = ["TRANSFORMER_DECODER_REGISTRY", "build_transformer_decoder"]

TRANSFORMER_DECODER_REGISTRY = Registry("TRANSFORMER_MODULE")
TRANSFORMER_DECODER_REGISTRY.__doc__ = __doc__


def build_transformer_decoder(cfg, in_channels: int) -> nn.Module:
    """The transformer decoder named by ``cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME``."""
    name = cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME
    return TRANSFORMER_DECODER_REGISTRY.get(name)(cfg, in_channels)


# Imported last: the module registers itself in the registry defined above.
from . import score_transformer_decoder  # noqa: E402,F401
