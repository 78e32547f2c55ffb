"""The shipped tiny-world ConvNeXt CLIP (weights/tiny_world/) and tools/pretrain_tiny_clip.py."""

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHECKPOINT = "weights/tiny_world/score-tiny-convnext.pt"


def _pretrain_module():
    spec = importlib.util.spec_from_file_location(
        "pretrain_tiny_clip", REPO / "tools" / "pretrain_tiny_clip.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _shipped_top1(module, per_concept):
    import open_clip

    from score.modeling.clip_weights import create_clip_model
    from score.modeling.tiny_clip import TINY_CONVNEXT

    # The same loader as MODEL.SCORE.CLIP_PRETRAINED_WEIGHTS with RANDOM_INIT_CLIP False.
    model = create_clip_model(TINY_CONVNEXT, CHECKPOINT)
    tokenizer = open_clip.get_tokenizer(TINY_CONVNEXT)
    return module.zero_shot_top1(
        model, tokenizer, module.concept_names(), seed=1000, per_concept=per_concept, size=64
    )


def test_concepts_cover_every_class_of_every_split():
    from score.data.datasets import SPLITS, canonical_class_name

    module = _pretrain_module()
    names = {n for names in module.concept_names().values() for n in names}
    for split in SPLITS:
        for name in split.class_names:
            assert set(n.strip() for n in canonical_class_name(name).split(",")) <= names, (split.name, name)


def test_shipped_checkpoint_classifies_held_out_crops_far_above_chance():
    module = _pretrain_module()
    chance = 1.0 / len(module.concept_names())
    top1 = _shipped_top1(module, per_concept=3)
    assert top1 > 20 * chance, f"zero-shot top-1 {top1:.3f}, chance {chance:.3f}"


@pytest.mark.slow
def test_pretraining_reaches_the_shipped_accuracy(tmp_path):
    module = _pretrain_module()
    shipped = _shipped_top1(module, per_concept=10)
    top1 = module.main(["--out", str(tmp_path / "convnext.pt"), "--seed", "0"])
    assert top1 >= shipped - 0.05, f"rerun {top1:.3f} vs shipped {shipped:.3f}"


def test_shipped_checkpoint_names_mask_pooled_scene_regions():
    """The detector's out-of-vocabulary path: objects of whole scenes, pooled from the trunk's dense map."""
    import open_clip

    from score.modeling.clip_weights import create_clip_model
    from score.modeling.tiny_clip import TINY_CONVNEXT

    module = _pretrain_module()
    concepts = module.concept_names()
    model = create_clip_model(TINY_CONVNEXT, CHECKPOINT)
    tokenizer = open_clip.get_tokenizer(TINY_CONVNEXT)
    top1 = module.zero_shot_region_top1(model, tokenizer, concepts, seed=1000, size=256, rounds=1)
    assert top1 > 20 / len(concepts), f"zero-shot top-1 {top1:.3f} on regions, chance {1 / len(concepts):.3f}"
