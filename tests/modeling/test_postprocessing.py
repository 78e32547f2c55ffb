"""Instance inference of SCORE.md 7.4 against a direct computation."""

import pytest
import torch
import torch.nn.functional as F
from detectron2.structures import BitMasks, Instances

from score.modeling.postprocessing import _mask_chunks, instance_inference, mask_boxes, resize_mask_logits


def _direct(class_logits, mask_logits, padded, image, out, k):
    scores = class_logits.softmax(-1)[:, :-1]
    num_classes = scores.shape[1]
    top, idx = scores.flatten().topk(k)
    masks = F.interpolate(mask_logits[None], size=padded, mode="bilinear", align_corners=False)
    masks = masks[..., : image[0], : image[1]]
    masks = F.interpolate(masks, size=out, mode="bilinear", align_corners=False)[0]
    results = []
    for s, i in zip(top.tolist(), idx.tolist()):
        q, c = divmod(i, num_classes)
        binary = masks[q] > 0
        mask_score = (masks[q].sigmoid() * binary).sum() / (binary.sum() + 1e-6)
        results.append((c, s * mask_score.item(), binary))
    return results


def test_topk_classes_masks_scores_and_boxes():
    torch.manual_seed(0)
    class_logits = torch.randn(6, 4)  # 6 queries, 3 classes + void
    mask_logits = torch.randn(6, 8, 10)
    result = instance_inference(
        class_logits,
        mask_logits,
        padded_size=(32, 40),
        image_size=(30, 37),
        output_size=(45, 50),
        max_detections=5,
    )
    assert isinstance(result, Instances) and result.image_size == (45, 50) and len(result) == 5
    assert result.pred_masks.dtype == torch.bool and result.pred_masks.shape == (5, 45, 50)
    expected = _direct(class_logits, mask_logits, (32, 40), (30, 37), (45, 50), 5)
    got = sorted(
        zip(result.pred_classes.tolist(), result.scores.tolist(), result.pred_masks), key=lambda t: -t[1]
    )
    expected = sorted(expected, key=lambda t: -t[1])
    for (c, s, m), (ec, es, em) in zip(got, expected):
        assert c == ec and abs(s - es) < 1e-5 and torch.equal(m, em)
    for box, mask in zip(result.pred_boxes.tensor, result.pred_masks):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        if len(ys):
            assert box.tolist() == [
                xs.min().item(),
                ys.min().item(),
                xs.max().item() + 1,
                ys.max().item() + 1,
            ]


def test_fewer_pairs_than_detections_and_empty_masks():
    class_logits = torch.randn(2, 3)
    mask_logits = torch.full((2, 4, 4), -5.0)  # no positive pixel anywhere
    result = instance_inference(
        class_logits,
        mask_logits,
        padded_size=(16, 16),
        image_size=(16, 16),
        output_size=(16, 16),
        max_detections=300,
    )
    assert len(result) == 4  # Q x K = 2 x 2
    assert not result.pred_masks.any()
    assert torch.all(result.scores == 0)
    assert torch.all(result.pred_boxes.tensor == 0)


def test_mask_boxes_equal_detectron2_boxes():
    """The vectorised boxes equal BitMasks.get_bounding_boxes, empty and one-pixel masks included."""
    generator = torch.Generator().manual_seed(0)
    masks = torch.rand(6, 37, 53, generator=generator) > 0.97
    masks[0] = False
    masks[1] = False
    masks[1, 36, 52] = True
    masks[2] = False
    masks[2, 5:9, 0:3] = True
    expected = BitMasks(masks).get_bounding_boxes().tensor
    assert torch.equal(mask_boxes(masks), expected)
    assert mask_boxes(masks).dtype == torch.float32


def test_resize_to_the_same_size_equals_interpolation():
    """Skipping the identity resize gives what the bilinear pass gives; other sizes still resize."""
    logits = torch.randn(3, 16, 24)
    same = resize_mask_logits(logits, (64, 96), (60, 90), (60, 90))
    up = F.interpolate(logits[None], size=(64, 96), mode="bilinear", align_corners=False)[..., :60, :90]
    assert torch.equal(same, F.interpolate(up, size=(60, 90), mode="bilinear", align_corners=False)[0])
    other = resize_mask_logits(logits, (64, 96), (60, 90), (30, 45))
    assert torch.equal(other, F.interpolate(up, size=(30, 45), mode="bilinear", align_corners=False)[0])


def _all_masks_at_once(class_logits, mask_logits, padded_size, image_size, output_size, k):
    """The previous instance inference: every kept query's mask resized and scored in one pass."""
    num_classes = class_logits.shape[1] - 1
    top_scores, top_index = class_logits.softmax(-1)[:, :num_classes].flatten().topk(k, sorted=False)
    queries, inverse = torch.unique(top_index // num_classes, return_inverse=True)
    logits = resize_mask_logits(mask_logits[queries], padded_size, image_size, output_size)
    binary = logits > 0
    mask_scores = (logits.sigmoid() * binary).flatten(1).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
    return top_scores * mask_scores[inverse], binary[inverse], top_index % num_classes


@pytest.mark.parametrize("num_queries", [1, 3, 4, 8, 11, 19, 27])
@pytest.mark.parametrize("output_size", [(60, 85), (75, 101)])
def test_masks_scored_in_chunks_equal_all_at_once(num_queries, output_size):
    """Equal to the bit, chunk remainders of 3 and a total of 3 masks included (_mask_chunks)."""
    generator = torch.Generator().manual_seed(num_queries)
    class_logits = torch.randn(num_queries, 3, generator=generator)
    mask_logits = 3 * torch.randn(num_queries, 16, 24, generator=generator)
    k = 2 * num_queries  # every query kept, most of them twice
    result = instance_inference(
        class_logits,
        mask_logits,
        padded_size=(64, 96),
        image_size=(60, 85),
        output_size=output_size,
        max_detections=k,
    )
    scores, masks, classes = _all_masks_at_once(class_logits, mask_logits, (64, 96), (60, 85), output_size, k)
    assert torch.equal(result.scores, scores)
    assert torch.equal(result.pred_masks, masks)
    assert torch.equal(result.pred_classes, classes)
    # The resized logits themselves (the scores can absorb a last-bit difference).
    chunked = [
        resize_mask_logits(mask_logits[chunk], (64, 96), (60, 85), output_size)
        for chunk in _mask_chunks(num_queries)
    ]
    assert torch.equal(torch.cat(chunked), resize_mask_logits(mask_logits, (64, 96), (60, 85), output_size))


def test_mask_chunks_cover_every_mask_once_and_avoid_three():
    for num_masks in range(0, 40):
        chunks = _mask_chunks(num_masks)
        covered = [i for chunk in chunks for i in range(num_masks)[chunk]]
        assert covered == list(range(num_masks))
        sizes = [chunk.stop - chunk.start for chunk in chunks]
        assert all(0 < size <= 8 for size in sizes)
        assert 3 not in sizes or num_masks == 3
