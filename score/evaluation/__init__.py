"""Evaluation of SCORE: COCO instance-segmentation AP and semantic mIoU, with seen / unseen class averages."""

from .instance_evaluation import (  # noqa: F401
    BACKENDS,
    DEFAULT_BACKEND,
    InstanceSegEvaluator,
    evaluate_coco,
    summarize_precision,
)
from .sem_seg_evaluation import SemSegMIoUEvaluator, semseg_metrics  # noqa: F401
