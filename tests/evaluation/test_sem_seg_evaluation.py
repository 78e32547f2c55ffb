"""The mIoU evaluator against a confusion matrix computed here, and on real NWPU VHR-10 images."""

import json

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from score.data.datasets import register_sem_seg_dataset
from score.data.labels import read_label
from score.evaluation import SemSegMIoUEvaluator, semseg_metrics
from tests.conftest import NWPU_SAMPLE, make_sem_seg_split


def _one_hot(pred: np.ndarray, num_classes: int) -> dict:
    return {
        "sem_seg": torch.nn.functional.one_hot(torch.as_tensor(pred), num_classes).permute(2, 0, 1).float()
    }


def _expected_miou(preds, gts, num_classes, scored):
    """IoU per class from a confusion matrix counted here; classes without ground truth left out."""
    conf = np.zeros((num_classes, num_classes), np.int64)
    for pred, gt in zip(preds, gts):
        keep = gt >= 0
        np.add.at(conf, (pred[keep], gt[keep]), 1)
    ious = []
    for c in range(num_classes):
        tp, gt_c, pred_c = conf[c, c], conf[:, c].sum(), conf[c, :].sum()
        if gt_c > 0 and scored[c]:
            ious.append(tp / (gt_c + pred_c - tp))
    return 100 * float(np.mean(ious)), conf


def test_miou_matches_a_confusion_matrix_with_several_ignore_values(tmp_path):
    # 5 classes with raw values 0..4; raw 0 ("background" as in FloodNet) and 255 ignored.
    records = make_sem_seg_split(
        tmp_path, "_test_sem_eval", 5, ignore_values=(0, 255), sizes=((30, 40), (25, 35), (20, 20)), seed=1
    )
    evaluator = SemSegMIoUEvaluator(
        "_test_sem_eval", distributed=False, output_dir=str(tmp_path / "out"),
        seen_flags=[True, True, False, True, False],
    )  # fmt: skip
    evaluator.reset()
    rng = np.random.default_rng(0)
    preds, gts = [], []
    for record in records:
        raw = read_label(record["sem_seg_file_name"]).astype(np.int64)
        gt = np.where((raw == 0) | (raw == 255), -1, raw)
        pred = rng.integers(0, 5, raw.shape)
        pred[gt == 2] = 2  # class 2 well predicted, so the groups differ
        evaluator.process([{"file_name": record["file_name"]}], [_one_hot(pred, 5)])
        preds.append(pred)
        gts.append(gt)
    results = evaluator.evaluate()["sem_seg"]
    expected, conf = _expected_miou(preds, gts, 5, [False, True, True, True, True])
    assert results["mIoU"] == pytest.approx(expected)
    tp = np.diag(conf)[1:]
    assert results["pACC"] == pytest.approx(100 * tp.sum() / conf[:, 1:].sum())
    assert np.isnan(results["IoU-class a0"])  # raw value 0 is ignored: class 0 is never scored
    iou = {c: 100 * conf[c, c] / (conf[:, c].sum() + conf[c, :].sum() - conf[c, c]) for c in range(1, 5)}
    assert results["mIoU_seen"] == pytest.approx((iou[1] + iou[3]) / 2)
    assert results["mIoU_unseen"] == pytest.approx((iou[2] + iou[4]) / 2)
    report = json.loads((tmp_path / "out" / "results.json").read_text())
    assert report["num_images"] == 3
    assert report["sem_seg"]["seen"]["num_classes"] == 2 and report["sem_seg"]["unseen"]["num_classes"] == 2
    assert report["sem_seg"]["per_class"][0]["scored"] is False


def test_ground_truth_as_prediction_scores_100_and_an_unknown_value_is_an_error(tmp_path):
    records = make_sem_seg_split(tmp_path, "_test_sem_gt", 4, ignore_values=(7, 255), sizes=((16, 16),) * 2)
    evaluator = SemSegMIoUEvaluator("_test_sem_gt", distributed=False)
    evaluator.reset()
    for record in records:
        raw = read_label(record["sem_seg_file_name"]).astype(np.int64)
        pred = np.where(raw > 3, 0, raw)  # anything at ignored pixels
        evaluator.process([{"file_name": record["file_name"]}], [_one_hot(pred, 4)])
    results = evaluator.evaluate()["sem_seg"]
    assert results["mIoU"] == 100.0 and results["pACC"] == 100.0 and results["fwIoU"] == pytest.approx(100.0)
    bad = records[0]["sem_seg_file_name"]
    Image.fromarray(np.full((16, 16), 9, np.uint8)).save(bad)
    with pytest.raises(ValueError, match=r"img0\.png.*value\(s\) \[9\]"):
        evaluator.process([{"file_name": records[0]["file_name"]}], [_one_hot(np.zeros((16, 16), int), 4)])


def test_metrics_leave_out_classes_without_ground_truth():
    # Class 2 is predicted but has no ground truth: today's detectron2 leaves it out of mIoU.
    conf = np.zeros((4, 4), np.int64)
    conf[0, 0], conf[1, 1], conf[2, 0], conf[1, 0] = 6, 4, 2, 2
    metrics = semseg_metrics(conf, ["a", "b", "c"])
    assert metrics["mIoU"] == pytest.approx(100 * (6 / 10 + 4 / 6) / 2)
    assert np.isnan(metrics["per_class"][2]["IoU"])


def _rasterise_nwpu(tmp_path):
    """The NWPU VHR-10 sample as an 11-label map per image: 0 background, 1..10 the classes."""
    from pycocotools.coco import COCO

    coco = COCO(str(NWPU_SAMPLE / "instances.json"))
    classes = ["background"] + [c["name"] for c in coco.loadCats(sorted(coco.getCatIds()))]
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    for info in coco.loadImgs(sorted(coco.getImgIds())):
        label = np.zeros((info["height"], info["width"]), np.uint8)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=info["id"], iscrowd=False)):
            label[coco.annToMask(ann) > 0] = ann["category_id"]
        stem = info["file_name"].rsplit(".", 1)[0]
        Image.fromarray(label).save(labels / f"{stem}.png")
        (images / info["file_name"]).symlink_to(NWPU_SAMPLE / "images" / info["file_name"])
    ext = coco.loadImgs(coco.getImgIds()[0])[0]["file_name"].rsplit(".", 1)[1]
    DatasetCatalog.pop("_test_nwpu_sem", None)
    MetadataCatalog.pop("_test_nwpu_sem", None)
    register_sem_seg_dataset("_test_nwpu_sem", str(images), str(labels), classes, image_ext=ext)
    return DatasetCatalog.get("_test_nwpu_sem"), classes


@pytest.mark.skipif(not NWPU_SAMPLE.is_dir(), reason="the NWPU VHR-10 sample is not beside the project")
def test_real_nwpu_images_ground_truth_scores_100_and_a_tiny_model_gives_finite_miou(tmp_path):
    from detectron2.modeling import build_model

    from score.data.mappers import build_test_mapper
    from tests.conftest import tiny_cfg

    records, classes = _rasterise_nwpu(tmp_path)
    assert len(records) == 24 and len(classes) == 11
    evaluator = SemSegMIoUEvaluator("_test_nwpu_sem", distributed=False)
    evaluator.reset()
    for record in records:
        gt = read_label(record["sem_seg_file_name"]).astype(np.int64)
        assert (gt.shape[0], gt.shape[1]) == (record["height"], record["width"])
        evaluator.process([record], [_one_hot(gt, 11)])
    results = evaluator.evaluate()["sem_seg"]
    assert results["mIoU"] == 100.0
    assert all(results[f"IoU-{name}"] == 100.0 for name in classes)

    torch.manual_seed(0)
    cfg = tiny_cfg(
        "MODEL.MASK_FORMER.TEST.SEMANTIC_ON", "True",
        "MODEL.MASK_FORMER.TEST.INSTANCE_ON", "False",
        "DATASETS.TEST", "('_test_nwpu_sem',)",
    )  # fmt: skip
    model = build_model(cfg).eval()
    mapper = build_test_mapper(cfg)
    evaluator.reset()
    with torch.no_grad():
        for record in records[:4]:
            inputs = [mapper(record)]
            evaluator.process(inputs, model(inputs))
    results = evaluator.evaluate()["sem_seg"]
    assert np.isfinite(results["mIoU"]) and 0.0 <= results["mIoU"] < 100.0
    assert any(np.isfinite(results[f"IoU-{name}"]) for name in classes)


def test_trainer_builds_the_evaluator_by_evaluator_type_with_seen_flags(tmp_path):
    from score.engine import Trainer
    from tests.conftest import tiny_cfg

    make_sem_seg_split(tmp_path, "_test_sem_trainer", 3)
    cfg = tiny_cfg("OUTPUT_DIR", str(tmp_path), "MODEL.SCORE.TRAIN_VOCABULARY", "['class b1', 'tree']")
    evaluator = Trainer.build_evaluator(cfg, "_test_sem_trainer")
    assert isinstance(evaluator, SemSegMIoUEvaluator)
    assert evaluator._seen_flags == [False, True, False]
    assert evaluator._output_dir == str(tmp_path / "inference" / "_test_sem_trainer")
