"""Tiny open_clip model configs, registered at run time, for tests and CPU smoke runs.

The real towers of SCORE (open_clip ``convnext_large_d_320`` and ``ViT-L-14``)
hold about 780 M parameters. The two configs below keep their layouts (a timm
ConvNeXt trunk with an MLP projection head; an OpenAI-layout ViT with patch 14
and a [CLS] token) at a size where a whole SCORE model runs on a CPU in
seconds:

- ``score-tiny-convnext``: timm ``convnext_atto`` trunk (channels 40, 80, 160,
  320 at strides 4..32), ``timm_pool ""`` and ``timm_proj "mlp"`` like
  ``convnext_large_d_320``, 64 x 64 input.
- ``score-tiny-vit``: ViT with patch 14, width 64, 3 blocks, 2 heads, 224 x 224
  input (the same 16 x 16 grid as ViT-L/14).

Both have a tiny text tower (width 64, 2 layers, 2 heads, the CLIP BPE
tokenizer with 77 tokens and 49408 entries) and the same joint width
D = 64, so they can stand in for the pair of towers of SCORE together. The
names are inserted into open_clip's model-config table, so
``open_clip.create_model`` and ``open_clip.get_tokenizer`` accept them like
any built-in name.
"""

from __future__ import annotations

import copy
from typing import Any, Dict

from open_clip import factory as open_clip_factory

__all__ = ["TINY_CLIP_CONFIGS", "TINY_CONVNEXT", "TINY_VIT", "register_tiny_clip_configs"]

TINY_CONVNEXT = "score-tiny-convnext"
TINY_VIT = "score-tiny-vit"

_TINY_TEXT_CFG: Dict[str, Any] = {
    "context_length": 77,
    "vocab_size": 49408,
    "width": 64,
    "heads": 2,
    "layers": 2,
}

TINY_CLIP_CONFIGS: Dict[str, Dict[str, Any]] = {
    TINY_CONVNEXT: {
        "embed_dim": 64,
        "vision_cfg": {
            "timm_model_name": "convnext_atto",
            "timm_model_pretrained": False,
            "timm_pool": "",
            "timm_proj": "mlp",
            "timm_drop": 0.0,
            "timm_drop_path": 0.0,
            "image_size": 64,
        },
        "text_cfg": _TINY_TEXT_CFG,
    },
    TINY_VIT: {
        "embed_dim": 64,
        "vision_cfg": {"image_size": 224, "layers": 3, "width": 64, "head_width": 32, "patch_size": 14},
        "text_cfg": _TINY_TEXT_CFG,
    },
}


def register_tiny_clip_configs() -> None:
    """Insert the tiny configs into open_clip's model-config table (idempotent).

    Only the two ``score-tiny-*`` names are written; built-in names such as
    ``convnext_large_d_320`` and ``ViT-L-14`` are left as they are. open_clip
    rebuilds its table from the existing entries when it rescans its config
    folders, so the names stay registered.
    """
    for name, cfg in TINY_CLIP_CONFIGS.items():
        # open_clip pops and edits entries of the config it gets, so each
        # registration holds its own copy.
        open_clip_factory._MODEL_CONFIGS[name] = copy.deepcopy(cfg)


# The one registration: the tiny configs are open_clip names as soon as this module is imported.
register_tiny_clip_configs()
