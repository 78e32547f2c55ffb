"""Training and evaluation loop of SCORE (detectron2 ``DefaultTrainer`` with the authors' recipe)."""

from .trainer import (  # noqa: F401
    RAISummaryHook,
    Trainer,
    adapt_cfg_to_device,
    build_optimizer,
    optimizer_param_groups,
    test_seen_flags,
    with_full_model_gradient_clipping,
)
