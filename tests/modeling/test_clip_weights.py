"""Finding and loading CLIP weights: local files, hub references, open_clip tags, random init."""

from __future__ import annotations

import logging
import os

import pytest
import torch
from huggingface_hub import constants as hub_constants

from score.modeling import clip_weights
from score.modeling.clip_weights import (
    WeightsLoadError,
    WeightsNotFoundError,
    create_clip_model,
    weights_fingerprint,
)
from score.modeling.tiny_clip import TINY_VIT


@pytest.fixture(scope="module")
def tiny_vit_state_dict():
    """A random state dict of the tiny ViT CLIP (image and text towers)."""
    model = create_clip_model(TINY_VIT, "", random_init=True)
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    """Hugging Face hub in offline mode with an empty cache: no network, nothing cached."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))


def _assert_loaded(model, state_dict):
    loaded = model.state_dict()
    for key in ("visual.conv1.weight", "visual.proj", "text_projection", "logit_scale"):
        torch.testing.assert_close(loaded[key], state_dict[key])
    assert not any(p.requires_grad for p in model.parameters())
    assert not model.training


def test_loads_absolute_path(tmp_path, tiny_vit_state_dict):
    path = tmp_path / "tiny.pt"
    torch.save(tiny_vit_state_dict, path)
    _assert_loaded(create_clip_model(TINY_VIT, str(path)), tiny_vit_state_dict)


def test_relative_path_resolves_against_project_root_then_cwd(tmp_path, monkeypatch, tiny_vit_state_dict):
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    (project / "weights").mkdir(parents=True)
    elsewhere.mkdir()
    monkeypatch.setattr(clip_weights, "PROJECT_ROOT", project)
    monkeypatch.chdir(elsewhere)
    torch.save(tiny_vit_state_dict, project / "weights" / "tiny.pt")
    _assert_loaded(create_clip_model(TINY_VIT, "weights/tiny.pt"), tiny_vit_state_dict)

    # Not under the project root but under the working directory.
    torch.save(tiny_vit_state_dict, elsewhere / "cwd_only.pt")
    _assert_loaded(create_clip_model(TINY_VIT, "cwd_only.pt"), tiny_vit_state_dict)


def test_wrapped_state_dict_with_module_prefix_loads(tmp_path, tiny_vit_state_dict):
    path = tmp_path / "wrapped.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in tiny_vit_state_dict.items()}}, path)
    _assert_loaded(create_clip_model(TINY_VIT, str(path)), tiny_vit_state_dict)


def test_fp16_precision_keeps_openai_dtype_layout(tmp_path, tiny_vit_state_dict):
    path = tmp_path / "tiny.pt"
    torch.save(tiny_vit_state_dict, path)
    state = create_clip_model(TINY_VIT, str(path), precision="fp16").state_dict()
    assert state["visual.conv1.weight"].dtype == torch.float16
    assert state["visual.transformer.resblocks.0.attn.in_proj_weight"].dtype == torch.float16
    assert state["visual.proj"].dtype == torch.float16
    assert state["visual.ln_pre.weight"].dtype == torch.float32
    assert state["visual.positional_embedding"].dtype == torch.float32
    torch.testing.assert_close(state["visual.proj"], tiny_vit_state_dict["visual.proj"].half())


def test_missing_image_tower_key_and_shape_mismatch_are_named(tmp_path, tiny_vit_state_dict):
    missing = dict(tiny_vit_state_dict)
    del missing["visual.ln_post.weight"]
    torch.save(missing, tmp_path / "missing.pt")
    with pytest.raises(WeightsLoadError, match=r"missing image-tower keys.*visual\.ln_post\.weight") as info:
        create_clip_model(TINY_VIT, str(tmp_path / "missing.pt"))
    assert str(tmp_path / "missing.pt") in str(info.value)

    wrong = dict(tiny_vit_state_dict)
    wrong["visual.proj"] = torch.zeros(64, 32)
    torch.save(wrong, tmp_path / "wrong.pt")
    with pytest.raises(WeightsLoadError, match=r"visual\.proj file \(64, 32\) vs model \(64, 64\)"):
        create_clip_model(TINY_VIT, str(tmp_path / "wrong.pt"))


def test_missing_text_keys_only_warn(tmp_path, caplog, tiny_vit_state_dict):
    visual_only = {k: v for k, v in tiny_vit_state_dict.items() if k.startswith("visual.")}
    torch.save(visual_only, tmp_path / "visual.pt")
    with caplog.at_level(logging.WARNING, logger="score.modeling.clip_weights"):
        model = create_clip_model(TINY_VIT, str(tmp_path / "visual.pt"))
    torch.testing.assert_close(model.state_dict()["visual.proj"], tiny_vit_state_dict["visual.proj"])
    assert "text_projection" in caplog.text and "keep random values" in caplog.text


def test_corrupt_file_error_names_the_file(tmp_path):
    path = tmp_path / "RemoteCLIP-ViT-L-14.pt"
    path.write_bytes(b"this is not a checkpoint")
    with pytest.raises(WeightsLoadError, match="Cannot read CLIP weights file") as info:
        create_clip_model(TINY_VIT, str(path))
    assert str(path) in str(info.value)


def test_missing_file_names_every_place_tried_and_how_to_get_it(tmp_path, monkeypatch):
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    monkeypatch.setattr(clip_weights, "PROJECT_ROOT", project)
    monkeypatch.chdir(elsewhere)
    with pytest.raises(WeightsNotFoundError) as info:
        create_clip_model(
            TINY_VIT, "RemoteCLIP/RemoteCLIP-ViT-L-14.pt", config_key="MODEL.SCORE.RSCLIP_PRETRAINED_WEIGHTS"
        )
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert str(project / "RemoteCLIP" / "RemoteCLIP-ViT-L-14.pt") in message
    assert str(elsewhere / "RemoteCLIP" / "RemoteCLIP-ViT-L-14.pt") in message
    assert "chendelong/RemoteCLIP" in message and f"{project / 'RemoteCLIP'}/" in message
    assert "MODEL.SCORE.RSCLIP_PRETRAINED_WEIGHTS" in message


def test_empty_reference_is_an_error_not_random_weights():
    with pytest.raises(WeightsNotFoundError, match="No weights given.*MODEL.SCORE.CLIP_PRETRAINED_WEIGHTS"):
        create_clip_model(TINY_VIT, "", config_key="MODEL.SCORE.CLIP_PRETRAINED_WEIGHTS")


def test_hub_reference_offline_names_repo_and_file(offline_hub):
    with pytest.raises(WeightsNotFoundError) as info:
        create_clip_model(
            TINY_VIT, "hf-hub:chendelong/RemoteCLIP", hub_default_filename="RemoteCLIP-ViT-L-14.pt"
        )
    message = str(info.value)
    assert "chendelong/RemoteCLIP" in message and "RemoteCLIP-ViT-L-14.pt" in message
    assert "HF_HUB_OFFLINE" in message

    with pytest.raises(WeightsNotFoundError, match="org/repo, file sub/weights.bin"):
        create_clip_model(TINY_VIT, "hf-hub:org/repo/sub/weights.bin")


def test_hub_reference_without_file_needs_a_default():
    with pytest.raises(ValueError, match="names no file"):
        create_clip_model(TINY_VIT, "hf-hub:org/repo")


def test_open_clip_tag_offline_names_the_tag(offline_hub):
    with pytest.raises(WeightsNotFoundError) as info:
        create_clip_model("convnext_large_d_320", "laion2b_s29b_b131k_ft_soup")
    message = str(info.value)
    assert "'laion2b_s29b_b131k_ft_soup'" in message
    assert "laion/CLIP-convnext_large_d_320.laion2B-s29B-b131K-ft-soup" in message
    assert str(hub_constants.HF_HUB_CACHE) in message
    assert "HF_HUB_OFFLINE" in message and "local file path" in message


def test_random_init_warns_and_loads_nothing(caplog):
    with caplog.at_level(logging.WARNING, logger="score.modeling.clip_weights"):
        model = create_clip_model(TINY_VIT, "does/not/exist.pt", random_init=True)
    assert "RANDOM weights" in caplog.text
    assert not any(p.requires_grad for p in model.parameters())


def test_weights_fingerprint(tmp_path, tiny_vit_state_dict):
    path = tmp_path / "tiny.pt"
    torch.save(tiny_vit_state_dict, path)
    assert weights_fingerprint(str(path), random_init=True) == ""
    first = weights_fingerprint(str(path), random_init=False)
    assert str(path.resolve()) in first and str(path.stat().st_size) in first
    os.utime(path, ns=(0, 0))
    assert weights_fingerprint(str(path), random_init=False) != first
    assert weights_fingerprint("laion2b_s29b_b131k_ft_soup", False) == "laion2b_s29b_b131k_ft_soup"
    assert weights_fingerprint("hf-hub:chendelong/RemoteCLIP", False) == "hf-hub:chendelong/RemoteCLIP"
