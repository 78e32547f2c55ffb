"""Every config merges; typos are refused by detectron2's config system."""

from pathlib import Path

import pytest

from score.config import get_score_cfg

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))


def test_there_are_configs():
    names = {p.name for p in CONFIGS}
    assert {"Base-SCORE.yaml", "score_isaid_instance.yaml", "score_sior_instance.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_config_merges(path):
    cfg = get_score_cfg()
    cfg.merge_from_file(str(path))
    cfg.freeze()
    assert cfg.MODEL.META_ARCHITECTURE == "SCORE"


def test_recipe_values():
    cfg = get_score_cfg()
    cfg.merge_from_file(str(Path(__file__).resolve().parents[1] / "configs" / "score_isaid_instance.yaml"))
    assert cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES == 300 and cfg.MODEL.MASK_FORMER.DEC_LAYERS == 10
    assert cfg.SOLVER.BASE_LR == 1.25e-5 and cfg.SOLVER.MAX_ITER == 468300
    assert tuple(cfg.SOLVER.STEPS) == (int(0.9 * 468300), int(0.95 * 468300))
    assert cfg.MODEL.SCORE.RAI.GUMBEL_WARMUP_ITERS * (cfg.MODEL.MASK_FORMER.DEC_LAYERS) == 2500
    assert cfg.INPUT.IMAGE_SIZE == 512 and cfg.TEST.DETECTIONS_PER_IMAGE == 300


def test_unknown_key_is_refused(tmp_path):
    bad = tmp_path / "typo.yaml"
    bad.write_text("MODEL:\n  SCORE:\n    GEOMETRIC_ENSEMBLE_ALPA: 0.3\n")
    cfg = get_score_cfg()
    with pytest.raises(KeyError, match="GEOMETRIC_ENSEMBLE_ALPA"):
        cfg.merge_from_file(str(bad))
    with pytest.raises(AssertionError, match="Non-existent key: MODEL.SCORE.RAI.NUM_LAYER"):
        cfg.merge_from_list(["MODEL.SCORE.RAI.NUM_LAYER", "3"])


def test_mask2former_keys_that_score_never_reads_are_absent_and_ignored_with_a_warning(tmp_path, caplog):
    from score.config import DEPRECATED_KEYS

    cfg = get_score_cfg()
    for key in DEPRECATED_KEYS:
        node = cfg
        for part in key.split(".")[:-1]:
            node = node.get(part, {})
        assert key.split(".")[-1] not in node, key
    # A config.yaml that detectron2 dumped with them still loads; each key is named in a warning.
    old = tmp_path / "dumped.yaml"
    old.write_text(
        "MODEL:\n  MASK_FORMER:\n    ENC_LAYERS: 0\n    TEST:\n      PANOPTIC_ON: False\n"
        "INPUT:\n  SIZE_DIVISIBILITY: -1\n"
    )
    with caplog.at_level("WARNING"):
        cfg.clone().merge_from_file(str(old))
    for key in (
        "MODEL.MASK_FORMER.ENC_LAYERS",
        "MODEL.MASK_FORMER.TEST.PANOPTIC_ON",
        "INPUT.SIZE_DIVISIBILITY",
    ):
        assert f"Deprecated config key (ignoring): {key}\n" in caplog.text
    cfg.clone().merge_from_list(["MODEL.MASK_FORMER.TEST.OVERLAP_THRESHOLD", "0.8"])


def test_semantic_and_instance_keys_are_real_and_an_old_config_with_them_round_trips(tmp_path, caplog):
    cfg = get_score_cfg()
    test = cfg.MODEL.MASK_FORMER.TEST
    assert (test.SEMANTIC_ON, test.INSTANCE_ON, test.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE) == (
        False,
        True,
        False,
    )
    # A config dumped with Mask2Former's TEST node (panoptic keys included) loads and keeps its values.
    old = tmp_path / "dumped.yaml"
    old.write_text(
        "MODEL:\n  MASK_FORMER:\n    TEST:\n      SEMANTIC_ON: True\n      INSTANCE_ON: False\n"
        "      PANOPTIC_ON: True\n      OBJECT_MASK_THRESHOLD: 0.8\n"
        "      SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE: True\n"
    )
    loaded = cfg.clone()
    with caplog.at_level("WARNING"):
        loaded.merge_from_file(str(old))
    assert "Deprecated config key (ignoring): MODEL.MASK_FORMER.TEST.PANOPTIC_ON" in caplog.text
    assert "SEMANTIC_ON" not in caplog.text
    test = loaded.MODEL.MASK_FORMER.TEST
    assert (test.SEMANTIC_ON, test.INSTANCE_ON, test.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE) == (
        True,
        False,
        True,
    )
    again = cfg.clone()
    dumped = tmp_path / "again.yaml"
    dumped.write_text(loaded.dump())
    again.merge_from_file(str(dumped))
    assert again.MODEL.MASK_FORMER.TEST == loaded.MODEL.MASK_FORMER.TEST
    loaded.merge_from_list(["MODEL.MASK_FORMER.TEST.INSTANCE_ON", "True"])
    assert loaded.MODEL.MASK_FORMER.TEST.INSTANCE_ON is True


def test_mask2former_defaults_stay_in_code_and_score_names_its_parts_in_the_base_yaml():
    cfg = get_score_cfg()
    assert cfg.INPUT.DATASET_MAPPER_NAME == "mask_former_semantic"
    assert cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME == "BasePixelDecoder"
    assert cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME == "MultiScaleMaskedTransformerDecoder"
    cfg.merge_from_file(str(Path(__file__).resolve().parents[1] / "configs" / "Base-SCORE.yaml"))
    assert cfg.INPUT.DATASET_MAPPER_NAME == "score_instance_lsj"
    assert cfg.MODEL.SEM_SEG_HEAD.NAME == "SCOREHead"
    assert cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME == "MSDeformAttnPixelDecoder"
    assert cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME == "SCOREMultiScaleMaskedTransformerDecoder"
