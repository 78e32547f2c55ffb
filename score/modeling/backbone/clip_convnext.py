"""Frozen CLIP ConvNeXt image tower as a detectron2 backbone (SCORE.md 4.1).

Shorthand: B batch, Q queries, C channels of the last stage (1536 for
ConvNeXt-Large), D joint embedding width (768), N text prompts,
H x W padded input size.

This follows FC-CLIP's CLIP backbone: the open_clip ConvNeXt CLIP
(``convnext_large_d_320``) gives the multi-scale features of the instance
branch from its timm trunk (stem, then four stages at strides 4..32), the
dense map for out-of-vocabulary classification (the trunk's pre-head norm on
the last stage), the mapping of mask-pooled vectors into the joint space
(trunk head, then the CLIP MLP projection head), and the text tower. The whole
CLIP is frozen and stays in eval mode; its features feed the trainable
decoders, so no gradient is needed through it.
"""

from __future__ import annotations

from typing import Dict, List

import open_clip
import torch
from detectron2.config import configurable
from detectron2.modeling import BACKBONE_REGISTRY, Backbone, ShapeSpec
from torch import Tensor

from ..clip_weights import create_clip_model
from ..inference_compile import InferenceCompiled

__all__ = ["CLIPConvNeXtBackbone"]

_STAGE_NAMES = ("res2", "res3", "res4", "res5")


@BACKBONE_REGISTRY.register()
class CLIPConvNeXtBackbone(Backbone):
    """The open_clip ConvNeXt CLIP; ``clip_model`` is the full CLIP (image and text towers)."""

    @configurable
    def __init__(
        self,
        *,
        clip_model_name: str,
        clip_pretrained_weights: str,
        random_init: bool,
        embed_dim: int,
        compile_at_inference: bool = False,
    ):
        """
        Args:
            clip_model_name: open_clip model name with a timm ConvNeXt image
                tower (``convnext_large_d_320``).
            clip_pretrained_weights: its weights (open_clip tag, local file or
                ``hf-hub:`` reference; see :func:`create_clip_model`).
            random_init: random weights instead of loading (tests only).
            embed_dim: the joint width D the rest of SCORE is built for; must
                equal the model's ``embed_dim``.
            compile_at_inference: without autograd, run the trunk through
                ``torch.compile`` (``InferenceCompiled``; close to, not equal to, eager).
        """
        super().__init__()
        model_cfg = open_clip.get_model_config(clip_model_name)
        if model_cfg is None:
            raise ValueError(
                f"Unknown open_clip model name {clip_model_name!r} (MODEL.SCORE.CLIP_MODEL_NAME)."
            )
        if model_cfg["embed_dim"] != embed_dim:
            raise ValueError(
                f"MODEL.SCORE.EMBED_DIM = {embed_dim} but open_clip model {clip_model_name!r} has "
                f"embed_dim {model_cfg['embed_dim']}; set MODEL.SCORE.EMBED_DIM to {model_cfg['embed_dim']}."
            )
        self.clip_model = create_clip_model(
            clip_model_name,
            clip_pretrained_weights,
            random_init=random_init,
            config_key="MODEL.SCORE.CLIP_PRETRAINED_WEIGHTS",
        )
        trunk = getattr(self.clip_model.visual, "trunk", None)
        if trunk is None or not hasattr(trunk, "stages"):
            raise ValueError(f"open_clip model {clip_model_name!r} has no timm ConvNeXt image tower.")
        self.model_name = clip_model_name
        self._embed_dim = embed_dim
        self.tokenizer = open_clip.get_tokenizer(clip_model_name)

        # Widths and strides come from timm's description of the trunk.
        stages = {info["module"]: info for info in trunk.feature_info}
        self._out_feature_channels: Dict[str, int] = {}
        self._out_feature_strides: Dict[str, int] = {}
        for index, name in enumerate(_STAGE_NAMES):
            info = stages[f"stages.{index}"]
            self._out_feature_channels[name] = info["num_chs"]
            self._out_feature_strides[name] = info["reduction"]
        self._out_feature_channels["clip_vis_dense"] = self._out_feature_channels["res5"]
        self._out_feature_strides["clip_vis_dense"] = self._out_feature_strides["res5"]
        self._out_features: List[str] = [*_STAGE_NAMES, "clip_vis_dense"]
        self._compiled_features = (
            InferenceCompiled(self._features, self, "the ConvNeXt CLIP trunk")
            if compile_at_inference
            else None
        )
        self.eval()

    @classmethod
    def from_config(cls, cfg, input_shape=None):
        return {
            "clip_model_name": cfg.MODEL.SCORE.CLIP_MODEL_NAME,
            "clip_pretrained_weights": cfg.MODEL.SCORE.CLIP_PRETRAINED_WEIGHTS,
            "random_init": cfg.MODEL.SCORE.RANDOM_INIT_CLIP,
            "embed_dim": cfg.MODEL.SCORE.EMBED_DIM,
            "compile_at_inference": "backbone" in cfg.MODEL.SCORE.COMPILE_AT_INFERENCE,
        }

    def train(self, mode: bool = True) -> CLIPConvNeXtBackbone:
        # Frozen module with no trainable part: it stays in eval mode (norms, drop-path,
        # dropout) whatever mode the model is put in.
        return super().train(False)

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        """(B, 3, H, W) normalised, padded to a multiple of 32 -> res2..res5 and ``clip_vis_dense``.

        res2..res5 are the outputs of the four trunk stages (strides 4..32);
        ``clip_vis_dense`` (B, C, H/32, W/32) is the trunk's ``norm_pre`` on res5
        (Identity for ConvNeXt, whose norm sits in the head), as in FC-CLIP.
        """
        if self._compiled_features is not None and not torch.is_grad_enabled():
            return self._compiled_features(x)
        return self._features(x)

    @torch.no_grad()
    def _features(self, x: Tensor) -> Dict[str, Tensor]:
        trunk = self.clip_model.visual.trunk
        features: Dict[str, Tensor] = {}
        x = trunk.stem(x)
        for index, name in enumerate(_STAGE_NAMES):
            x = trunk.stages[index](x)
            features[name] = x.contiguous()
        features["clip_vis_dense"] = trunk.norm_pre(x).contiguous()
        return features

    @torch.no_grad()
    def pooled_to_embedding(self, x: Tensor) -> Tensor:
        """Mask-pooled dense features (B, Q, C) -> joint space (B, Q, D).

        The trunk head (pooling, LayerNorm) runs on a (B * Q, C, 1, 1) fake
        2D input, then the CLIP projection head (FC-CLIP's
        ``visual_prediction_forward_convnext``).
        """
        batch, queries, channels = x.shape
        x = x.reshape(batch * queries, channels, 1, 1)
        x = self.clip_model.visual.trunk.head(x)
        x = self.clip_model.visual.head(x)
        return x.view(batch, queries, x.shape[-1])

    @torch.no_grad()
    def encode_text(self, prompts: List[str]) -> Tensor:
        """Prompts -> (N, D) text embeddings, not normalised."""
        tokens = self.tokenizer(prompts).to(self.clip_model.logit_scale.device)
        return self.clip_model.encode_text(tokens)

    @property
    def embed_dim(self) -> int:
        """Width D of the joint embedding."""
        return self._embed_dim

    @property
    def logit_scale(self) -> Tensor:
        """The CLIP's own (frozen) logit scale, a log value (scalar)."""
        return self.clip_model.logit_scale

    @property
    def size_divisibility(self) -> int:
        return 32

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(channels=self._out_feature_channels[name], stride=self._out_feature_strides[name])
            for name in self._out_features
        }
