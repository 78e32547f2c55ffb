"""Dataset mappers: a dataset dict (detectron2 standard format) to a model input.

Training uses large-scale jitter (SCORE.md 8), the augmentation of
Mask2Former's ``COCOInstanceNewBaselineDatasetMapper``: horizontal flip, a
random rescale of a square target size, then a fixed-size random crop that pads
when the image is smaller. Unlike Mask2Former's mapper, masks go through
detectron2's "bitmask" path, so polygon and RLE annotations (SAMRS splits are
RLE) are both accepted.

Testing uses detectron2's ``DatasetMapper`` with
``ResizeShortestEdge(INPUT.MIN_SIZE_TEST, INPUT.MAX_SIZE_TEST)``: it keeps
every image and drops the annotations (the evaluator reads them from the
json). Both mappers read images with :func:`read_image_or_fail`, so a picture
with more than 8 bits per channel is stretched to 8 bit as GeoTIFF input is
(:func:`score.data.image_io.read_image_uint8`, INPUT.HIGH_BIT_DEPTH_SCALING) instead of
being saturated by PIL.

Semantic training ("mask_former_semantic", Mask2Former's name for its semantic
mapper) uses the same large-scale jitter; the label image is read raw (never
through the 8-bit stretch), mapped to contiguous ids by the split's
``LabelEncoding``, and becomes one binary mask per class present, as in
Mask2Former's ``MaskFormerSemanticDatasetMapper``.

``cfg.INPUT.DATASET_MAPPER_NAME`` picks the training mapper by name from
``TRAIN_MAPPERS``.
"""

from __future__ import annotations

import copy
import logging
from typing import Any, Callable

import numpy as np
import torch
from detectron2.config import CfgNode, configurable
from detectron2.data import DatasetMapper, MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, Instances

from .image_io import SCALINGS, read_image_uint8
from .labels import LabelEncoding, read_label
from .validation import annotation_problem

__all__ = [
    "TRAIN_MAPPERS",
    "SCOREInstanceLSJMapper",
    "SCORESemanticLSJMapper",
    "SCORETestMapper",
    "build_test_mapper",
    "build_train_mapper",
    "read_image_or_fail",
    "register_train_mapper",
]

logger = logging.getLogger(__name__)

TRAIN_MAPPERS: dict[str, type] = {}


def register_train_mapper(name: str) -> Callable[[type], type]:
    """Class decorator: make a training mapper selectable by ``INPUT.DATASET_MAPPER_NAME``."""

    def register(cls: type) -> type:
        if name in TRAIN_MAPPERS:
            raise KeyError(f"A training mapper named {name!r} is already registered: {TRAIN_MAPPERS[name]}")
        TRAIN_MAPPERS[name] = cls
        return cls

    return register


def _check_high_bit_scaling(value: str) -> str:
    if value not in SCALINGS:
        raise ValueError(f"INPUT.HIGH_BIT_DEPTH_SCALING must be one of {SCALINGS}, not {value!r}")
    return value


def read_image_or_fail(file_name: str, image_format: str, high_bit_scaling: str = "percentile") -> np.ndarray:
    """:func:`score.data.image_io.read_image_uint8`, with an error naming the file when it cannot be decoded.

    Args:
        file_name: image file.
        image_format: detectron2 image format of the result (e.g. "RGB").
        high_bit_scaling: stretch of files with more than 8 bits per channel,
            "percentile" or "dtype" (INPUT.HIGH_BIT_DEPTH_SCALING).

    Returns:
        (H, W, C) uint8 array in ``image_format``.
    """
    try:
        return read_image_uint8(file_name, image_format, scaling=high_bit_scaling)
    except (OSError, ValueError) as e:
        # PIL's messages name a file object or nothing at all; a data loader
        # worker's traceback must say which of thousands of images is broken.
        raise OSError(f"Cannot read image {file_name!r}: {e}") from e


def build_lsj_augmentations(
    *, image_size: int, min_scale: float, max_scale: float, random_flip: str
) -> list[T.Augmentation]:
    """Large-scale jitter, as Mask2Former's ``build_transform_gen``.

    Args:
        image_size: side (px) of the square target and of the crop.
        min_scale, max_scale: range of the random scale of the target size.
        random_flip: "horizontal", "vertical" or "none" (detectron2's INPUT.RANDOM_FLIP).
    """
    augmentations: list[T.Augmentation] = []
    if random_flip != "none":
        augmentations.append(
            T.RandomFlip(horizontal=random_flip == "horizontal", vertical=random_flip == "vertical")
        )
    augmentations += [
        T.ResizeScale(
            min_scale=min_scale, max_scale=max_scale, target_height=image_size, target_width=image_size
        ),
        T.FixedSizeCrop(crop_size=(image_size, image_size)),
    ]
    return augmentations


@register_train_mapper("score_instance_lsj")
class SCOREInstanceLSJMapper:
    """Training mapper with large-scale jitter for instance segmentation.

    Output dict: the input's fields, plus "image" (3, H, W) uint8 tensor in
    ``image_format`` and "instances" (``Instances`` with ``gt_classes`` (N,),
    ``gt_boxes`` (N, 4) tight around the cropped masks, ``gt_masks``
    ``BitMasks`` (N, H, W)); "annotations" is removed. Crowd annotations are
    dropped, and instances left empty by the crop are filtered out.
    """

    @configurable
    def __init__(
        self, *, augmentations: list[T.Augmentation], image_format: str, high_bit_scaling: str = "percentile"
    ):
        """
        Args:
            augmentations: applied in order to the image and its annotations.
            image_format: detectron2 image format of the output ("RGB" for CLIP).
            high_bit_scaling: 8-bit stretch of images with more than 8 bits per
                channel, "percentile" or "dtype" (see :mod:`score.data.image_io`).
        """
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.high_bit_scaling = _check_high_bit_scaling(high_bit_scaling)
        logger.info("[SCOREInstanceLSJMapper] augmentations: %s", augmentations)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict[str, Any]:
        return {
            "augmentations": build_lsj_augmentations(
                image_size=cfg.INPUT.IMAGE_SIZE,
                min_scale=cfg.INPUT.MIN_SCALE,
                max_scale=cfg.INPUT.MAX_SCALE,
                random_flip=cfg.INPUT.RANDOM_FLIP,
            ),
            "image_format": cfg.INPUT.FORMAT,
            "high_bit_scaling": cfg.INPUT.HIGH_BIT_DEPTH_SCALING,
        }

    def __call__(self, dataset_dict: dict[str, Any]) -> dict[str, Any]:
        dataset_dict = copy.deepcopy(dataset_dict)  # the caller's dict is reused every epoch
        image = read_image_or_fail(dataset_dict["file_name"], self.image_format, self.high_bit_scaling)
        utils.check_image_size(dataset_dict, image)
        source_hw = image.shape[:2]

        aug_input = T.AugInput(image)
        transforms = self.augmentations(aug_input)
        image = aug_input.image
        image_shape = image.shape[:2]  # (H, W)
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))

        annos = [
            utils.transform_instance_annotations(obj, transforms, image_shape)
            for obj in dataset_dict.pop("annotations", [])
            # Degenerate masks are refused or dropped by the validation before
            # training; records that bypass it must not crash here either.
            if obj.get("iscrowd", 0) == 0 and annotation_problem(obj, *source_hw) is None
        ]
        for anno in annos:
            anno.pop("keypoints", None)
        instances = utils.annotations_to_instances(annos, image_shape, mask_format="bitmask")
        # The crop cuts objects, so boxes transformed from the annotation no
        # longer fit the masks: recompute them from the masks, then drop the
        # instances the crop emptied.
        if instances.has("gt_masks"):
            instances.gt_boxes = instances.gt_masks.get_bounding_boxes()
        else:
            # No annotation left (only crowds, or none): the model still reads gt_masks.
            instances.gt_masks = BitMasks(torch.zeros((0, *image_shape), dtype=torch.bool))
        dataset_dict["instances"] = utils.filter_empty_instances(instances)
        return dataset_dict


def train_label_encoding(dataset_names: list[str] | tuple[str, ...]) -> LabelEncoding:
    """The label encoding shared by the semantic training splits; splits that differ are an error."""
    if not dataset_names:
        raise ValueError("DATASETS.TRAIN is empty: the semantic mapper needs the label encoding of a split")
    encodings = {name: LabelEncoding.from_metadata(MetadataCatalog.get(name)) for name in dataset_names}
    first = encodings[dataset_names[0]]
    differing = {name: e for name, e in encodings.items() if e != first}
    if differing:
        raise ValueError(
            f"The semantic training splits encode their labels differently ({dataset_names[0]}: {first}; "
            f"{differing}); train on splits with one class list and one set of ignore values"
        )
    return first


@register_train_mapper("mask_former_semantic")
class SCORESemanticLSJMapper:
    """Training mapper with large-scale jitter for semantic segmentation.

    Output dict: the input's fields, plus "image" (3, S, S) uint8 tensor, "sem_seg"
    (S, S) int64 contiguous ids with ``ignore_label`` where ignored or padded, and
    "instances" (``gt_classes`` (N,), ``gt_masks`` ``BitMasks`` (N, S, S)): one mask per
    class present after the augmentation, the ignore label excluded.
    """

    @configurable
    def __init__(
        self,
        *,
        augmentations: list[T.Augmentation],
        image_format: str,
        label_encoding: LabelEncoding,
        high_bit_scaling: str = "percentile",
    ):
        """
        Args:
            augmentations: applied in order to the image and its label map.
            image_format: detectron2 image format of the output ("RGB" for CLIP).
            label_encoding: raw label values of the classes and the ignore values.
            high_bit_scaling: 8-bit stretch of images (not labels) with more than 8 bits per channel.
        """
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.label_encoding = label_encoding
        self.high_bit_scaling = _check_high_bit_scaling(high_bit_scaling)
        logger.info("[SCORESemanticLSJMapper] augmentations: %s", augmentations)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict[str, Any]:
        return {
            "augmentations": build_lsj_augmentations(
                image_size=cfg.INPUT.IMAGE_SIZE,
                min_scale=cfg.INPUT.MIN_SCALE,
                max_scale=cfg.INPUT.MAX_SCALE,
                random_flip=cfg.INPUT.RANDOM_FLIP,
            ),
            "image_format": cfg.INPUT.FORMAT,
            "label_encoding": train_label_encoding(list(cfg.DATASETS.TRAIN)),
            "high_bit_scaling": cfg.INPUT.HIGH_BIT_DEPTH_SCALING,
        }

    def __call__(self, dataset_dict: dict[str, Any]) -> dict[str, Any]:
        dataset_dict = copy.deepcopy(dataset_dict)
        image = read_image_or_fail(dataset_dict["file_name"], self.image_format, self.high_bit_scaling)
        utils.check_image_size(dataset_dict, image)
        label_file = dataset_dict.pop("sem_seg_file_name")
        label = self.label_encoding.encode(read_label(label_file), label_file)
        if label.shape != image.shape[:2]:
            raise ValueError(
                f"label {label_file!r} is {label.shape[1]}x{label.shape[0]} (WxH), "
                f"its image {dataset_dict['file_name']!r} {image.shape[1]}x{image.shape[0]}"
            )
        ignore = self.label_encoding.ignore_label
        source_hw = label.shape
        aug_input = T.AugInput(image, sem_seg=label)
        transforms = self.augmentations(aug_input)
        image, label = aug_input.image, aug_input.sem_seg
        # The crop pads the label with a value that depends on the detectron2 version (0, a
        # class, in v0.6): a map of ones through the same transforms marks the real pixels.
        inside = transforms.apply_segmentation(np.ones(source_hw, np.uint8))
        label = np.where(inside == 1, label, ignore)

        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        sem_seg = torch.as_tensor(label.astype(np.int64))
        dataset_dict["sem_seg"] = sem_seg
        classes = torch.unique(sem_seg)
        classes = classes[classes != ignore]
        instances = Instances(tuple(sem_seg.shape))
        instances.gt_classes = classes
        instances.gt_masks = BitMasks(sem_seg[None] == classes[:, None, None])
        dataset_dict["instances"] = instances
        return dataset_dict


def build_train_mapper(cfg: CfgNode) -> Callable[[dict], dict]:
    """The training mapper named by ``cfg.INPUT.DATASET_MAPPER_NAME``."""
    name = cfg.INPUT.DATASET_MAPPER_NAME
    if name not in TRAIN_MAPPERS:
        raise KeyError(f"Unknown INPUT.DATASET_MAPPER_NAME {name!r}; registered: {sorted(TRAIN_MAPPERS)}")
    return TRAIN_MAPPERS[name](cfg)


class SCORETestMapper(DatasetMapper):
    """detectron2's test ``DatasetMapper`` (resize only, annotations dropped), reading with our reader.

    Output dict: the input's fields, plus "image" (3, H, W) uint8 tensor;
    "annotations" and "sem_seg_file_name" are removed.
    """

    @configurable
    def __init__(self, *, high_bit_scaling: str = "percentile", **kwargs):
        """
        Args:
            high_bit_scaling: 8-bit stretch of images with more than 8 bits per channel.
            kwargs: ``DatasetMapper``'s arguments (``is_train`` False).
        """
        super().__init__(**kwargs)
        self.high_bit_scaling = _check_high_bit_scaling(high_bit_scaling)

    @classmethod
    def from_config(cls, cfg: CfgNode, is_train: bool = False) -> dict[str, Any]:
        if is_train:
            raise ValueError("SCORETestMapper is a test mapper; training uses INPUT.DATASET_MAPPER_NAME")
        ret = super().from_config(cfg, is_train=False)
        ret["high_bit_scaling"] = cfg.INPUT.HIGH_BIT_DEPTH_SCALING
        return ret

    def __call__(self, dataset_dict: dict[str, Any]) -> dict[str, Any]:
        dataset_dict = copy.deepcopy(dataset_dict)
        image = read_image_or_fail(dataset_dict["file_name"], self.image_format, self.high_bit_scaling)
        utils.check_image_size(dataset_dict, image)
        aug_input = T.AugInput(image)
        self.augmentations(aug_input)
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))
        dataset_dict.pop("annotations", None)
        dataset_dict.pop("sem_seg_file_name", None)
        return dataset_dict


def build_test_mapper(cfg: CfgNode) -> SCORETestMapper:
    """The test mapper: ``ResizeShortestEdge(INPUT.MIN_SIZE_TEST, INPUT.MAX_SIZE_TEST)``."""
    return SCORETestMapper(cfg)
