"""The SCORE meta-architecture (SCORE.md sections 2 to 8).

Three branches share one forward: the frozen ConvNeXt CLIP image tower feeds
the Mask2Former head (instance branch); its text tower builds the text
classifier (semantic branch); the frozen remote-sensing CLIP gives global and
dense scene context (context branch). RAI, inside the head's prediction step,
mixes the dense context into the class embeddings; GCA shifts the text
classifier by the global context. At test time an out-of-vocabulary CLIP
score is ensembled with the head's own (7.3) before instance inference (7.4)
and / or semantic inference (7.5).

Shorthand: B batch, Q queries, K classes of the current vocabulary, N text
rows (synonyms of the K classes), D joint embedding width, H x W padded size.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone, build_sem_seg_head
from detectron2.structures import ImageList
from detectron2.utils.logger import log_first_n
from torch import Tensor, nn

from .modeling.clip_weights import weights_fingerprint
from .modeling.context import ContextFeatures, build_context_encoder
from .modeling.criterion import SetCriterion
from .modeling.gca import build_gca
from .modeling.head import SCOREHead
from .modeling.inference_compile import check_compile_names
from .modeling.matcher import HungarianMatcher
from .modeling.open_vocab import classification_logits, geometric_ensemble, mask_pool
from .modeling.postprocessing import instance_inference, semantic_inference
from .modeling.text_classifier import TextClassifierBank, classifier_cache_key
from .profiling import profiled
from .vocabulary import dataset_classes, seen_flags, train_vocabulary

__all__ = ["SCORE"]

logger = logging.getLogger(__name__)

_OUT_VOCAB_SOURCES = ("clip", "rsclip")
_FROZEN_TOWERS_AUTOCAST = ("none", "bf16")


@META_ARCH_REGISTRY.register()
class SCORE(nn.Module):
    """Open-vocabulary instance and semantic segmentation with scene context (RAI and GCA)."""

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        sem_seg_head: SCOREHead,
        context_encoder: Optional[nn.Module],
        gca: nn.Module,
        criterion: SetCriterion,
        text_classifiers: TextClassifierBank,
        context_text_classifiers: Optional[TextClassifierBank],
        train_class_names: Sequence[str],
        test_class_names: Sequence[str],
        pixel_mean: Tuple[float, float, float],
        pixel_std: Tuple[float, float, float],
        size_divisibility: int,
        context_input_size: int,
        max_detections: int,
        geometric_ensemble_alpha: float,
        geometric_ensemble_beta: float,
        ensemble_on_valid_mask: bool,
        out_vocab_source: str,
        frozen_towers_autocast: str = "none",
        semantic_on: bool = False,
        instance_on: bool = True,
        sem_seg_postprocess_before_inference: bool = False,
    ):
        """
        Args:
            backbone: frozen ConvNeXt CLIP (``CLIPConvNeXtBackbone``): res2..res5,
                ``clip_vis_dense``, ``pooled_to_embedding`` and ``logit_scale``.
            sem_seg_head: pixel decoder + transformer decoder (RAI inside).
            context_encoder: frozen remote-sensing CLIP returning ``ContextFeatures``;
                None for the FC-CLIP baseline (RAI off, GCA "none", out-vocabulary "clip").
            gca: Global Context Adaptation (mode "none" passes the classifier through).
            criterion: Mask2Former set criterion with its ``weight_dict``.
            text_classifiers: text classifiers of the ConvNeXt CLIP, one per vocabulary.
            context_text_classifiers: those of the context CLIP (out-vocabulary "rsclip").
            train_class_names: training vocabulary; it decides which test classes are seen.
            test_class_names: vocabulary used in eval mode (``set_vocabulary`` changes it).
            pixel_mean, pixel_std: CLIP normalisation, RGB, 0..255.
            size_divisibility: the padded batch is a multiple of this (px).
            context_input_size: side (px) of the context tower's input.
            max_detections: detections kept per image (TEST.DETECTIONS_PER_IMAGE).
            geometric_ensemble_alpha, geometric_ensemble_beta: exponents of 7.3.
            ensemble_on_valid_mask: out-vocabulary term only for non-empty masks.
            out_vocab_source: "clip" or "rsclip" (paper Table 6).
            frozen_towers_autocast: "none", or "bf16": bfloat16 autocast of the frozen
                ConvNeXt image tower on the model's device (CUDA or CPU), outputs cast to float32.
            semantic_on: output "sem_seg" (K, H, W) per image (MASK_FORMER.TEST.SEMANTIC_ON).
            instance_on: output "instances" per image (MASK_FORMER.TEST.INSTANCE_ON).
            sem_seg_postprocess_before_inference: semantic inference at the original size
                (MASK_FORMER.TEST.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE; implied by
                ``instance_on``, as in Mask2Former).
        """
        super().__init__()
        if not (semantic_on or instance_on):
            raise ValueError(
                "MODEL.MASK_FORMER.TEST.SEMANTIC_ON and MODEL.MASK_FORMER.TEST.INSTANCE_ON are both False: "
                "turn at least one inference task on"
            )
        self.semantic_on = semantic_on
        self.instance_on = instance_on
        self.sem_seg_postprocess_before_inference = sem_seg_postprocess_before_inference or instance_on
        if out_vocab_source not in _OUT_VOCAB_SOURCES:
            raise ValueError(
                f"MODEL.SCORE.OUT_VOCAB_SOURCE must be one of {_OUT_VOCAB_SOURCES}, not {out_vocab_source!r}"
            )
        if out_vocab_source == "rsclip" and (context_encoder is None or context_text_classifiers is None):
            raise ValueError(
                'MODEL.SCORE.OUT_VOCAB_SOURCE "rsclip" needs the context encoder and its text tower'
            )
        if frozen_towers_autocast not in _FROZEN_TOWERS_AUTOCAST:
            raise ValueError(
                f"MODEL.SCORE.FROZEN_TOWERS_AUTOCAST must be one of {_FROZEN_TOWERS_AUTOCAST}, "
                f"not {frozen_towers_autocast!r}"
            )
        self.frozen_towers_autocast = frozen_towers_autocast
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        self.context_encoder = context_encoder
        self.gca = gca
        self.criterion = criterion
        self.text_classifiers = text_classifiers
        self.context_text_classifiers = context_text_classifiers
        embed_dim = backbone.embed_dim
        # Learnable void row of the in-vocabulary classifier (SCORE.md 7.1).
        self.void_embedding = nn.Embedding(1, embed_dim)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.size_divisibility = size_divisibility
        self.context_input_size = context_input_size
        self.max_detections = max_detections
        self.geometric_ensemble_alpha = geometric_ensemble_alpha
        self.geometric_ensemble_beta = geometric_ensemble_beta
        self.ensemble_on_valid_mask = ensemble_on_valid_mask
        self.out_vocab_source = out_vocab_source
        self.train_class_names = list(train_class_names)
        # Seen flags (K,) of the current vocabulary: a buffer so that it follows the model's device
        # instead of being copied there by every forward; not saved (set_vocabulary rebuilds it).
        self.register_buffer("_seen", torch.zeros(0, dtype=torch.bool), False)
        # Text classifiers on the model's device, per (bank, vocabulary, device): the banks keep them
        # on the CPU, and a forward should not copy them to the device again.
        self._device_classifiers: Dict[tuple, Tuple[Tensor, List[int]]] = {}
        self.set_vocabulary(test_class_names)

    @classmethod
    def from_config(cls, cfg):
        # Read by the backbone, the context encoder and the pixel decoder: checked once here.
        check_compile_names(cfg.MODEL.SCORE.COMPILE_AT_INFERENCE)
        backbone = build_backbone(cfg)
        embed_dim = backbone.embed_dim
        sem_seg_head = build_sem_seg_head(cfg, backbone.output_shape())

        score_cfg = cfg.MODEL.SCORE
        needs_context = (
            score_cfg.RAI.ENABLED or score_cfg.GCA.MODE != "none" or score_cfg.OUT_VOCAB_SOURCE == "rsclip"
        )
        context_encoder = build_context_encoder(cfg) if needs_context else None

        train_class_names = train_vocabulary(cfg)
        if not train_class_names:
            raise ValueError(
                "DATASETS.TRAIN is empty and MODEL.SCORE.TRAIN_VOCABULARY is not set: "
                "the model needs a vocabulary"
            )
        test_class_names = train_class_names
        if len(cfg.DATASETS.TEST):
            test_class_names = dataset_classes(cfg.DATASETS.TEST[0], "DATASETS.TEST")

        mf = cfg.MODEL.MASK_FORMER
        final_weights = {"loss_ce": mf.CLASS_WEIGHT, "loss_mask": mf.MASK_WEIGHT, "loss_dice": mf.DICE_WEIGHT}
        weight_dict = dict(final_weights)
        if mf.DEEP_SUPERVISION:
            for i in range(mf.DEC_LAYERS - 1):
                weight_dict.update({f"{k}_{i}": v for k, v in final_weights.items()})
        matcher = HungarianMatcher(
            cost_class=mf.CLASS_WEIGHT,
            cost_mask=mf.MASK_WEIGHT,
            cost_dice=mf.DICE_WEIGHT,
            num_points=mf.TRAIN_NUM_POINTS,
        )
        criterion = SetCriterion(
            len(train_class_names),
            matcher=matcher,
            weight_dict=weight_dict,
            eos_coef=mf.NO_OBJECT_WEIGHT,
            losses=["labels", "masks"],
            num_points=mf.TRAIN_NUM_POINTS,
            oversample_ratio=mf.OVERSAMPLE_RATIO,
            importance_sample_ratio=mf.IMPORTANCE_SAMPLE_RATIO,
        )

        def text_bank(encode_text, model_name: str, weights: str) -> TextClassifierBank:
            fingerprint = weights_fingerprint(weights, score_cfg.RANDOM_INIT_CLIP)
            return TextClassifierBank(
                encode_text,
                cache_key=classifier_cache_key(model_name, fingerprint),
                cache_dir=score_cfg.TEXT_CLASSIFIER_CACHE_DIR or None,
            )

        text_classifiers = text_bank(
            backbone.encode_text, score_cfg.CLIP_MODEL_NAME, score_cfg.CLIP_PRETRAINED_WEIGHTS
        )
        context_text_classifiers = None
        if context_encoder is not None and score_cfg.OUT_VOCAB_SOURCE == "rsclip":
            context_text_classifiers = text_bank(
                context_encoder.encode_text, score_cfg.RSCLIP_MODEL_NAME, score_cfg.RSCLIP_PRETRAINED_WEIGHTS
            )
        return {
            "backbone": backbone,
            "sem_seg_head": sem_seg_head,
            "context_encoder": context_encoder,
            "gca": build_gca(cfg, embed_dim),
            "criterion": criterion,
            "text_classifiers": text_classifiers,
            "context_text_classifiers": context_text_classifiers,
            "train_class_names": train_class_names,
            "test_class_names": test_class_names,
            "pixel_mean": tuple(cfg.MODEL.PIXEL_MEAN),
            "pixel_std": tuple(cfg.MODEL.PIXEL_STD),
            "size_divisibility": _size_divisibility(mf.SIZE_DIVISIBILITY, backbone),
            "context_input_size": score_cfg.CONTEXT_INPUT_SIZE,
            "max_detections": cfg.TEST.DETECTIONS_PER_IMAGE,
            "geometric_ensemble_alpha": score_cfg.GEOMETRIC_ENSEMBLE_ALPHA,
            "geometric_ensemble_beta": score_cfg.GEOMETRIC_ENSEMBLE_BETA,
            "ensemble_on_valid_mask": score_cfg.ENSEMBLE_ON_VALID_MASK,
            "out_vocab_source": score_cfg.OUT_VOCAB_SOURCE,
            "frozen_towers_autocast": score_cfg.FROZEN_TOWERS_AUTOCAST,
            "semantic_on": mf.TEST.SEMANTIC_ON,
            "instance_on": mf.TEST.INSTANCE_ON,
            "sem_seg_postprocess_before_inference": mf.TEST.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def rai(self) -> Optional[nn.Module]:
        """The RAI module inside the transformer decoder, or None when RAI is off."""
        return getattr(self.sem_seg_head.predictor, "rai", None)

    def rai_summary(self) -> Dict[str, float]:
        """Loggable state of RAI (warm-up iteration, chosen kernel, lambda); empty without RAI."""
        return {} if self.rai is None else self.rai.summary()

    # ------------------------------------------------------------------ vocabulary
    def set_vocabulary(
        self, class_names: Sequence[str], train_class_names: Optional[Sequence[str]] = None
    ) -> None:
        """Use ``class_names`` in eval mode; ``train_class_names`` (if given) decides what is seen.

        Only the text classifier depends on the vocabulary: it is built (or
        taken from the cache) the next time it is needed; nothing else is rebuilt.
        """
        if not class_names:
            raise ValueError("the vocabulary is empty: give at least one class name")
        if train_class_names is not None:
            self.train_class_names = list(train_class_names)
        self.test_class_names = list(class_names)
        flags = seen_flags(self.test_class_names, self.train_class_names)
        self._seen = torch.tensor(flags, dtype=torch.bool, device=self.pixel_mean.device)

    @property
    def class_names(self) -> List[str]:
        """The vocabulary of the current mode."""
        return self.train_class_names if self.training else self.test_class_names

    # ------------------------------------------------------------------ forward
    def forward(self, batched_inputs: List[dict]):
        """detectron2 batched inputs -> losses (training) or per image ``{"instances", "sem_seg"}``.

        Inference gives "instances" (``Instances``) when ``instance_on`` and "sem_seg"
        (K, H, W) class scores when ``semantic_on``.
        """
        images = self.preprocess_image(batched_inputs)
        features = self.image_features(images.tensor)
        context = self.encode_context(images.tensor)
        text_classifier, num_synonyms = self.text_classifier(len(images), context)
        outputs = self.sem_seg_head(features, text_classifier, num_synonyms, context)
        if self.training:
            losses = self.losses(outputs, batched_inputs, images)
            if self.rai is not None:
                self.rai.step()
            return losses
        return self.inference(outputs, features, context, images, batched_inputs)

    def preprocess_image(self, batched_inputs: List[dict]) -> ImageList:
        """Normalise with the CLIP statistics and pad to ``size_divisibility`` (SCORE.md 3)."""
        images = [(x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs]
        return ImageList.from_tensors(images, self.size_divisibility)

    def frozen_tower_autocast(self) -> contextlib.AbstractContextManager:
        """bfloat16 autocast on the model's device for the frozen ConvNeXt tower when configured."""
        if self.frozen_towers_autocast == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @profiled("score.backbone")
    def image_features(self, images: Tensor) -> Dict[str, Tensor]:
        """The frozen ConvNeXt tower's res2..res5 and ``clip_vis_dense`` of the padded batch (B, 3, H, W)."""
        if self.frozen_towers_autocast == "none":
            return self.backbone(images)
        with self.frozen_tower_autocast():
            features = self.backbone(images)
        # The trainable head runs in float32 (or under the trainer's own AMP).
        return {name: feature.float() for name, feature in features.items()}

    @profiled("score.context_tower")
    def encode_context(self, images: Tensor) -> Optional[ContextFeatures]:
        """Global and dense scene context of the padded batch; None for the baseline."""
        if self.context_encoder is None:
            return None
        return self.context_encoder(images)

    def vocabulary_classifier(self, bank: TextClassifierBank) -> Tuple[Tensor, List[int]]:
        """``bank``'s classifier (N, D) of the current vocabulary on the model's device; synonym counts.

        Kept per (bank, vocabulary, device), so that only the first forward of a
        vocabulary copies it. The kept copy is made outside inference mode: a
        classifier first built under ``torch.inference_mode`` would otherwise be
        an inference tensor, which training cannot use in autograd.
        """
        key = (bank, tuple(self.class_names), self.device)
        if key not in self._device_classifiers:
            classifier, num_synonyms = bank.get(self.class_names)
            with torch.inference_mode(False):
                self._device_classifiers[key] = (classifier.to(self.device, copy=True), num_synonyms)
        classifier, num_synonyms = self._device_classifiers[key]
        return classifier, list(num_synonyms)

    @profiled("score.text_classifier")
    def text_classifier(
        self, batch_size: int, context: Optional[ContextFeatures]
    ) -> Tuple[Tensor, List[int]]:
        """Per-image in-vocabulary classifier (B, N + 1, D): GCA-adapted text rows, then void."""
        classifier, num_synonyms = self.vocabulary_classifier(self.text_classifiers)
        if context is None:
            adapted = classifier.expand(batch_size, -1, -1)
        else:
            adapted = self.gca(classifier, context.global_embed)
        void = F.normalize(self.void_embedding.weight, dim=-1).to(adapted.dtype)
        return torch.cat([adapted, void.expand(batch_size, -1, -1)], dim=1), num_synonyms

    # ------------------------------------------------------------------ training
    @profiled("score.losses")
    def losses(self, outputs: dict, batched_inputs: List[dict], images: ImageList) -> Dict[str, Tensor]:
        """Mask2Former losses on the final and auxiliary predictions, weighted."""
        targets = self.prepare_targets([x["instances"].to(self.device) for x in batched_inputs], images)
        losses = self.criterion(outputs, targets)
        weights = self.criterion.weight_dict
        return {k: v * weights[k] for k, v in losses.items() if k in weights}

    @staticmethod
    def prepare_targets(instances: list, images: ImageList) -> List[Dict[str, Tensor]]:
        """Ground-truth masks padded to the batch size, with their labels."""
        h_pad, w_pad = images.tensor.shape[-2:]
        targets = []
        for per_image in instances:
            gt_masks = per_image.gt_masks
            gt_masks = gt_masks.tensor if hasattr(gt_masks, "tensor") else gt_masks
            padded = gt_masks.new_zeros((gt_masks.shape[0], h_pad, w_pad))
            padded[:, : gt_masks.shape[1], : gt_masks.shape[2]] = gt_masks
            targets.append({"labels": per_image.gt_classes, "masks": padded})
        return targets

    # ------------------------------------------------------------------ inference
    @profiled("score.oov_pooling")
    def out_vocab_logits(
        self, features: Dict[str, Tensor], context: Optional[ContextFeatures], mask_logits: Tensor
    ) -> Tuple[Tensor, Tensor]:
        """Frozen-CLIP logits (B, Q, K + 1) of each query's mask, and which masks are non-empty (B, Q).

        "clip": pool the ConvNeXt ``clip_vis_dense`` map, map it to the joint
        space with the tower's own head and score it against the original
        (not GCA-adapted) text classifier with the tower's logit scale.
        "rsclip": pool the context CLIP's dense map against its own text classifier.
        """
        if self.out_vocab_source == "clip":
            dense = features["clip_vis_dense"]
            with self.frozen_tower_autocast():
                embeddings = self.backbone.pooled_to_embedding(mask_pool(dense, mask_logits))
            classifier, num_synonyms = self.vocabulary_classifier(self.text_classifiers)
            logit_scale = self.backbone.logit_scale
        else:
            dense = context.dense
            embeddings = mask_pool(dense, mask_logits.to(dense.dtype)).float()
            classifier, num_synonyms = self.vocabulary_classifier(self.context_text_classifiers)
            logit_scale = self.context_encoder.clip_model.logit_scale
        void = F.normalize(self.void_embedding.weight, dim=-1)
        classifier = torch.cat([classifier, void.to(classifier.dtype)], dim=0)
        logits = classification_logits(embeddings.float(), classifier, logit_scale.float(), num_synonyms)
        resized = F.interpolate(mask_logits, size=dense.shape[-2:], mode="bilinear", align_corners=False)
        valid = (resized > 0).flatten(2).any(-1)
        return logits, valid

    def inference(
        self,
        outputs: dict,
        features: Dict[str, Tensor],
        context: Optional[ContextFeatures],
        images: ImageList,
        batched_inputs: List[dict],
    ) -> List[dict]:
        """Open-vocabulary ensemble (SCORE.md 7.3), then instance (7.4) and / or semantic (7.5) inference."""
        mask_logits = outputs["pred_masks"]
        out_logits, valid = self.out_vocab_logits(features, context, mask_logits)
        class_logits = geometric_ensemble(
            outputs["pred_logits"],
            out_logits,
            self._seen,
            self.geometric_ensemble_alpha,
            self.geometric_ensemble_beta,
            valid if self.ensemble_on_valid_mask else None,
        )
        padded_size = tuple(images.tensor.shape[-2:])
        results = []
        for i, (inputs, image_size) in enumerate(zip(batched_inputs, images.image_sizes)):
            output_size = (inputs.get("height", image_size[0]), inputs.get("width", image_size[1]))
            result = {}
            if self.semantic_on:
                result["sem_seg"] = semantic_inference(
                    class_logits[i],
                    mask_logits[i],
                    padded_size=padded_size,
                    image_size=image_size,
                    output_size=output_size,
                    postprocess_before_inference=self.sem_seg_postprocess_before_inference,
                )
            if self.instance_on:
                result["instances"] = instance_inference(
                    class_logits[i],
                    mask_logits[i],
                    padded_size=padded_size,
                    image_size=image_size,
                    output_size=output_size,
                    max_detections=self.max_detections,
                )
            results.append(result)
        return results


def _size_divisibility(value: int, backbone: Backbone) -> int:
    """MODEL.MASK_FORMER.SIZE_DIVISIBILITY, with -1 (Mask2Former's sentinel) for the backbone's value.

    0 meant the backbone's value in earlier SCORE configs and still does, with a warning.
    """
    if value == 0:
        log_first_n(
            logging.WARNING,
            "MODEL.MASK_FORMER.SIZE_DIVISIBILITY 0 is read as -1 (the backbone's value, "
            f"{backbone.size_divisibility}); write -1, as Mask2Former does",
            name=__name__,
        )
        value = -1
    if value == -1:
        return backbone.size_divisibility
    if value < 0:
        raise ValueError(
            f"MODEL.MASK_FORMER.SIZE_DIVISIBILITY must be positive or -1 (the backbone's value), not {value}"
        )
    return value
