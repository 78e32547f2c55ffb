"""Semantic-segmentation evaluation (mIoU) with seen / unseen class averages.

The protocol of DATASETS.md ("Semantic segmentation benchmark", GSNet's): a
confusion matrix over the target's classes, accumulated per pixel of the
original-size prediction against the label image, with every ignore value of
the split left out; mIoU, fwIoU, mACC and pACC as detectron2's
``SemSegEvaluator`` defines them, plus mIoU over the target's seen and unseen
classes (a class is seen when its normalised name or a synonym is in the
training vocabulary, as for instances).

Built on detectron2's ``SemSegEvaluator`` (its constructor, confusion-matrix
layout and distributed gathering), with two differences that make the numbers
the same on detectron2 v0.6 and today's detectron2:

* labels are read raw and mapped by the split's ``LabelEncoding``: every
  ignore value is ignored (v0.6 knows one ``ignore_label``), and a value that
  is neither a class nor ignored is an error naming the file and the value
  (detectron2 would count it silently or fail on an index);
* the metrics follow today's detectron2: a class enters mIoU only when it has
  ground truth in the split (v0.6 also counted classes that were only
  predicted, with IoU 0, in the denominator).

Per-image RLEs of the predictions (``sem_seg_predictions.json`` in detectron2)
are not kept: for the 4000 x 3000 FloodNet images they would hold every
prediction in memory until the end. The report goes to ``results.json``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import OrderedDict
from typing import Any, Optional, Sequence

import numpy as np
from detectron2.data import MetadataCatalog
from detectron2.evaluation import SemSegEvaluator
from detectron2.utils.comm import all_gather, is_main_process, synchronize
from detectron2.utils.file_io import PathManager
from tabulate import tabulate

from ..data.labels import LabelEncoding, read_label
from .instance_evaluation import _json_safe

__all__ = ["SemSegMIoUEvaluator", "semseg_metrics"]

logger = logging.getLogger(__name__)


def semseg_metrics(
    conf_matrix: np.ndarray,
    class_names: Sequence[str],
    seen_flags: Optional[Sequence[bool]] = None,
    scored: Optional[Sequence[bool]] = None,
) -> dict[str, Any]:
    """Metrics of a (K + 1, K + 1) confusion matrix (rows prediction, columns ground truth, last = ignored).

    Args:
        conf_matrix: pixel counts; the last row and column (ignored ground truth) are left out.
        class_names: K names.
        seen_flags: K booleans (True = seen in training), or None.
        scored: K booleans, False for a class whose label value is ignored: it is never
            in an average (it has no ground truth by construction).

    Returns:
        {"mIoU", "fwIoU", "mACC", "pACC": float (percent), "per_class": [{"name", "IoU",
        "ACC", "scored"[, "seen"]}], "seen"/"unseen": {"mIoU", "classes", "num_classes"}}. A
        class without ground truth has IoU and ACC NaN and is in no average.
    """
    num_classes = len(class_names)
    if conf_matrix.shape != (num_classes + 1, num_classes + 1):
        raise ValueError(f"confusion matrix {conf_matrix.shape} for {num_classes} classes")
    scored = [True] * num_classes if scored is None else [bool(s) for s in scored]
    matrix = conf_matrix[:-1, :-1].astype(np.float64)
    tp = np.diagonal(matrix)
    pos_gt = matrix.sum(axis=0)
    pos_pred = matrix.sum(axis=1)
    union = pos_gt + pos_pred - tp
    acc_valid = (pos_gt > 0) & np.asarray(scored)
    iou_valid = acc_valid & (union > 0)
    acc = np.full(num_classes, np.nan)
    iou = np.full(num_classes, np.nan)
    acc[acc_valid] = tp[acc_valid] / pos_gt[acc_valid]
    iou[iou_valid] = tp[iou_valid] / union[iou_valid]
    total = pos_gt[acc_valid].sum()
    weights = pos_gt / total if total > 0 else np.zeros(num_classes)

    def mean(values: np.ndarray, valid: np.ndarray) -> float:
        return float(100 * values[valid].mean()) if valid.any() else float("nan")

    results: dict[str, Any] = {
        "mIoU": mean(iou, iou_valid),
        "fwIoU": float(100 * np.sum(iou[iou_valid] * weights[iou_valid])) if total > 0 else float("nan"),
        "mACC": mean(acc, acc_valid),
        "pACC": float(100 * tp[acc_valid].sum() / total) if total > 0 else float("nan"),
    }
    per_class = []
    for k, name in enumerate(class_names):
        entry: dict[str, Any] = {"name": name, "IoU": float(100 * iou[k]), "ACC": float(100 * acc[k])}
        entry["scored"] = scored[k]
        if seen_flags is not None:
            entry["seen"] = bool(seen_flags[k])
        per_class.append(entry)
    results["per_class"] = per_class
    if seen_flags is not None:
        if len(seen_flags) != num_classes:
            raise ValueError(f"{len(seen_flags)} seen flags for {num_classes} classes")
        flags = np.asarray([bool(f) for f in seen_flags])
        for group, flag in (("seen", True), ("unseen", False)):
            members = np.asarray(scored) & (flags == flag)
            if not members.any():
                continue
            results[group] = {
                "mIoU": mean(iou, iou_valid & members),
                "classes": [name for name, m in zip(class_names, members) if m],
                "num_classes": int(members.sum()),
            }
    return results


class SemSegMIoUEvaluator(SemSegEvaluator):
    """detectron2's ``SemSegEvaluator`` over a split's ``LabelEncoding``, with seen / unseen mIoU.

    ``evaluate`` returns {"sem_seg": flat metrics}: mIoU, fwIoU, mACC, pACC,
    "IoU-<class>", "ACC-<class>", "mIoU_seen", "mIoU_unseen"; with an
    ``output_dir`` the full report goes to ``<output_dir>/results.json``.
    """

    def __init__(
        self,
        dataset_name: str,
        distributed: bool = True,
        output_dir: Optional[str] = None,
        *,
        seen_flags: Optional[Sequence[bool]] = None,
    ):
        """
        Args:
            dataset_name: a registered semantic split (``stuff_classes``, ``ignore_label``,
                ``label_values``, ``ignore_values``; score/data/datasets.py).
            distributed: gather the confusion matrices of all ranks and evaluate on the main one.
            output_dir: folder for ``results.json``; None writes nothing.
            seen_flags: one boolean per class (True = seen in training), or None.
        """
        # Positional: the constructor's keyword arguments differ between detectron2 versions.
        super().__init__(dataset_name, distributed, output_dir)
        self._encoding = LabelEncoding.from_metadata(MetadataCatalog.get(dataset_name))
        if len(self._encoding.label_values) != self._num_classes:
            raise ValueError(
                f"{dataset_name}: {len(self._encoding.label_values)} label values for "
                f"{self._num_classes} stuff_classes"
            )
        if seen_flags is not None and len(seen_flags) != self._num_classes:
            raise ValueError(
                f"{len(seen_flags)} seen flags for the {self._num_classes} classes of {dataset_name}"
            )
        self._seen_flags = None if seen_flags is None else [bool(f) for f in seen_flags]
        self._num_images = 0

    def reset(self) -> None:
        super().reset()
        self._num_images = 0

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        """Add each image's pixels to the confusion matrix.

        Args:
            inputs: model inputs with "file_name" (its label is the record's ``sem_seg_file_name``).
            outputs: model outputs with "sem_seg" (K, H, W) scores at the label's size.
        """
        k = self._num_classes
        ignore = self._encoding.ignore_label
        for inp, out in zip(inputs, outputs):
            pred = out["sem_seg"].argmax(dim=0).to(self._cpu_device).numpy().astype(np.int64)
            label_file = self.input_file_to_gt_file[inp["file_name"]]
            gt = self._encoding.encode(read_label(label_file), label_file).astype(np.int64)
            if gt.shape != pred.shape:
                raise ValueError(
                    f"prediction for {inp['file_name']!r} is {pred.shape[1]}x{pred.shape[0]} (WxH), "
                    f"its label {label_file!r} {gt.shape[1]}x{gt.shape[0]}"
                )
            gt[gt == ignore] = k
            self._conf_matrix += np.bincount(
                (k + 1) * pred.reshape(-1) + gt.reshape(-1), minlength=self._conf_matrix.size
            ).reshape(self._conf_matrix.shape)
            self._num_images += 1

    def evaluate(self) -> Optional[OrderedDict]:
        if self._distributed:
            synchronize()
            matrices = all_gather(self._conf_matrix)
            counts = all_gather(self._num_images)
            if not is_main_process():
                return None
            self._conf_matrix = np.sum(matrices, axis=0)
            self._num_images = sum(counts)
        summary = semseg_metrics(
            self._conf_matrix, self._class_names, self._seen_flags, self._encoding.scored
        )
        self._log_summary(summary)
        if self._output_dir:
            report = {"dataset": self._dataset_name, "num_images": self._num_images, "sem_seg": summary}
            PathManager.mkdirs(self._output_dir)
            file_path = os.path.join(self._output_dir, "results.json")
            with PathManager.open(file_path, "w") as f:
                json.dump(_json_safe(report), f, indent=2)
            self._logger.info("Wrote %s", file_path)
        return OrderedDict({"sem_seg": self._flat_metrics(summary)})

    @staticmethod
    def _flat_metrics(summary: dict[str, Any]) -> OrderedDict:
        flat = OrderedDict((name, summary[name]) for name in ("mIoU", "fwIoU", "mACC", "pACC"))
        for entry in summary["per_class"]:
            flat["IoU-" + entry["name"]] = entry["IoU"]
        for entry in summary["per_class"]:
            flat["ACC-" + entry["name"]] = entry["ACC"]
        for group in ("seen", "unseen"):
            if group in summary:
                flat[f"mIoU_{group}"] = summary[group]["mIoU"]
        return flat

    def _log_summary(self, summary: dict[str, Any]) -> None:
        rows = [
            [e["name"], e["IoU"], e["ACC"], e["scored"]] + ([e["seen"]] if "seen" in e else [])
            for e in summary["per_class"]
        ]
        headers = ["class", "IoU", "ACC", "scored"] + (["seen"] if self._seen_flags is not None else [])
        self._logger.info(
            "Semantic segmentation on %s (%d images): mIoU %.2f  fwIoU %.2f  mACC %.2f  pACC %.2f\n%s",
            self._dataset_name,
            self._num_images,
            summary["mIoU"],
            summary["fwIoU"],
            summary["mACC"],
            summary["pACC"],
            tabulate(rows, headers=headers, tablefmt="pipe", floatfmt=".2f"),
        )
        for group in ("seen", "unseen"):
            if group in summary:
                g = summary[group]
                value = g["mIoU"]
                self._logger.info(
                    "%s classes (%d): mIoU %s",
                    group.capitalize(),
                    g["num_classes"],
                    "nan" if math.isnan(value) else f"{value:.2f}",
                )
