"""Model parts of SCORE; importing this module registers them in detectron2's registries.

- backbone: the frozen CLIP ConvNeXt image tower (``BACKBONE_REGISTRY``);
- pixel_decoder / transformer_decoder: Mask2Former's decoders (own registries);
- context: the frozen remote-sensing CLIP (``CONTEXT_ENCODER_REGISTRY``);
- rai, gca: the two context modules; open_vocab, postprocessing: inference.
"""

from . import (  # noqa: F401
    backbone,
    context,
    pixel_decoder,
    tiny_clip,  # noqa: F401  (registers the tiny open_clip configs)
    transformer_decoder,
)
from .backbone.clip_convnext import CLIPConvNeXtBackbone  # noqa: F401
