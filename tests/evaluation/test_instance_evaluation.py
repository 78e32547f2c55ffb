"""InstanceSegEvaluator: COCO mask AP at 300 detections, per-class, seen / unseen, JSON report."""

import json
import uuid

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch

import score  # noqa: F401  (detectron2 compatibility shims before detectron2.evaluation)

# isort: split
from detectron2.data import MetadataCatalog
from detectron2.evaluation.coco_evaluation import COCOevalMaxDets
from detectron2.structures import Boxes, Instances
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from score.data.datasets import ISAID_CLASSES, NWPU_CLASSES
from score.evaluation import InstanceSegEvaluator, evaluate_coco
from score.vocabulary import seen_flags

SIZE = 64
# Dataset category ids are not contiguous: the evaluator must map them back.
CAT_IDS = [10 * (k + 1) for k in range(len(NWPU_CLASSES))]
# DATASETS.md: trained on iSAID, NWPU's airplane and vehicle are unseen.
NWPU_SEEN_FROM_ISAID = [False, True, True, True, True, True, True, True, True, False]


def _rect_mask(x0, y0, x1, y1):
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def _rle(mask):
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


@pytest.fixture
def dataset(tmp_path):
    """12 images of 64 x 64 with 3 to 5 rectangles each; every NWPU class present."""
    rng = np.random.default_rng(0)
    images, annotations, gt = [], [], {}
    for image_id in range(1, 13):
        images.append({"id": image_id, "width": SIZE, "height": SIZE, "file_name": f"{image_id}.png"})
        gt[image_id] = []
        for j in range(int(rng.integers(3, 6))):
            x0, y0 = 4 + 20 * (j % 3), 4 + 20 * (j // 3)
            w, h = (int(v) for v in rng.integers(8, 16, 2))
            mask = _rect_mask(x0, y0, x0 + w, y0 + h)
            k = (image_id * 5 + j) % len(NWPU_CLASSES)
            rle = _rle(mask)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": CAT_IDS[k],
                    "segmentation": rle,
                    "area": float(mask.sum()),
                    "bbox": [x0, y0, w, h],
                    "iscrowd": 0,
                }
            )
            gt[image_id].append((mask, k))
    categories = [{"id": c, "name": n} for c, n in zip(CAT_IDS, NWPU_CLASSES)]
    json_file = tmp_path / "instances.json"
    json_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    name = f"score_test_eval_{uuid.uuid4().hex[:8]}"
    MetadataCatalog.get(name).set(
        json_file=str(json_file),
        thing_classes=list(NWPU_CLASSES),
        thing_dataset_id_to_contiguous_id={c: k for k, c in enumerate(CAT_IDS)},
        evaluator_type="coco",
    )
    yield name, gt, str(json_file)
    MetadataCatalog.remove(name)


def _instances(detections):
    """[(mask (H, W) bool, contiguous class, score)] -> Instances as the model returns them."""
    inst = Instances((SIZE, SIZE))
    masks = (
        torch.as_tensor(np.stack([d[0] for d in detections])) if detections else torch.zeros(0, SIZE, SIZE)
    )
    inst.pred_masks = masks.bool()
    inst.pred_boxes = Boxes(torch.zeros(len(detections), 4))
    inst.scores = torch.tensor([float(d[2]) for d in detections])
    inst.pred_classes = torch.tensor([int(d[1]) for d in detections], dtype=torch.int64)
    return inst


def _run(name, detections_per_image, tmp_path=None, **kwargs):
    evaluator = InstanceSegEvaluator(
        name, distributed=False, output_dir=None if tmp_path is None else str(tmp_path), **kwargs
    )
    evaluator.reset()
    for image_id, detections in detections_per_image.items():
        evaluator.process([{"image_id": image_id}], [{"instances": _instances(detections)}])
    return evaluator.evaluate()


def _perturbed(gt, seed=1):
    """Eroded copies of the ground truth with random scores, some relabelled or shifted, plus false positives.

    Classes get different APs: the relabelling and the shifts hit some classes more than others.
    """
    rng = np.random.default_rng(seed)
    out = {}
    for image_id, objects in gt.items():
        dets = []
        for mask, k in objects:
            eroded = mask.copy()
            ys, xs = np.nonzero(mask)
            eroded[ys.min(), :] = False  # erode one row and one column
            eroded[:, xs.min()] = False
            label = (k + 1) % len(NWPU_CLASSES) if (k % 3 == 0 and rng.random() < 0.5) else k
            if k % 4 == 1:
                eroded = np.roll(eroded, int(rng.integers(2, 6)), axis=1)
            dets.append((eroded, label, rng.random()))
        for _ in range(int(rng.integers(1, 4))):
            x0, y0 = (int(v) for v in rng.integers(0, SIZE - 12, 2))
            dets.append((_rect_mask(x0, y0, x0 + 10, y0 + 10), int(rng.integers(0, 10)), rng.random()))
        out[image_id] = dets
    return out


def _coco_results(detections_per_image):
    return [
        {"image_id": i, "category_id": CAT_IDS[k], "segmentation": _rle(m), "score": float(s)}
        for i, dets in detections_per_image.items()
        for m, k, s in dets
    ]


def _direct_pycocotools(json_file, detections_per_image, max_dets=100):
    """Reference AP / AP50 / AP75 and per-class AP straight from pycocotools, in percent."""
    coco_gt = COCO(json_file)
    coco_eval = (COCOeval if max_dets == 100 else COCOevalMaxDets)(
        coco_gt, coco_gt.loadRes(_coco_results(detections_per_image)), "segm"
    )
    coco_eval.params.maxDets = [1, 10, max_dets]
    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()
    precision = coco_eval.eval["precision"][:, :, :, 0, -1]
    per_class = [100 * precision[:, :, k][precision[:, :, k] > -1].mean() for k in range(len(CAT_IDS))]
    return 100 * np.asarray(coco_eval.stats[:6]), per_class


@pytest.mark.parametrize("backend", ["pycocotools", "faster_coco_eval"])
def test_ground_truth_as_predictions_gives_ap_100(dataset, backend):
    name, gt, _ = dataset
    preds = {i: [(m, k, 0.9) for m, k in objects] for i, objects in gt.items()}
    segm = _run(name, preds, backend=backend)["segm"]
    for metric in ("AP", "AP50", "AP75"):
        assert segm[metric] == pytest.approx(100.0)
    for class_name in NWPU_CLASSES:
        assert segm["AP-" + class_name] == pytest.approx(100.0)


def test_perturbed_predictions_match_direct_pycocotools(dataset):
    name, gt, json_file = dataset
    preds = _perturbed(gt)
    segm = _run(name, preds, backend="pycocotools")["segm"]
    stats, per_class = _direct_pycocotools(json_file, preds)
    ours = [segm[m] for m in ("AP", "AP50", "AP75", "APs", "APm", "APl")]
    np.testing.assert_allclose(np.nan_to_num(ours, nan=-100), stats, atol=1e-9)
    np.testing.assert_allclose([segm["AP-" + n] for n in NWPU_CLASSES], per_class, atol=1e-9)
    assert 20 < segm["AP"] < 95  # the perturbation really moved AP
    assert len({round(segm["AP-" + n], 6) for n in NWPU_CLASSES}) > 3  # and differently per class


def test_ap_counts_up_to_300_detections_per_image(dataset):
    """120 confident false positives of the same class push each true positive to rank 121."""
    name, gt, json_file = dataset
    far = _rect_mask(60, 60, 64, 64)
    preds = {
        i: [(far, k, 0.99) for _, k in objects for _ in range(120)] + [(m, k, 0.5) for m, k in objects]
        for i, objects in gt.items()
    }
    segm = _run(name, preds, backend="pycocotools", max_dets_per_image=300)["segm"]
    stats300, _ = _direct_pycocotools(json_file, preds, max_dets=300)
    stats100, _ = _direct_pycocotools(json_file, preds, max_dets=100)
    assert segm["AP"] == pytest.approx(stats300[0], abs=1e-9)
    assert stats100[0] == 0 < stats300[0]


def test_faster_coco_eval_matches_pycocotools(dataset):
    name, gt, _ = dataset
    preds = _perturbed(gt, seed=3)
    reference = _run(name, preds, backend="pycocotools", seen_flags=NWPU_SEEN_FROM_ISAID)["segm"]
    fast = _run(name, preds, backend="faster_coco_eval", seen_flags=NWPU_SEEN_FROM_ISAID)["segm"]
    assert reference.keys() == fast.keys()
    for key, value in reference.items():
        assert fast[key] == pytest.approx(value, abs=1e-3, nan_ok=True), key


def test_seen_unseen_averages_isaid_to_nwpu(dataset, tmp_path):
    assert seen_flags(list(NWPU_CLASSES), list(ISAID_CLASSES)) == NWPU_SEEN_FROM_ISAID

    name, gt, _ = dataset
    preds = _perturbed(gt, seed=5)
    segm = _run(name, preds, tmp_path, backend="pycocotools", seen_flags=NWPU_SEEN_FROM_ISAID)["segm"]
    per_class = np.array([segm["AP-" + n] for n in NWPU_CLASSES])
    seen = np.array(NWPU_SEEN_FROM_ISAID)
    assert segm["AP_seen"] == pytest.approx(per_class[seen].mean(), abs=1e-9)
    assert segm["AP_unseen"] == pytest.approx((segm["AP-airplane"] + segm["AP-vehicle"]) / 2, abs=1e-9)
    assert segm["AP_seen"] != pytest.approx(segm["AP_unseen"])

    report = json.loads((tmp_path / "results.json").read_text())
    assert report["dataset"] == name and report["max_dets_per_image"] == 300
    assert report["segm"]["AP"] == pytest.approx(segm["AP"])
    assert report["segm"]["unseen"]["classes"] == ["airplane", "vehicle"]
    assert report["segm"]["seen"]["AP"] == pytest.approx(segm["AP_seen"])
    by_name = {e["name"]: e for e in report["segm"]["per_class"]}
    assert by_name["airplane"]["seen"] is False and by_name["ship"]["seen"] is True
    # Per-class AP50 / AP75 are in the report: AP50 >= AP75 for every class.
    assert all(e["AP50"] >= e["AP75"] for e in report["segm"]["per_class"])
    assert (tmp_path / "coco_instances_results.json").exists()


def test_all_seen_reports_no_unseen_group(dataset):
    name, gt, _ = dataset
    segm = _run(name, _perturbed(gt), backend="pycocotools", seen_flags=[True] * 10)["segm"]
    assert "AP_seen" in segm and "AP_unseen" not in segm
    assert segm["AP_seen"] == pytest.approx(segm["AP"], abs=1e-9)  # every class has ground truth


def test_class_without_ground_truth_is_left_out_of_the_averages(dataset, tmp_path):
    """Evaluated on one image: the classes absent from it get NaN AP (null in JSON), not 0."""
    name, gt, _ = dataset
    preds = {i: [(m, k, 0.8) for m, k in objects] for i, objects in gt.items()}
    evaluator = InstanceSegEvaluator(
        name,
        distributed=False,
        output_dir=str(tmp_path),
        seen_flags=NWPU_SEEN_FROM_ISAID,
        backend="pycocotools",
    )
    evaluator.reset()
    for image_id, dets in preds.items():
        evaluator.process([{"image_id": image_id}], [{"instances": _instances(dets)}])
    image_id = next(i for i, objects in gt.items() if any(k == 0 for _, k in objects))  # has an airplane
    present = {NWPU_CLASSES[k] for _, k in gt[image_id]}
    assert "vehicle" not in present and len(present) < len(NWPU_CLASSES)

    segm = evaluator.evaluate(img_ids=[image_id])["segm"]
    for class_name in NWPU_CLASSES:
        assert (
            (segm["AP-" + class_name] == pytest.approx(100.0))
            if class_name in present
            else np.isnan(segm["AP-" + class_name])
        )
    assert segm["AP_unseen"] == pytest.approx(100.0)  # airplane only; vehicle (NaN) is left out
    report = json.loads((tmp_path / "results.json").read_text())
    assert {e["name"] for e in report["segm"]["per_class"] if e["AP"] is None} == set(NWPU_CLASSES) - present


def test_no_detection_gives_ap_0_and_a_report(dataset, tmp_path):
    name, gt, _ = dataset
    segm = _run(name, {i: [] for i in gt}, tmp_path, backend="pycocotools")["segm"]
    assert segm["AP"] == 0.0 and segm["AP50"] == 0.0
    assert all(segm["AP-" + c] == 0.0 for c in NWPU_CLASSES)
    assert np.isnan(segm["APl"])  # no ground truth of 96 x 96 px or more in 64 x 64 images
    report = json.loads((tmp_path / "results.json").read_text())
    assert report["segm"]["AP"] == 0.0


def test_bad_arguments_are_rejected(dataset):
    name, _, _ = dataset
    with pytest.raises(ValueError, match="backend"):
        InstanceSegEvaluator(name, backend="lvis")
    with pytest.raises(ValueError, match="3 seen flags for the 10 classes"):
        InstanceSegEvaluator(name, seen_flags=[True, False, True])
    if not score.compat.HAS_D2_C:
        coco = COCO()
        coco.dataset = {"images": [{"id": 1, "width": 4, "height": 4}], "annotations": [], "categories": []}
        coco.createIndex()
        result = {"image_id": 1, "category_id": 1, "segmentation": _rle(np.ones((4, 4), bool)), "score": 1.0}
        with pytest.raises(RuntimeError, match="C\\+\\+ extension"):
            evaluate_coco(coco, [result], backend="detectron2")


def test_out_of_range_class_is_an_error(dataset):
    name, gt, _ = dataset
    image_id, objects = next(iter(gt.items()))
    with pytest.raises(ValueError, match="has class 10"):
        _run(name, {image_id: [(objects[0][0], 10, 0.5)]}, backend="pycocotools")


def test_test_set_without_ground_truth_is_an_error(dataset, tmp_path):
    name, gt, json_file = dataset
    coco = json.loads(open(json_file).read())
    coco["annotations"] = []
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps(coco))
    other = name + "_no_gt"
    values = {k: v for k, v in MetadataCatalog.get(name).as_dict().items() if k != "name"}
    MetadataCatalog.get(other).set(**dict(values, json_file=str(empty)))
    try:
        with pytest.raises(ValueError, match="no ground-truth annotation"):
            _run(other, {i: [] for i in gt}, backend="pycocotools")
    finally:
        MetadataCatalog.remove(other)


@pytest.mark.parametrize("backend", ["pycocotools", "faster_coco_eval"])
def test_annotation_id_0_is_renumbered_so_ground_truth_scores_100(dataset, tmp_path, backend):
    name, gt, json_file = dataset
    coco = json.loads(open(json_file).read())
    coco["annotations"][0]["id"] = 0
    coco["annotations"][2]["id"] = coco["annotations"][1]["id"]
    renamed = tmp_path / "id0.json"
    renamed.write_text(json.dumps(coco))
    other = name + "_id0"
    values = {k: v for k, v in MetadataCatalog.get(name).as_dict().items() if k != "name"}
    MetadataCatalog.get(other).set(**dict(values, json_file=str(renamed)))
    preds = {i: [(m, k, 0.9) for m, k in objects] for i, objects in gt.items()}
    try:
        segm = _run(other, preds, backend=backend)["segm"]
    finally:
        MetadataCatalog.remove(other)
    assert segm["AP"] == pytest.approx(100.0)
