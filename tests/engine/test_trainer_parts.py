"""Parts of the trainer that need no SCORE model: optimizer, clipping, CPU fallback, CLI, hooks, test loop."""

import json
import os
import shlex
import uuid

import numpy as np
import pytest
import torch
from torch import nn

import score  # noqa: F401  (detectron2 compatibility shims before detectron2.engine)

# isort: split
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import default_argument_parser
from detectron2.structures import Boxes, Instances
from PIL import Image

from score.config import get_score_cfg
from score.engine import (
    RAISummaryHook,
    Trainer,
    adapt_cfg_to_device,
    build_optimizer,
    optimizer_param_groups,
    with_full_model_gradient_clipping,
)
from score.vocabulary import train_vocabulary
from tests.conftest import load_script

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
AUTHORS_EVAL_COMMAND = (
    "--config configs/score_isaid_instance.yaml --num-gpus 1 --dist-url auto --eval-only "
    "OUTPUT_DIR out/eval_final/nwpu DATASETS.TEST \"('nwpu_val_instance',)\" "
    "MODEL.WEIGHTS out/model_final.pth "
    "MODEL.SCORE.GEOMETRIC_ENSEMBLE_ALPHA 0.4 MODEL.SCORE.GEOMETRIC_ENSEMBLE_BETA 0.4"
)


class _WithPosTable(nn.Module):
    def __init__(self):
        super().__init__()
        self.absolute_pos_embed = nn.Parameter(torch.zeros(1, 4))
        self.proj = nn.Linear(4, 4)


class _Toy(nn.Module):
    """A ``backbone`` child (partly frozen), norms, embeddings, a position table, shared and frozen params."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1))
        self.backbone[2].requires_grad_(False)
        self.backbone_neck = nn.Linear(4, 4)  # named like the backbone, but not inside it
        self.head = nn.Linear(4, 4)
        self.head_again = self.head  # shared: must appear once
        self.layer_norm = nn.LayerNorm(4)
        self.group_norm = nn.GroupNorm(2, 4)
        self.query_embed = nn.Embedding(5, 4)
        self.pos = _WithPosTable()
        self.frozen = nn.Linear(4, 4).requires_grad_(False)
        self.logit_scale = nn.Parameter(torch.ones(()))


def _hparams_by_param(groups):
    out = {}
    for group in groups:
        for p in group["params"]:
            assert id(p) not in out, "a parameter is in two groups"
            out[id(p)] = (group["lr"], group["weight_decay"])
    return out


def test_param_groups_lr_and_weight_decay():
    model = _Toy()
    groups = optimizer_param_groups(
        model,
        base_lr=1.0,
        weight_decay=0.05,
        weight_decay_norm=0.0,
        weight_decay_embed=0.01,
        backbone_multiplier=0.1,
    )
    hp = _hparams_by_param(groups)
    expected = {
        model.backbone[0].weight: (0.1, 0.05),
        model.backbone[0].bias: (0.1, 0.05),
        model.backbone[1].weight: (0.1, 0.0),  # BatchNorm in the backbone: lr x 0.1, no decay
        model.backbone[1].bias: (0.1, 0.0),
        model.backbone_neck.weight: (1.0, 0.05),
        model.head.weight: (1.0, 0.05),
        model.head.bias: (1.0, 0.05),
        model.layer_norm.weight: (1.0, 0.0),
        model.layer_norm.bias: (1.0, 0.0),
        model.group_norm.weight: (1.0, 0.0),
        model.query_embed.weight: (1.0, 0.01),
        model.pos.absolute_pos_embed: (1.0, 0.01),
        model.pos.proj.weight: (1.0, 0.05),
        model.logit_scale: (1.0, 0.05),
    }
    for param, hparams in expected.items():
        assert hp[id(param)] == pytest.approx(hparams)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert set(hp) == trainable  # every trainable parameter once, no frozen one
    for frozen in (model.frozen.weight, model.backbone[2].weight):
        assert id(frozen) not in hp
    # Merged by hyper-parameters: one group per distinct (lr, wd) pair.
    assert len(groups) == len(set(expected.values()))


def test_build_optimizer_from_config():
    cfg = get_score_cfg()
    cfg.merge_from_file(os.path.join(REPO, "configs", "Base-SCORE.yaml"))
    model = _Toy()
    optimizer = build_optimizer(cfg, model)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert type(optimizer).__name__ == "FullModelGradientClippingAdamW"  # recipe: full_model, 0.01
    lrs = sorted({g["lr"] for g in optimizer.param_groups})
    assert lrs == pytest.approx([1.25e-6, 1.25e-5])

    cfg.SOLVER.OPTIMIZER = "SGD"
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = False
    optimizer = build_optimizer(cfg, model)
    assert type(optimizer) is torch.optim.SGD
    assert optimizer.param_groups[0]["momentum"] == cfg.SOLVER.MOMENTUM

    cfg.SOLVER.OPTIMIZER = "LAMB"
    with pytest.raises(ValueError, match="SOLVER.OPTIMIZER"):
        build_optimizer(cfg, model)


def test_full_model_clipping_clips_the_global_norm():
    a, b = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2))
    optimizer = with_full_model_gradient_clipping(torch.optim.SGD, clip_value=1.0)([a, b], lr=1.0)
    a.grad, b.grad = torch.tensor([3.0, 0.0]), torch.tensor([0.0, 4.0])  # global norm 5
    optimizer.step()
    # Scaled together by 1/5: per-parameter clipping would give (-1, 0), (0, -1).
    torch.testing.assert_close(a.detach(), torch.tensor([-0.6, 0.0]))
    torch.testing.assert_close(b.detach(), torch.tensor([0.0, -0.8]))


def test_value_clipping_uses_detectron2():
    cfg = get_score_cfg()
    cfg.SOLVER.OPTIMIZER = "SGD"
    cfg.SOLVER.BASE_LR, cfg.SOLVER.MOMENTUM, cfg.SOLVER.WEIGHT_DECAY = 1.0, 0.0, 0.0
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "value"
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 0.5
    model = nn.Linear(2, 1, bias=False)
    nn.init.zeros_(model.weight)
    optimizer = build_optimizer(cfg, model)
    model.weight.grad = torch.tensor([[3.0, -0.25]])
    optimizer.step()
    torch.testing.assert_close(model.weight.detach(), torch.tensor([[-0.5, 0.25]]))


def test_cpu_fallback_turns_amp_off_and_uses_the_cpu(monkeypatch, caplog):
    cfg = get_score_cfg()
    cfg.SOLVER.AMP.ENABLED = True
    cfg.MODEL.DEVICE = "cuda"
    cfg.freeze()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level("WARNING", logger="score.engine.trainer"):
        adapted = adapt_cfg_to_device(cfg)
    assert adapted.SOLVER.AMP.ENABLED is False and adapted.MODEL.DEVICE == "cpu"
    assert adapted.is_frozen()
    assert cfg.SOLVER.AMP.ENABLED is True  # the caller's config is untouched
    assert sum("CUDA is not available" in r.message for r in caplog.records) == 1
    assert adapt_cfg_to_device(adapted) is adapted  # nothing left to change

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert adapt_cfg_to_device(cfg) is cfg


def test_authors_command_line_parses_with_detectron2_parser():
    args = default_argument_parser().parse_args(shlex.split(AUTHORS_EVAL_COMMAND))
    assert args.config_file == "configs/score_isaid_instance.yaml"  # --config abbreviates --config-file
    assert args.eval_only and args.num_gpus == 1 and args.dist_url == "auto"
    cfg = get_score_cfg()
    # Other values than the command line's, so that each assertion below can fail.
    cfg.MODEL.SCORE.GEOMETRIC_ENSEMBLE_ALPHA = cfg.MODEL.SCORE.GEOMETRIC_ENSEMBLE_BETA = 0.9
    cfg.merge_from_list(args.opts)
    assert cfg.OUTPUT_DIR == "out/eval_final/nwpu"
    assert cfg.DATASETS.TEST == ("nwpu_val_instance",)
    assert cfg.MODEL.WEIGHTS == "out/model_final.pth"
    assert cfg.MODEL.SCORE.GEOMETRIC_ENSEMBLE_ALPHA == 0.4
    assert cfg.MODEL.SCORE.GEOMETRIC_ENSEMBLE_BETA == 0.4


def test_train_net_setup_reads_the_authors_command_line(tmp_path, monkeypatch):
    train_net = load_script("train_net.py")
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    command = AUTHORS_EVAL_COMMAND.replace("OUTPUT_DIR out/eval_final/nwpu", f"OUTPUT_DIR {tmp_path / 'o'}")
    cfg = train_net.setup(default_argument_parser().parse_args(shlex.split(command)))
    assert cfg.is_frozen()
    assert cfg.MODEL.META_ARCHITECTURE == "SCORE"
    assert cfg.SOLVER.MAX_ITER == 468300  # from the yaml
    assert cfg.MODEL.SCORE.GEOMETRIC_ENSEMBLE_BETA == 0.4  # from the command line
    assert cfg.SOLVER.AMP.ENABLED is False and cfg.MODEL.DEVICE == "cpu"
    assert (tmp_path / "o" / "config.yaml").exists()  # detectron2's default_setup ran


class _Storage:
    def __init__(self):
        self.scalars = []

    def put_scalars(self, smoothing_hint=True, **kwargs):
        self.scalars.append(kwargs)


class _FakeTrainer:
    def __init__(self, max_iter):
        self.iter, self.max_iter, self.storage = 0, max_iter, _Storage()


def _run_hook(model, max_iter):
    hook = RAISummaryHook(model, period=20)
    hook.trainer = _FakeTrainer(max_iter)
    for it in range(max_iter):
        hook.trainer.iter = it
        hook.after_step()
    return hook.trainer.storage.scalars


def test_rai_summary_hook_logs_every_20_iterations():
    class WithRAI(nn.Module):
        def rai_summary(self):
            return {"rai/iteration": 3, "lambda": torch.tensor(0.25)}

    scalars = _run_hook(WithRAI(), max_iter=50)
    assert len(scalars) == 3  # iterations 20, 40 and the last one
    assert scalars[0] == {"rai/iteration": 3.0, "rai/lambda": 0.25}
    assert _run_hook(nn.Linear(1, 1), max_iter=40) == []


# ---------------------------------------------------------------- Trainer.test with a stand-in model


class _VocabularyRecorder(nn.Module):
    """Stands in for SCORE: records its vocabulary at each forward and predicts one full-image mask."""

    def __init__(self):
        super().__init__()
        self.calls, self.seen_at_forward = [], []
        self.class_names = None

    def set_vocabulary(self, class_names, train_class_names=None):
        self.calls.append((list(class_names), None if train_class_names is None else list(train_class_names)))
        self.class_names = list(class_names)

    def forward(self, batched_inputs):
        self.seen_at_forward.append(tuple(self.class_names))
        outputs = []
        for x in batched_inputs:
            h, w = x["height"], x["width"]
            inst = Instances((h, w))
            inst.pred_masks = torch.ones(1, h, w, dtype=torch.bool)
            inst.pred_boxes = Boxes(torch.tensor([[0.0, 0.0, w, h]]))
            inst.scores = torch.tensor([0.9])
            inst.pred_classes = torch.tensor([0])
            outputs.append({"instances": inst})
        return outputs


def _register_toy(tmp_path, classes):
    """A 2-image COCO dataset whose only object covers each image, of class 0."""
    name = f"score_test_trainer_{uuid.uuid4().hex[:8]}"
    folder = tmp_path / name
    folder.mkdir()
    images, annotations, records = [], [], []
    for i in range(1, 3):
        file_name = str(folder / f"{i}.png")
        Image.fromarray(np.full((24, 32, 3), 60 * i, dtype=np.uint8)).save(file_name)
        images.append({"id": i, "file_name": file_name, "height": 24, "width": 32})
        annotations.append(
            {
                "id": i,
                "image_id": i,
                "category_id": 1,
                "bbox": [0, 0, 32, 24],
                "area": 768.0,
                "iscrowd": 0,
                "segmentation": [[0, 0, 32, 0, 32, 24, 0, 24]],
            }
        )
        records.append({"file_name": file_name, "image_id": i, "height": 24, "width": 32})
    categories = [{"id": k + 1, "name": c} for k, c in enumerate(classes)]
    json_file = folder / "instances.json"
    json_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(
        thing_classes=list(classes),
        json_file=str(json_file),
        evaluator_type="coco",
        thing_dataset_id_to_contiguous_id={k + 1: k for k in range(len(classes))},
    )
    return name


def test_test_switches_vocabulary_per_dataset_and_writes_results(tmp_path):
    train = _register_toy(tmp_path, ["plane", "ship", "storage_tank"])
    first = _register_toy(tmp_path, ["airplane", "ship"])
    second = _register_toy(tmp_path, ["Ship", "harbor", "storage-tank"])
    cfg = get_score_cfg()
    cfg.DATASETS.TRAIN = (train,)
    cfg.DATASETS.TEST = (first, second)
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 24, 32
    cfg.TEST.COCO_EVAL_BACKEND = "pycocotools"
    cfg.freeze()
    assert train_vocabulary(cfg) == ["plane", "ship", "storage_tank"]

    model = _VocabularyRecorder()
    results = Trainer.test(cfg, model)

    train_names = ["plane", "ship", "storage_tank"]
    assert model.calls == [
        (["airplane", "ship"], train_names),
        (["Ship", "harbor", "storage-tank"], train_names),
    ]
    assert model.seen_at_forward == [("airplane", "ship")] * 2 + [("Ship", "harbor", "storage-tank")] * 2
    assert list(results) == [first, second]
    # The stand-in predicts the whole image as class 0: AP 100 for class 0 on both datasets.
    assert results[first]["segm"]["AP-airplane"] == pytest.approx(100.0)
    assert results[second]["segm"]["AP-Ship"] == pytest.approx(100.0)
    # Seen against the training vocabulary: "airplane" is not "plane"; "Ship", "storage-tank" are seen.
    report = json.loads((tmp_path / "out" / "inference" / second / "results.json").read_text())
    assert [e["seen"] for e in report["segm"]["per_class"]] == [True, False, True]
    assert "AP_unseen" in results[first]["segm"] and "AP_seen" in results[first]["segm"]
    for name in (first, second):
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.remove(train)
    MetadataCatalog.remove(train)


def test_training_refuses_a_train_vocabulary_other_than_the_training_classes_before_building(
    tmp_path, monkeypatch
):
    train = _register_toy(tmp_path, ["plane", "ship", "storage_tank"])
    cfg = get_score_cfg()
    cfg.DATASETS.TRAIN = (train,)
    cfg.MODEL.SCORE.TRAIN_VOCABULARY = ["plane", "storage tank", "ship"]
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    cfg.freeze()

    def build_model(cls, cfg):
        raise AssertionError("the model was built before the vocabulary was checked")

    monkeypatch.setattr(Trainer, "build_model", classmethod(build_model))
    with pytest.raises(ValueError, match="at position 1 the vocabulary has 'storage tank', the split 'ship'"):
        Trainer(cfg)
    DatasetCatalog.remove(train)
    MetadataCatalog.remove(train)


def test_evaluation_takes_any_train_vocabulary_for_the_seen_flags(tmp_path):
    train = _register_toy(tmp_path, ["plane", "ship", "storage_tank"])
    test = _register_toy(tmp_path, ["ship", "harbor"])
    cfg = get_score_cfg()
    cfg.DATASETS.TRAIN = (train,)
    cfg.DATASETS.TEST = (test,)
    cfg.MODEL.SCORE.TRAIN_VOCABULARY = ["harbor"]  # not the training split's classes
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 24, 32
    cfg.TEST.COCO_EVAL_BACKEND = "pycocotools"
    cfg.freeze()
    model = _VocabularyRecorder()
    Trainer.test(cfg, model)
    assert model.calls == [(["ship", "harbor"], ["harbor"])]
    report = json.loads((tmp_path / "out" / "inference" / test / "results.json").read_text())
    assert [e["seen"] for e in report["segm"]["per_class"]] == [False, True]
    for name in (train, test):
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
