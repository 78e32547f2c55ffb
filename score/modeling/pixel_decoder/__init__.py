"""Pixel decoders: backbone features -> per-pixel mask features and multi-scale features.

A pixel decoder is registered in ``PIXEL_DECODER_REGISTRY`` and built as
``cls(cfg, input_shape)``, where ``input_shape`` maps backbone feature names
(res2..res5) to their ``ShapeSpec``. It must provide

    forward_features(features: Dict[str, Tensor]) -> (mask_features, encoder_features, multi_scale_features)

with ``mask_features`` (B, MASK_DIM, H/4, W/4) the per-pixel embeddings the
masks are read from, ``encoder_features`` the transformer encoder's output at
its coarsest level, and ``multi_scale_features`` the list of the 3 feature maps
(B, CONVS_DIM, h_l, w_l) at strides 32, 16, 8 that the transformer decoder
attends to.
"""

from typing import Dict

from detectron2.layers import ShapeSpec
from detectron2.utils.registry import Registry
from torch import nn

__all__ = ["PIXEL_DECODER_REGISTRY", "build_pixel_decoder"]

PIXEL_DECODER_REGISTRY = Registry("PIXEL_DECODER")
PIXEL_DECODER_REGISTRY.__doc__ = __doc__


def build_pixel_decoder(cfg, input_shape: Dict[str, ShapeSpec]) -> nn.Module:
    """The pixel decoder named by ``cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME``."""
    name = cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME
    model = PIXEL_DECODER_REGISTRY.get(name)(cfg, input_shape)
    if not callable(getattr(model, "forward_features", None)):
        raise ValueError(f"pixel decoder {name} has no forward_features method, which the head calls")
    return model


# Imported last: the module registers itself in the registry defined above.
from . import msdeformattn  # noqa: E402,F401
