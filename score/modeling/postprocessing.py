"""Instance (SCORE.md 7.4) and semantic (7.5) inference of SCORE from per-query logits and masks.

Shorthand: Q queries, K classes, R = number of kept detections, h x w mask
size of the head (stride 4 of the padded input), Hp x Wp padded input size,
H x W original image size.
"""

from __future__ import annotations

import itertools
from typing import List, Tuple

import torch
import torch.nn.functional as F
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import Boxes, Instances
from torch import Tensor

from ..profiling import profiled

__all__ = ["instance_inference", "mask_boxes", "resize_mask_logits", "semantic_inference"]

# Masks resized and scored together in instance inference (a speed setting, not a result one).
_MASKS_PER_CHUNK = 8
# Semantic inference: at most this many mask pixels (queries x pixels) held at once at the
# padded or original size; a memory bound, not a result setting (64 MB of float32).
SEMANTIC_CHUNK_ELEMENTS = 1 << 24


def _mask_chunks(num_masks: int) -> List[slice]:
    """Slices of at most ``_MASKS_PER_CHUNK`` of ``num_masks`` masks, none of 3 unless there are 3.

    PyTorch's CPU bilinear ``interpolate`` (torch 2.14) rounds a 3-channel input differently
    in the last bit from any other channel count (measured: 1 to 32 channels, float32), so a
    chunk of 3 masks would not reproduce the resizing of all of them at once.
    """
    sizes = [_MASKS_PER_CHUNK] * (num_masks // _MASKS_PER_CHUNK)
    if num_masks % _MASKS_PER_CHUNK:
        sizes.append(num_masks % _MASKS_PER_CHUNK)
    if num_masks != 3 and sizes and sizes[-1] == 3:
        sizes[-1:] = [2, 1]
    bounds = [0, *itertools.accumulate(sizes)]
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def resize_mask_logits(
    mask_logits: Tensor,
    padded_size: Tuple[int, int],
    image_size: Tuple[int, int],
    output_size: Tuple[int, int],
) -> Tensor:
    """(R, h, w) head logits -> (R, H, W): upsample to the padded input, crop the padding, resize.

    The same steps as detectron2's ``sem_seg_postprocess`` used by Mask2Former.
    """
    logits = F.interpolate(mask_logits[None], size=padded_size, mode="bilinear", align_corners=False)
    logits = logits[..., : image_size[0], : image_size[1]]
    if tuple(output_size) == tuple(logits.shape[-2:]):
        # Bilinear resizing to the same size (align_corners False) is the identity: skip the pass.
        return logits[0]
    return F.interpolate(logits, size=output_size, mode="bilinear", align_corners=False)[0]


def mask_boxes(masks: Tensor) -> Tensor:
    """(R, H, W) bool masks -> (R, 4) float32 tight boxes (x0, y0, x1, y1), zeros for empty masks.

    The boxes of detectron2's ``BitMasks.get_bounding_boxes`` (x1 = last column + 1), without its
    loop over masks; the row / column occupancy is a uint8 max, much faster than ``any`` on bool.
    """
    as_bytes = masks.view(torch.uint8)
    cols = as_bytes.amax(dim=1).bool()  # (R, W)
    rows = as_bytes.amax(dim=2).bool()  # (R, H)

    def first_last(occupied: Tensor) -> Tuple[Tensor, Tensor]:
        size = occupied.shape[1]
        first = occupied.byte().argmax(dim=1)  # argmax gives the first maximum
        last = size - 1 - occupied.flip(1).byte().argmax(dim=1)
        return first, last + 1

    x0, x1 = first_last(cols)
    y0, y1 = first_last(rows)
    boxes = torch.stack([x0, y0, x1, y1], dim=1).float()
    return boxes * cols.any(dim=1, keepdim=True)


@profiled("score.postprocessing")
def instance_inference(
    class_logits: Tensor,
    mask_logits: Tensor,
    *,
    padded_size: Tuple[int, int],
    image_size: Tuple[int, int],
    output_size: Tuple[int, int],
    max_detections: int,
) -> Instances:
    """Top-``max_detections`` (query, class) pairs of one image as detectron2 ``Instances``.

    Args:
        class_logits: (Q, K + 1) final logits, void last.
        mask_logits: (Q, h, w) mask logits of the head.
        padded_size: size of the padded batch the head saw (Hp, Wp).
        image_size: size of this image inside the padded batch.
        output_size: (H, W) of the original image.
        max_detections: TEST.DETECTIONS_PER_IMAGE (300 in the recipe).

    Scores are softmax(class_logits)[:, :K] flattened over Q x K; each pick
    gives a class and its query's mask. The binary mask is logits > 0, the box
    its tight box, and the score the class score times the mean sigmoid
    probability inside the binary mask. Only the masks of the picked queries
    are resized to the image, binarised, scored and boxed, once per distinct
    query; detections of the same query share those results.
    """
    num_classes = class_logits.shape[1] - 1
    scores = class_logits.softmax(-1)[:, :num_classes]
    k = min(max_detections, scores.numel())
    top_scores, top_index = scores.flatten().topk(k, sorted=False)
    query_index = torch.div(top_index, num_classes, rounding_mode="floor")
    classes = top_index % num_classes

    queries, inverse = torch.unique(query_index, return_inverse=True)
    binary = torch.empty((len(queries), *output_size), dtype=torch.bool, device=mask_logits.device)
    mask_scores = []
    # A few masks at a time: the float temporaries at the image size (resized logits,
    # sigmoid, product) then stay in the cache instead of being allocated, faulted in and
    # streamed through memory for all R masks at once (R x H x W x 4 bytes each). Each
    # mask is resized, binarised and reduced on its own, so the values are the same.
    for chunk in _mask_chunks(len(queries)):
        logits = resize_mask_logits(mask_logits[queries[chunk]], padded_size, image_size, output_size)
        chunk_binary = torch.gt(logits, 0, out=binary[chunk])
        area = chunk_binary.flatten(1).sum(1)
        mask_scores.append((logits.sigmoid() * chunk_binary).flatten(1).sum(1) / (area + 1e-6))
    mask_scores = torch.cat(mask_scores) if mask_scores else mask_logits.new_zeros(0)

    result = Instances(output_size)
    result.pred_masks = binary[inverse]
    result.pred_boxes = Boxes(mask_boxes(binary)[inverse])
    result.scores = top_scores * mask_scores[inverse]
    result.pred_classes = classes
    return result


@profiled("score.semantic_inference")
def semantic_inference(
    class_logits: Tensor,
    mask_logits: Tensor,
    *,
    padded_size: Tuple[int, int],
    image_size: Tuple[int, int],
    output_size: Tuple[int, int],
    postprocess_before_inference: bool = False,
    chunk_elements: int = SEMANTIC_CHUNK_ELEMENTS,
) -> Tensor:
    """Mask2Former's ``semantic_inference`` and ``sem_seg_postprocess`` for one image, over chunks of queries.

    semseg[c] = sum_q softmax(class_logits)[q, c] * sigmoid(M_q), void dropped after
    the softmax. The order of Mask2Former is kept: the mask logits are upsampled
    (bilinear) to the padded input size, then the sigmoid; the (K, Hp, Wp) map is
    then cropped to the image and resized to the original size. With
    ``postprocess_before_inference`` the mask logits are cropped and resized to the
    original size first and the sum is taken there (Mask2Former's
    SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE). Each chunk of queries is resized and
    summed on its own, so no more than ``chunk_elements`` mask pixels exist at once
    besides the (K, ...) sum: the sum is the same as over all queries at once, up to
    the order of the float additions.

    Args:
        class_logits: (Q, K + 1) final logits (after the ensemble of 7.3), void last.
        mask_logits: (Q, h, w) mask logits of the head.
        padded_size: (Hp, Wp) of the padded batch the head saw.
        image_size: size of this image inside the padded batch.
        output_size: (H, W) of the original image.
        postprocess_before_inference: sum at the original size instead of the padded one.
        chunk_elements: bound on queries x pixels resized at once.

    Returns:
        (K, H, W) float class scores (detectron2's "sem_seg").
    """
    probs = class_logits.softmax(-1)[:, :-1]
    num_queries, num_classes = probs.shape
    target = tuple(output_size) if postprocess_before_inference else tuple(padded_size)
    semseg = mask_logits.new_zeros((num_classes, target[0] * target[1]))
    step = max(1, chunk_elements // (target[0] * target[1]))
    for start in range(0, num_queries, step):
        chunk = slice(start, start + step)
        if postprocess_before_inference:
            masks = resize_mask_logits(mask_logits[chunk], padded_size, image_size, output_size)
        else:
            masks = F.interpolate(mask_logits[chunk][None], size=target, mode="bilinear", align_corners=False)
            masks = masks[0]
        masks = masks.sigmoid_().flatten(1)  # (q, pixels)
        # einsum("qc,qhw->chw") of this chunk, added in place.
        semseg.addmm_(probs[chunk].t().to(masks.dtype), masks)
    semseg = semseg.view(num_classes, *target)
    if postprocess_before_inference:
        return semseg
    return sem_seg_postprocess(semseg, image_size, *output_size)
