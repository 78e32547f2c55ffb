"""Model parts of SCORE; importing this module registers them in detectron2's registries.

- backbone: the frozen CLIP ConvNeXt image tower (``BACKBONE_REGISTRY``);
- pixel_decoder / transformer_decoder: Mask2Former's decoders (own registries);
- context: the frozen remote-sensing CLIP (``CONTEXT_ENCODER_REGISTRY``);
- rai, gca: the two context modules; open_vocab, postprocessing: inference.
"""

from . import backbone, context, pixel_decoder, transformer_decoder  # noqa: F401
from .backbone.clip_convnext import CLIPConvNeXtBackbone  # noqa: F401
from .tiny_clip import register_tiny_clip_configs

# The tiny open_clip configs (tests, CPU demo, benchmarks) are names like any other.
register_tiny_clip_configs()
