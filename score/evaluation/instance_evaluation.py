"""COCO instance-segmentation evaluation with seen / unseen class averages.

The protocol of DATASETS.md ("Evaluation protocol"): COCO mask AP with
pycocotools semantics and up to 300 detections per image (maxDets 1, 10, 300),
reported as AP, AP50, AP75, APs, APm, APl, per-class AP, and here also AP,
AP50 and AP75 averaged over the target's seen and unseen classes (a class is
seen when its normalised name or a synonym is in the training vocabulary).

All numbers are read from the accumulated precision array of COCOeval
(T IoU thresholds x R recall points x K classes x A area ranges x M maxDets),
so they do not depend on the backend's ``summarize`` (pycocotools' own
``summarize`` ignores a custom maxDets for AP). Backends that fill that array:

* "pycocotools": the official COCO API, the reference;
* "faster_coco_eval": faster-coco-eval's ``COCOeval_faster`` (C++), same
  matching rules; parity with pycocotools is tested;
* "detectron2": detectron2's ``COCOeval_opt`` (C++), only where detectron2 was
  built with its extension (``score.compat.HAS_D2_C``).

``tools/bench/benchmark_coco_eval.py`` times the first two; ``DEFAULT_BACKEND`` is
the faster one by that measure (docs/TRAINING.md has the figures).
"""

from __future__ import annotations

import contextlib
import copy
import io
import itertools
import json
import logging
import math
import os
from collections import OrderedDict
from typing import Any, Optional, Sequence

import numpy as np
from detectron2.evaluation import COCOEvaluator
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import create_small_table
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tabulate import tabulate

from score import compat

__all__ = [
    "BACKENDS",
    "DEFAULT_BACKEND",
    "InstanceSegEvaluator",
    "evaluate_coco",
    "summarize_precision",
]

logger = logging.getLogger(__name__)

BACKENDS = ("pycocotools", "faster_coco_eval", "detectron2")
# tools/bench/benchmark_coco_eval.py (500 images x 300 masks of 512 x 512, 2 CPUs):
# faster-coco-eval 9.3 s, pycocotools 15.2 s, identical AP (docs/TRAINING.md).
DEFAULT_BACKEND = "faster_coco_eval"

# Metrics over all classes, as (name, IoU threshold or None for 0.50:0.95, area range label).
_SUMMARY_METRICS = (
    ("AP", None, "all"),
    ("AP50", 0.5, "all"),
    ("AP75", 0.75, "all"),
    ("APs", None, "small"),
    ("APm", None, "medium"),
    ("APl", None, "large"),
)
# Metrics reported per class and averaged over seen / unseen classes.
_CLASS_METRICS = (("AP", None), ("AP50", 0.5), ("AP75", 0.75))


def evaluate_coco(
    coco_gt: COCO,
    coco_results: list[dict],
    *,
    iou_type: str = "segm",
    max_dets_per_image: int = 300,
    backend: str = DEFAULT_BACKEND,
    img_ids: Optional[Sequence[int]] = None,
) -> Any:
    """Run COCO ``evaluate`` and ``accumulate`` on detections in COCO result format.

    Args:
        coco_gt: ground truth (pycocotools ``COCO``).
        coco_results: detections: dicts with image_id, category_id (dataset ids),
            score and "segmentation" (RLE) for "segm" or "bbox" (XYWH) for "bbox".
            Not modified.
        iou_type: "segm" or "bbox".
        max_dets_per_image: maxDets is (1, 10, max_dets_per_image).
        backend: one of ``BACKENDS``.
        img_ids: restrict evaluation to these images (default: all of ``coco_gt``).

    Returns:
        The COCOeval object of the backend; ``.eval["precision"]`` is
        (T, R, K, A, M) and ``.params`` holds catIds, iouThrs, areaRngLbl, maxDets.
    """
    if backend not in BACKENDS:
        raise ValueError(f"Unknown COCO evaluation backend {backend!r}; choose one of {BACKENDS}")
    if not coco_results:
        raise ValueError("evaluate_coco needs at least one detection (COCO's loadRes fails on none)")
    coco_results = copy.deepcopy(coco_results)  # loadRes adds fields to the dicts it gets
    if iou_type == "segm":
        # With a "bbox" field, loadRes takes the box area as the instance area
        # for APs/APm/APl; without it, the mask area, as for the ground truth.
        for result in coco_results:
            result.pop("bbox", None)

    if backend == "faster_coco_eval":
        from faster_coco_eval import COCO as FasterCOCO
        from faster_coco_eval import COCOeval_faster

        gt = FasterCOCO(copy.deepcopy(coco_gt.dataset), print_function=logger.debug)
        coco_eval = COCOeval_faster(gt, gt.loadRes(coco_results), iou_type, print_function=logger.debug)
    else:
        if backend == "detectron2":
            if not compat.HAS_D2_C:
                raise RuntimeError(
                    "COCO evaluation backend 'detectron2' needs detectron2's C++ extension, which is "
                    "not installed; use 'pycocotools' or 'faster_coco_eval'"
                )
            from detectron2.evaluation.fast_eval_api import COCOeval_opt as eval_cls
        else:
            eval_cls = COCOeval
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
            coco_eval = eval_cls(coco_gt, coco_gt.loadRes(coco_results), iou_type)

    coco_eval.params.maxDets = [1, 10, max_dets_per_image]
    if img_ids is not None:
        coco_eval.params.imgIds = list(img_ids)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_eval.evaluate()
        coco_eval.accumulate()
    return coco_eval


def _no_detection_eval(coco_gt: COCO, iou_type: str, img_ids: Optional[Sequence[int]]) -> Any:
    """What an accumulated COCOeval holds when nothing was detected: precision 0, -1 without ground truth.

    pycocotools cannot load an empty result list; with no detection every
    class that has (non-crowd) ground truth in an area range has precision 0
    there, so its AP is 0 rather than undefined.
    """
    from types import SimpleNamespace

    from pycocotools.cocoeval import Params

    params = Params(iouType=iou_type)
    params.catIds = sorted(coco_gt.getCatIds())
    ids = set(coco_gt.getImgIds() if img_ids is None else img_ids)
    precision = -np.ones(
        (
            len(params.iouThrs),
            len(params.recThrs),
            len(params.catIds),
            len(params.areaRng),
            len(params.maxDets),
        )
    )
    for ann in coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=list(ids))):
        if ann.get("iscrowd", 0):
            continue
        k = params.catIds.index(ann["category_id"])
        for a, (lo, hi) in enumerate(params.areaRng):
            if lo <= ann["area"] <= hi:
                precision[:, :, k, a, :] = 0.0
    return SimpleNamespace(params=params, eval={"precision": precision})


def _mean_valid(precision: np.ndarray) -> float:
    """Mean of the entries > -1 (-1 marks a class without ground truth), in percent; NaN if none."""
    valid = precision[precision > -1]
    return float(np.mean(valid) * 100) if valid.size else float("nan")


def summarize_precision(
    coco_eval: Any,
    class_names: Sequence[str],
    seen_flags: Optional[Sequence[bool]] = None,
) -> dict[str, Any]:
    """Metrics from an accumulated COCOeval at its largest maxDets.

    Args:
        coco_eval: the result of :func:`evaluate_coco`.
        class_names: K names, in the order of ``coco_eval.params.catIds``
            (sorted dataset ids, which is detectron2's contiguous-id order).
        seen_flags: K booleans aligned with ``class_names``, or None.

    Returns:
        {"AP", "AP50", "AP75", "APs", "APm", "APl": float,
         "per_class": [{"name", "AP", "AP50", "AP75"[, "seen"]}] (K entries),
         "seen"/"unseen": {"AP", "AP50", "AP75", "classes"}}, in percent.
        A group is absent when it has no class; a class without ground
        truth in the split has NaN AP and is left out of every average.
    """
    params = coco_eval.params
    precision = coco_eval.eval["precision"]  # (T, R, K, A, M)
    if precision.shape[2] != len(class_names):
        raise ValueError(
            f"COCOeval has {precision.shape[2]} categories but {len(class_names)} class names were given"
        )
    if seen_flags is not None and len(seen_flags) != len(class_names):
        raise ValueError(f"{len(seen_flags)} seen flags for {len(class_names)} classes")

    def select(iou: Optional[float], area: str) -> np.ndarray:
        """(T', R, K) precision at the largest maxDets for one IoU threshold (or all) and area range."""
        p = precision[..., list(params.areaRngLbl).index(area), -1]
        if iou is not None:
            p = p[np.flatnonzero(np.isclose(params.iouThrs, iou))]
        return p

    results: dict[str, Any] = {name: _mean_valid(select(iou, area)) for name, iou, area in _SUMMARY_METRICS}

    per_class = []
    for k, name in enumerate(class_names):
        entry: dict[str, Any] = {"name": name}
        entry.update({metric: _mean_valid(select(iou, "all")[:, :, k]) for metric, iou in _CLASS_METRICS})
        if seen_flags is not None:
            entry["seen"] = bool(seen_flags[k])
        per_class.append(entry)
    results["per_class"] = per_class

    if seen_flags is not None:
        for group, flag in (("seen", True), ("unseen", False)):
            members = [entry for entry in per_class if entry["seen"] == flag]
            if not members:
                continue
            averages: dict[str, Any] = {}
            for metric, _ in _CLASS_METRICS:
                values = [entry[metric] for entry in members if not math.isnan(entry[metric])]
                averages[metric] = float(np.mean(values)) if values else float("nan")
            averages["classes"] = [entry["name"] for entry in members]
            results[group] = averages
    return results


def _json_safe(value: Any) -> Any:
    """NaN (no ground truth, or no detection) becomes null: strict JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


class InstanceSegEvaluator(COCOEvaluator):
    """COCO instance-segmentation evaluator with seen / unseen averages and a JSON report.

    It collects predictions as detectron2's ``COCOEvaluator`` does (RLE masks,
    gathered to the main process), evaluates them with the chosen backend at
    ``max_dets_per_image`` detections per image and returns, per task,
    detectron2's flat metrics dict: AP, AP50, AP75, APs, APm, APl, "AP-<class>"
    for each class and "AP_seen", "AP50_seen", "AP75_seen", "AP_unseen", ...
    With an ``output_dir`` the full report (per-class AP50/AP75 too) goes to
    ``<output_dir>/results.json``.
    """

    def __init__(
        self,
        dataset_name: str,
        tasks: Sequence[str] = ("segm",),
        distributed: bool = True,
        output_dir: Optional[str] = None,
        *,
        max_dets_per_image: int = 300,
        seen_flags: Optional[Sequence[bool]] = None,
        backend: str = DEFAULT_BACKEND,
    ):
        """
        Args:
            dataset_name: a registered dataset with ``json_file`` and ``thing_classes`` metadata.
            tasks: COCO iou types to evaluate ("segm", "bbox").
            distributed: gather predictions from all ranks and evaluate on the main one.
            output_dir: folder for the predictions and ``results.json``; None writes nothing.
            max_dets_per_image: detections per image counted by AP (maxDets 1, 10, this).
            seen_flags: one boolean per ``thing_classes`` entry (True = seen in
                training), or None to skip the seen / unseen averages.
            backend: one of ``BACKENDS``.
        """
        if backend not in BACKENDS:
            raise ValueError(f"Unknown COCO evaluation backend {backend!r}; choose one of {BACKENDS}")
        super().__init__(
            dataset_name,
            tasks=tuple(tasks),
            distributed=distributed,
            output_dir=output_dir,
            max_dets_per_image=max_dets_per_image,
            use_fast_impl=backend == "detectron2",
        )
        self._dataset_name = dataset_name
        self._backend = backend
        class_names = self._metadata.get("thing_classes")
        if seen_flags is not None and len(seen_flags) != len(class_names):
            raise ValueError(
                f"{len(seen_flags)} seen flags for the {len(class_names)} classes of {dataset_name}"
            )
        self._seen_flags = None if seen_flags is None else [bool(f) for f in seen_flags]
        self._renumber_annotation_ids()

    def _renumber_annotation_ids(self) -> None:
        """Annotation ids 1..N when the file has an id 0 or a repeated id (warned).

        COCO matching marks a ground truth as taken by its id, and id 0 reads as
        "unmatched": a prediction can never claim it (the public NWPU VHR-10 val
        file has one); repeated ids collide the same way.
        """
        if not self._do_evaluation:
            return
        anns = self._coco_api.dataset.get("annotations", [])
        ids = [a.get("id") for a in anns]
        if 0 not in ids and len(set(ids)) == len(ids):
            return
        self._logger.warning(
            "%s: annotation ids include 0 or repeats (%d ids, %d distinct); renumbered 1..%d for matching",
            self._dataset_name,
            len(ids),
            len(set(ids)),
            len(ids),
        )
        for new_id, ann in enumerate(anns, start=1):
            ann["id"] = new_id
        with contextlib.redirect_stdout(io.StringIO()):
            self._coco_api.createIndex()

    def _eval_predictions(self, predictions: list[dict], img_ids: Optional[Sequence[int]] = None) -> None:
        """Fill ``self._results`` with one metrics dict per task and write ``results.json``."""
        coco_results = list(itertools.chain(*[x["instances"] for x in predictions]))
        tasks = self._tasks or self._tasks_from_predictions(coco_results)
        self._to_dataset_ids(coco_results)

        if self._output_dir:
            file_path = os.path.join(self._output_dir, "coco_instances_results.json")
            self._logger.info("Saving results to %s", file_path)
            with PathManager.open(file_path, "w") as f:
                f.write(json.dumps(coco_results))
        if not self._do_evaluation:
            self._logger.info("Annotations are not available for evaluation.")
            return

        if not self._coco_api.getAnnIds():
            raise ValueError(
                f"{self._dataset_name}: the annotation file {self._metadata.get('json_file', None)} has no "
                "ground-truth annotation; AP is undefined (predict with tools/predict.py instead)"
            )
        report: dict[str, Any] = {
            "dataset": self._dataset_name,
            "num_images": len(predictions),
            "max_dets_per_image": self._max_dets_per_image[-1],
            "backend": self._backend,
        }
        for task in sorted(tasks):
            if coco_results:
                self._logger.info(
                    "Evaluating %s with %s (maxDets %s) ...", task, self._backend, self._max_dets_per_image
                )
                coco_eval = evaluate_coco(
                    self._coco_api,
                    coco_results,
                    iou_type=task,
                    max_dets_per_image=self._max_dets_per_image[-1],
                    backend=self._backend,
                    img_ids=img_ids,
                )
                summary = summarize_precision(coco_eval, self._class_names(coco_eval), self._seen_flags)
            else:
                self._logger.warning(
                    "No detections on %s: %s AP 0 for every class with ground truth", self._dataset_name, task
                )
                coco_eval = _no_detection_eval(self._coco_api, task, img_ids)
                summary = summarize_precision(coco_eval, self._class_names(coco_eval), self._seen_flags)
            self._log_summary(task, summary)
            report[task] = summary
            self._results[task] = self._flat_metrics(summary)

        if self._output_dir:
            PathManager.mkdirs(self._output_dir)
            file_path = os.path.join(self._output_dir, "results.json")
            with PathManager.open(file_path, "w") as f:
                json.dump(_json_safe(report), f, indent=2)
            self._logger.info("Wrote %s", file_path)

    def _to_dataset_ids(self, coco_results: list[dict]) -> None:
        """Contiguous class ids (0..K-1) of the model to the dataset's category ids, in place."""
        mapping = self._metadata.get("thing_dataset_id_to_contiguous_id")
        if mapping is None:
            return
        reverse = {v: k for k, v in mapping.items()}
        for result in coco_results:
            if result["category_id"] not in reverse:
                raise ValueError(
                    f"A prediction has class {result['category_id']}, but {self._dataset_name} has "
                    f"{len(reverse)} classes (ids 0..{len(reverse) - 1})"
                )
            result["category_id"] = reverse[result["category_id"]]

    def _class_names(self, coco_eval: Any) -> list[str]:
        """``thing_classes`` in the order of the COCOeval category axis."""
        names = self._metadata.get("thing_classes")
        mapping = self._metadata.get("thing_dataset_id_to_contiguous_id")
        cat_ids = list(coco_eval.params.catIds)
        if mapping is None:
            if len(cat_ids) != len(names):
                raise ValueError(
                    f"{self._dataset_name}: {len(cat_ids)} categories but {len(names)} thing_classes"
                )
            return list(names)
        return [names[mapping[cat_id]] for cat_id in cat_ids]

    def _flat_metrics(self, summary: dict[str, Any]) -> OrderedDict[str, float]:
        """detectron2's flat dict (what ``print_csv_format`` and the EventStorage take)."""
        flat = OrderedDict((name, summary[name]) for name, _, _ in _SUMMARY_METRICS)
        for entry in summary.get("per_class", []):
            flat["AP-" + entry["name"]] = entry["AP"]
        for group in ("seen", "unseen"):
            if group in summary:
                for metric, _ in _CLASS_METRICS:
                    flat[f"{metric}_{group}"] = summary[group][metric]
        return flat

    def _log_summary(self, task: str, summary: dict[str, Any]) -> None:
        self._logger.info(
            "Evaluation results for %s (%s):\n%s",
            task,
            self._dataset_name,
            create_small_table({name: summary[name] for name, _, _ in _SUMMARY_METRICS}),
        )
        if "per_class" not in summary:
            return
        rows = [
            [e["name"], e["AP"], e["AP50"], e["AP75"]] + ([e["seen"]] if "seen" in e else [])
            for e in summary["per_class"]
        ]
        headers = ["category", "AP", "AP50", "AP75"] + (["seen"] if self._seen_flags is not None else [])
        table = tabulate(rows, headers=headers, tablefmt="pipe", floatfmt=".3f", numalign="left")
        self._logger.info("Per-category %s AP:\n%s", task, table)
        for group in ("seen", "unseen"):
            if group in summary:
                g = summary[group]
                self._logger.info(
                    "%s classes (%d): AP %.3f  AP50 %.3f  AP75 %.3f",
                    group.capitalize(),
                    len(g["classes"]),
                    g["AP"],
                    g["AP50"],
                    g["AP75"],
                )
