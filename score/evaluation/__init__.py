"""Evaluation of SCORE: COCO instance-segmentation AP with seen / unseen class averages."""

from .instance_evaluation import (  # noqa: F401
    BACKENDS,
    DEFAULT_BACKEND,
    InstanceSegEvaluator,
    evaluate_coco,
    summarize_precision,
)
