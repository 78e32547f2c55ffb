"""``nn.TransformerEncoder`` on sequences of one token, through the attention's value path.

RAI's integration stack (SCORE.md 5.3) runs standard post-norm encoder layers
on each query alone, a sequence of length 1. Softmax over one key is 1, so
self-attention is exactly out_proj(v_proj(x)): the query and key projections
do not change the output (and get a zero gradient either way). Skipping them
saves a third of each layer's matmuls; the outputs and gradients match
``nn.TransformerEncoder`` to rounding (tests/modeling/test_speed_paths.py),
and the layers' own modules are used, so parameters and state-dict keys are
``nn.TransformerEncoder``'s.

Shorthand: S sequences (one per query), D model width.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["single_token_attention", "single_token_encoder"]


def single_token_attention(attn: nn.MultiheadAttention, x: Tensor) -> Tensor:
    """Self-attention of sequences of one token: (S, 1, D) -> (S, 1, D), batch-first.

    The MHA's dropout on the attention weights drops a head's whole output for
    a token, so in training it becomes one Bernoulli mask per (token, head),
    scaled by 1 / (1 - p).
    """
    d = x.shape[-1]
    value = F.linear(x, attn.in_proj_weight[2 * d :], attn.in_proj_bias[2 * d :])
    if attn.training and attn.dropout > 0.0:
        heads = attn.num_heads
        keep = F.dropout(value.new_ones(value.shape[0], 1, heads, 1), attn.dropout, training=True)
        value = (value.view(value.shape[0], 1, heads, d // heads) * keep).view_as(value)
    return attn.out_proj(value)


def single_token_encoder(encoder: nn.TransformerEncoder, x: Tensor) -> Tensor:
    """``encoder(x)`` of batch-first post-norm layers on one-token sequences: (S, 1, D) -> (S, 1, D)."""
    for layer in encoder.layers:
        x = layer.norm1(x + layer.dropout1(single_token_attention(layer.self_attn, x)))
        feed_forward = layer.linear2(layer.dropout(layer.activation(layer.linear1(x))))
        x = layer.norm2(x + layer.dropout2(feed_forward))
    return x if encoder.norm is None else encoder.norm(x)
