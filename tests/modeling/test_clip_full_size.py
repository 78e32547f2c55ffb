"""Full-size CLIP towers (random weights) against the authors' state-dict key list and SCORE.md 12."""

from __future__ import annotations

from pathlib import Path

import pytest

from score.modeling.backbone.clip_convnext import CLIPConvNeXtBackbone
from score.modeling.context.remoteclip import RemoteCLIPContextEncoder

KEY_LIST = Path(__file__).resolve().parents[1] / "data_files" / "official_state_dict_keys.txt"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def official():
    """name -> (shape, dtype) of every entry of the authors' state dict."""
    entries = {}
    for line in KEY_LIST.read_text().splitlines():
        name, shape, dtype = line.split("\t")
        entries[name] = (shape, dtype)
    return entries


@pytest.fixture(scope="module")
def towers():
    backbone = CLIPConvNeXtBackbone(
        clip_model_name="convnext_large_d_320", clip_pretrained_weights="", random_init=True, embed_dim=768
    )
    context = RemoteCLIPContextEncoder(
        model_name="ViT-L-14", weights="", quick_gelu=True, dtype="float16", input_size=224, random_init=True
    )
    return {"backbone.": backbone, "clip_rs.": context}


def _entries(prefix, module):
    return {
        prefix + name: (str(tuple(t.shape)), str(t.dtype).replace("torch.", ""))
        for name, t in module.state_dict().items()
    }


@pytest.mark.parametrize("prefix", ["backbone.", "clip_rs."])
def test_names_shapes_dtypes_match_authors(prefix, towers, official):
    ours = _entries(prefix, towers[prefix])
    theirs = {k: v for k, v in official.items() if k.startswith(prefix + "clip_model.")}
    assert sorted(set(ours) - set(theirs)) == []
    assert sorted(set(theirs) - set(ours)) == []
    assert {k: v for k, v in ours.items() if v != theirs[k]} == {}


@pytest.mark.parametrize("prefix, count", [("backbone.", 351_772_609), ("clip_rs.", 427_616_513)])
def test_parameter_counts_of_section_12(prefix, count, towers):
    clip_model = towers[prefix].clip_model
    assert sum(p.numel() for p in clip_model.parameters()) == count
    assert not any(p.requires_grad for p in clip_model.parameters())


def test_full_size_output_shapes(towers):
    shapes = towers["backbone."].output_shape()
    assert [shapes[k].channels for k in ("res2", "res3", "res4", "res5", "clip_vis_dense")] == [
        192, 384, 768, 1536, 1536,
    ]  # fmt: skip
    assert towers["clip_rs."].grid_size == (16, 16) and towers["clip_rs."].embed_dim == 768
