"""SCORE: open-vocabulary instance segmentation of aerial and satellite images.

``import score`` is all a script needs: it applies the detectron2 v0.6
compatibility shims, registers the datasets and every model part in
detectron2's registries.
"""

# compat first: it patches detectron2 v0.6 before detectron2.data is imported.
from . import compat  # noqa: F401  # isort: skip
from . import data, modeling  # noqa: F401  (register the dataset splits and the model parts)
from .config import add_maskformer2_config, add_score_config, get_score_cfg  # noqa: F401
from .meta_arch import SCORE  # noqa: F401

__version__ = "0.1.0"
