"""The mask head of SCORE: pixel decoder plus masked-attention transformer decoder.

Mask2Former calls this pair ``sem_seg_head``; the authors' checkpoints keep
that name (``sem_seg_head.pixel_decoder.*``, ``sem_seg_head.predictor.*``).
It is registered in detectron2's ``SEM_SEG_HEADS_REGISTRY`` and built from
``MODEL.SEM_SEG_HEAD.NAME`` (``build_sem_seg_head``), as Mask2Former's heads are.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import Tensor, nn

from ..profiling import record_function
from .pixel_decoder import build_pixel_decoder
from .transformer_decoder import build_transformer_decoder

__all__ = ["SCOREHead"]


@SEM_SEG_HEADS_REGISTRY.register()
class SCOREHead(nn.Module):
    """Runs the pixel decoder on the backbone features and the transformer decoder on its output."""

    @configurable
    def __init__(self, *, pixel_decoder: nn.Module, predictor: nn.Module):
        """
        Args:
            pixel_decoder: module with ``forward_features(features) -> (mask_features,
                encoder_output, multi_scale_features)``.
            predictor: transformer decoder called as
                ``predictor(multi_scale_features, mask_features, text_classifier, num_synonyms, context)``.
        """
        super().__init__()
        self.pixel_decoder = pixel_decoder
        self.predictor = predictor

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        input_shape = {k: v for k, v in input_shape.items() if k in cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES}
        return {
            "pixel_decoder": build_pixel_decoder(cfg, input_shape),
            "predictor": build_transformer_decoder(cfg, cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM),
        }

    def forward(
        self,
        features: Dict[str, Tensor],
        text_classifier: Tensor,
        num_synonyms: Sequence[int],
        context: Optional[object] = None,
    ) -> dict:
        with record_function("score.pixel_decoder"):
            mask_features, _, multi_scale_features = self.pixel_decoder.forward_features(features)
        with record_function("score.transformer_decoder"):
            return self.predictor(multi_scale_features, mask_features, text_classifier, num_synonyms, context)
