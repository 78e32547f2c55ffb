"""The tiny open_clip configs build, tokenize and leave the real configs alone."""

from __future__ import annotations

import open_clip
import pytest
import torch

from score.modeling.tiny_clip import TINY_CONVNEXT, TINY_VIT, register_tiny_clip_configs


def test_registration_is_idempotent_and_leaves_real_configs_untouched():
    real_before = {name: open_clip.get_model_config(name) for name in ("convnext_large_d_320", "ViT-L-14")}
    register_tiny_clip_configs()
    first = {name: open_clip.get_model_config(name) for name in (TINY_CONVNEXT, TINY_VIT)}
    register_tiny_clip_configs()
    assert {name: open_clip.get_model_config(name) for name in (TINY_CONVNEXT, TINY_VIT)} == first
    for name, cfg in real_before.items():
        assert open_clip.get_model_config(name) == cfg
    assert real_before["convnext_large_d_320"]["vision_cfg"]["timm_model_name"] == "convnext_large"
    assert real_before["ViT-L-14"]["vision_cfg"]["width"] == 1024


@pytest.mark.parametrize("name", [TINY_CONVNEXT, TINY_VIT])
def test_tiny_configs_build_encode_and_tokenize(name):
    register_tiny_clip_configs()
    model = open_clip.create_model(name).eval()
    size = model.visual.image_size
    tokens = open_clip.get_tokenizer(name)(["aerial photo of a ship.", "harbor"])
    assert tokens.shape == (2, 77)
    with torch.no_grad():
        image = model.encode_image(torch.randn(2, 3, *size))
        text = model.encode_text(tokens)
    assert image.shape == (2, 64) and text.shape == (2, 64)
    # A second build must not see a config edited by the first (open_clip pops keys from it).
    assert open_clip.create_model(name).visual.image_size == size


def test_tiny_layouts_match_the_real_ones():
    register_tiny_clip_configs()
    convnext = open_clip.create_model(TINY_CONVNEXT)
    assert hasattr(convnext.visual, "trunk") and hasattr(convnext.visual.head, "mlp")
    vit = open_clip.create_model(TINY_VIT)
    assert vit.visual.patch_size == (14, 14) and vit.visual.grid_size == (16, 16)
    assert vit.visual.transformer.resblocks[0].attn.num_heads == 2
