"""Every config merges, says what it is for, and the tiny ones build; typos are refused; defaults build."""

from pathlib import Path

import pytest
import torch
import yaml
from detectron2.modeling import build_model

from score.config import get_score_cfg
from tests.conftest import REPO

CONFIG_DIR = REPO / "configs"
CONFIGS = sorted(CONFIG_DIR.glob("**/*.yaml"))
TINY_FOLDERS = ("tiny", "tiny_world")

# What each config sets: for a leaf, exactly the keys whose merged value differs from its
# _BASE_'s (OUTPUT_DIR aside); for a Base-*.yaml, the keys listed among those it sets. A yaml
# added under configs/ without an entry here fails test_config_sets_what_it_is_for.
RAI_OFF = {"MODEL.SCORE.RAI.ENABLED": False}
GCA_OFF = {"MODEL.SCORE.GCA.MODE": "none"}
# What a semantic leaf sets: the task keys, the semantic mapper and the LandDiscover50K splits.
SEMANTIC = {
    "MODEL.MASK_FORMER.TEST.SEMANTIC_ON": True,
    "MODEL.MASK_FORMER.TEST.INSTANCE_ON": False,
    "INPUT.DATASET_MAPPER_NAME": "mask_former_semantic",
    "DATASETS.TRAIN": ("landdiscover50k_train_sem_seg",),
    "DATASETS.TEST": ("floodnet_val_sem_seg",),
}
EXPECTED = {
    "Base-SCORE.yaml": {
        "MODEL.META_ARCHITECTURE": "SCORE",
        "MODEL.BACKBONE.NAME": "CLIPConvNeXtBackbone",
        "MODEL.SEM_SEG_HEAD.NAME": "SCOREHead",
        "MODEL.SEM_SEG_HEAD.IN_FEATURES": ["res2", "res3", "res4", "res5"],
        "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS": 6,
        "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES": 300,
        "MODEL.MASK_FORMER.DEC_LAYERS": 10,
        "MODEL.MASK_FORMER.DROPOUT": 0.0,
        "MODEL.MASK_FORMER.CLASS_WEIGHT": 2.0,
        "MODEL.MASK_FORMER.MASK_WEIGHT": 5.0,
        "MODEL.MASK_FORMER.DICE_WEIGHT": 5.0,
        "SOLVER.BASE_LR": 1.25e-5,
        "INPUT.IMAGE_SIZE": 512,
        "TEST.DETECTIONS_PER_IMAGE": 300,
    },
    "score_isaid_instance.yaml": {
        "DATASETS.TRAIN": ("isaid_train_instance",),
        "DATASETS.TEST": ("isaid_val_instance",),
        "SOLVER.MAX_ITER": 468300,
        "SOLVER.STEPS": (421470, 444885),
    },
    "score_sior_instance.yaml": {
        "DATASETS.TRAIN": ("sior_train_instance",),
        "DATASETS.TEST": ("sior_val_instance",),
        "SOLVER.MAX_ITER": 293125,
        "SOLVER.STEPS": (263812, 278468),
    },
    "score_landdiscover_semantic.yaml": {
        **SEMANTIC,
        "SOLVER.MAX_ITER": 259230,
        "SOLVER.STEPS": (233307, 246268),
    },
    "ablations/rai_paper_dilation.yaml": {"MODEL.SCORE.RAI.DILATION": "paper"},
    "ablations/table2_baseline.yaml": {**RAI_OFF, **GCA_OFF},
    "ablations/table2_gca_only.yaml": RAI_OFF,
    "ablations/table2_rai_only.yaml": GCA_OFF,
    "ablations/table3_context_georsclip.yaml": {
        "MODEL.SCORE.RSCLIP_PRETRAINED_WEIGHTS": "RemoteCLIP/GeoRSCLIP-ViT-L-14.pt"
    },
    "ablations/table3_context_openai_clip.yaml": {"MODEL.SCORE.RSCLIP_PRETRAINED_WEIGHTS": "openai"},
    "ablations/table3_context_skyclip.yaml": {
        "MODEL.SCORE.RSCLIP_PRETRAINED_WEIGHTS": "RemoteCLIP/SkyCLIP-ViT-L-14.pt"
    },
    "ablations/table4_rai_cls.yaml": {"MODEL.SCORE.RAI.CONTEXT_SOURCE": "cls"},
    "ablations/table4_rai_patch.yaml": {"MODEL.SCORE.RAI.CONTEXT_SOURCE": "patch"},
    "ablations/table5_gca_add.yaml": {"MODEL.SCORE.GCA.MODE": "add"},
    "ablations/table5_gca_concat.yaml": {"MODEL.SCORE.GCA.MODE": "concat"},
    "ablations/table6_out_vocab_rsclip.yaml": {"MODEL.SCORE.OUT_VOCAB_SOURCE": "rsclip"},
    "tiny/Base-tiny.yaml": {
        "MODEL.DEVICE": "cpu",
        "MODEL.SCORE.CLIP_MODEL_NAME": "score-tiny-convnext",
        "MODEL.SCORE.RSCLIP_MODEL_NAME": "score-tiny-vit",
        "MODEL.SCORE.RANDOM_INIT_CLIP": True,
        "MODEL.SCORE.EMBED_DIM": 64,
        "MODEL.MASK_FORMER.HIDDEN_DIM": 32,
        "SOLVER.AMP.ENABLED": False,
    },
    "tiny/score_tiny_isaid.yaml": {
        "DATASETS.TRAIN": ("isaid_train_instance",),
        "DATASETS.TEST": ("isaid_val_instance",),
    },
    "tiny/score_tiny_isaid_baseline.yaml": {**RAI_OFF, **GCA_OFF},
    "tiny/score_tiny_landdiscover_semantic.yaml": {
        **SEMANTIC,
    },
    "tiny_world/Base-tiny-world.yaml": {
        "MODEL.SCORE.CLIP_PRETRAINED_WEIGHTS": "weights/tiny_world/score-tiny-convnext.pt",
        "MODEL.SCORE.RSCLIP_PRETRAINED_WEIGHTS": "weights/tiny_world/score-tiny-vit.pt",
        "MODEL.SCORE.RANDOM_INIT_CLIP": False,
        "MODEL.SCORE.RSCLIP_QUICK_GELU": False,
        "MODEL.MASK_FORMER.DEC_LAYERS": 4,
    },
    "tiny_world/baseline_isaid.yaml": {**RAI_OFF, **GCA_OFF},
    "tiny_world/gca_isaid.yaml": RAI_OFF,
    "tiny_world/rai_isaid.yaml": GCA_OFF,
    "tiny_world/score_isaid.yaml": {},
    "tiny_world/score_landdiscover_semantic.yaml": {
        **SEMANTIC,
        "DATASETS.TEST": ("landdiscover50k_val_sem_seg",),
        "INPUT.IMAGE_SIZE": 256,
        "INPUT.MIN_SCALE": 0.75,
        "INPUT.MAX_SCALE": 1.5,
        "INPUT.MAX_SIZE_TEST": 480,
        "SOLVER.MAX_ITER": 1200,
        "SOLVER.STEPS": (1080, 1140),
    },
}


def _name(path: Path) -> str:
    return path.relative_to(CONFIG_DIR).as_posix()


def _merged(path: Path):
    cfg = get_score_cfg()
    cfg.merge_from_file(str(path))
    return cfg


def _flat(node, prefix: str = "") -> dict:
    flat = {}
    for key, value in node.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def _set_by(path: Path) -> dict:
    """The keys whose merged value differs from the merged _BASE_'s (from the defaults without one)."""
    base = yaml.safe_load(path.read_text()).get("_BASE_")
    before = _flat(_merged(path.parent / base) if base else get_score_cfg())
    after = _flat(_merged(path))
    return {k: v for k, v in after.items() if before[k] != v and k != "OUTPUT_DIR"}


def test_every_config_is_covered():
    assert {_name(p) for p in CONFIGS} == set(EXPECTED)


@pytest.mark.parametrize("path", CONFIGS, ids=_name)
def test_config_sets_what_it_is_for(path):
    cfg = _merged(path)
    cfg.freeze()
    assert cfg.MODEL.META_ARCHITECTURE == "SCORE"
    name = _name(path)
    assert name in EXPECTED, f"configs/{name} is not covered: add what it sets to EXPECTED"
    set_by = _set_by(path)
    if path.name.startswith("Base-"):
        assert {k: set_by.get(k) for k in EXPECTED[name]} == EXPECTED[name]
    else:
        assert set_by == EXPECTED[name]


@pytest.mark.parametrize("path", [p for p in CONFIGS if _name(p).split("/")[0] in TINY_FOLDERS], ids=_name)
def test_tiny_config_builds_its_model(path):
    cfg = _merged(path)
    if not cfg.DATASETS.TRAIN:  # a Base-*.yaml names no dataset; the model needs a vocabulary
        cfg.DATASETS.TRAIN = ("isaid_train_instance",)
    torch.manual_seed(0)
    model = build_model(cfg)
    score = cfg.MODEL.SCORE
    assert (model.rai is None) == (not score.RAI.ENABLED)
    assert (model.context_encoder is None) == (not score.RAI.ENABLED and score.GCA.MODE == "none")
    assert len(model.sem_seg_head.predictor.transformer_ffn_layers) == cfg.MODEL.MASK_FORMER.DEC_LAYERS - 1


def test_recipe_values():
    cfg = get_score_cfg()
    cfg.merge_from_file(str(CONFIG_DIR / "score_isaid_instance.yaml"))
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


def _get(cfg, key: str):
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


def test_part_names_default_to_the_registered_parts_the_base_yaml_names():
    from detectron2.modeling import BACKBONE_REGISTRY, META_ARCH_REGISTRY, SEM_SEG_HEADS_REGISTRY

    from score.data.mappers import TRAIN_MAPPERS
    from score.modeling.context import CONTEXT_ENCODER_REGISTRY
    from score.modeling.pixel_decoder import PIXEL_DECODER_REGISTRY
    from score.modeling.transformer_decoder import TRANSFORMER_DECODER_REGISTRY

    defaults, base = get_score_cfg(), _merged(CONFIG_DIR / "Base-SCORE.yaml")
    # SCORE's own keys: the default is the registered part the recipe uses.
    for key, registry in {
        "INPUT.DATASET_MAPPER_NAME": TRAIN_MAPPERS,
        "MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME": PIXEL_DECODER_REGISTRY,
        "MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME": TRANSFORMER_DECODER_REGISTRY,
        "MODEL.SCORE.CONTEXT_ENCODER_NAME": CONTEXT_ENCODER_REGISTRY,
    }.items():
        assert _get(defaults, key) == _get(base, key), key
        assert _get(defaults, key) in registry, key
    # detectron2's keys keep detectron2's defaults (its own registered parts); the yaml names SCORE's.
    for key, registry in {
        "MODEL.META_ARCHITECTURE": META_ARCH_REGISTRY,
        "MODEL.BACKBONE.NAME": BACKBONE_REGISTRY,
        "MODEL.SEM_SEG_HEAD.NAME": SEM_SEG_HEADS_REGISTRY,
    }.items():
        assert _get(defaults, key) in registry, key
        assert _get(base, key) in registry and _get(base, key) != _get(defaults, key), key


def test_a_yaml_without_the_base_builds_the_tiny_model(tmp_path, make_inputs):
    """Only the choice of model (detectron2's keys) and the tiny model's sizes; every other key default."""
    minimal = tmp_path / "tiny_without_base.yaml"
    minimal.write_text(
        """
MODEL:
  META_ARCHITECTURE: "SCORE"
  DEVICE: "cpu"
  BACKBONE:
    NAME: "CLIPConvNeXtBackbone"
  SEM_SEG_HEAD:
    NAME: "SCOREHead"
    IN_FEATURES: ["res2", "res3", "res4", "res5"]
    CONVS_DIM: 32
    MASK_DIM: 32
    TRANSFORMER_ENC_LAYERS: 1
  MASK_FORMER:
    HIDDEN_DIM: 32
    NUM_OBJECT_QUERIES: 20
    NHEADS: 4
    DIM_FEEDFORWARD: 64
  SCORE:
    CLIP_MODEL_NAME: "score-tiny-convnext"
    CLIP_PRETRAINED_WEIGHTS: ""
    RSCLIP_MODEL_NAME: "score-tiny-vit"
    RSCLIP_PRETRAINED_WEIGHTS: ""
    RANDOM_INIT_CLIP: True
    EMBED_DIM: 64
    CONTEXT_INPUT_SIZE: 112
    RAI:
      NUM_LAYERS: 1
      NHEADS: 4
      DIM_FEEDFORWARD: 64
      PATCH_LAYER: 0
    GCA:
      NHEADS: 4
DATASETS:
  TRAIN: ("isaid_train_instance",)
"""
    )
    cfg = _merged(minimal)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    assert type(model).__name__ == "SCORE"
    inputs = make_inputs([(64, 96)])
    del inputs[0]["instances"]
    with torch.no_grad():
        instances = model(inputs)[0]["instances"]
    assert len(instances) > 0 and torch.isfinite(instances.scores).all()
