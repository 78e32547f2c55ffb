"""Checkpoints: loading those written by the authors' implementation.

Our module names follow the authors' (``backbone.clip_model``,
``sem_seg_head.pixel_decoder``, ``sem_seg_head.predictor``, ``criterion``,
``void_embedding``) except where a part got a module of its own:
RAI lives in ``sem_seg_head.predictor.rai``, GCA's attention is ``gca.attn``
and the context CLIP is ``context_encoder``. ``convert_official_state_dict``
renames an authors' state dict to ours; ``SCORECheckpointer`` applies it by
itself when it recognises one, so ``MODEL.WEIGHTS`` may point at either.
"""

from __future__ import annotations

import logging
from typing import Dict, Mapping, Tuple

from detectron2.checkpoint import DetectionCheckpointer

__all__ = ["OFFICIAL_RENAMES", "convert_official_state_dict", "is_official_state_dict", "SCORECheckpointer"]

logger = logging.getLogger(__name__)

# (authors' prefix, our prefix), applied to the first matching prefix of each key.
OFFICIAL_RENAMES: Tuple[Tuple[str, str], ...] = (
    ("clip_rs.", "context_encoder."),
    ("gca.multiattn.0.", "gca.attn."),
    ("sem_seg_head.predictor.transformer.", "sem_seg_head.predictor.rai.encoder."),
    ("sem_seg_head.predictor.learnable_weight", "sem_seg_head.predictor.rai.lambda_weight"),
    ("sem_seg_head.predictor.kernel_size_logits", "sem_seg_head.predictor.rai.kernel_logits"),
)


def is_official_state_dict(state_dict: Mapping[str, object]) -> bool:
    """True when the keys are in the authors' layout (any key with one of their prefixes)."""
    return any(key.startswith(old) for key in state_dict for old, _ in OFFICIAL_RENAMES)


def convert_official_state_dict(state_dict: Mapping[str, object]) -> Dict[str, object]:
    """Rename the keys of an authors' state dict to this project's module names; values unchanged."""
    converted = {}
    for key, value in state_dict.items():
        for old, new in OFFICIAL_RENAMES:
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        converted[key] = value
    return converted


class SCORECheckpointer(DetectionCheckpointer):
    """detectron2's checkpointer that also reads the authors' checkpoints."""

    def _load_model(self, checkpoint):
        if is_official_state_dict(checkpoint["model"]):
            logger.info("Converting a checkpoint of the authors' implementation to this project's key names")
            checkpoint["model"] = convert_official_state_dict(checkpoint["model"])
        return super()._load_model(checkpoint)
