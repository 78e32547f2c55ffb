"""Semantic inference of SCORE.md 7.5 against Mask2Former's computation, and its wiring in the model."""

import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling import build_model

from score.modeling.open_vocab import geometric_ensemble
from score.modeling.postprocessing import semantic_inference
from tests.conftest import tiny_cfg


def _mask2former(class_logits, mask_logits, padded, image, out, before=False):
    """Mask2Former's order, all Q masks at once: upsample logits to the padded size, then
    (before=False) sigmoid, einsum, crop and resize the class map; or (before=True) crop and
    resize the logits, then sigmoid and einsum."""
    masks = F.interpolate(mask_logits[None], size=padded, mode="bilinear", align_corners=False)[0]
    probs = F.softmax(class_logits, dim=-1)[..., :-1]
    if before:
        masks = masks[:, : image[0], : image[1]]
        masks = F.interpolate(masks[None], size=out, mode="bilinear", align_corners=False)[0]
        return torch.einsum("qc,qhw->chw", probs, masks.sigmoid())
    semseg = torch.einsum("qc,qhw->chw", probs, masks.sigmoid())
    semseg = semseg[:, : image[0], : image[1]]
    return F.interpolate(semseg[None], size=out, mode="bilinear", align_corners=False)[0]


@pytest.mark.parametrize("before", [False, True])
@pytest.mark.parametrize("chunk_elements", [1 << 24, 1, 32 * 40 * 3])
def test_semantic_inference_equals_mask2former_order_in_every_chunking(before, chunk_elements):
    torch.manual_seed(0)
    class_logits = torch.randn(7, 5)  # 7 queries, 4 classes + void
    mask_logits = torch.randn(7, 8, 10) * 4
    got = semantic_inference(
        class_logits,
        mask_logits,
        padded_size=(32, 40),
        image_size=(30, 37),
        output_size=(45, 50),
        postprocess_before_inference=before,
        chunk_elements=chunk_elements,
    )
    expected = _mask2former(class_logits, mask_logits, (32, 40), (30, 37), (45, 50), before)
    assert got.shape == (4, 45, 50)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_semantic_inference_drops_void_after_the_softmax():
    # One query, certain of void: every class score is ~0, not renormalised to 1.
    class_logits = torch.tensor([[0.0, 0.0, 20.0]])
    mask_logits = torch.full((1, 4, 4), 10.0)
    got = semantic_inference(
        class_logits, mask_logits, padded_size=(4, 4), image_size=(4, 4), output_size=(4, 4)
    )
    assert got.max() < 1e-8


def test_the_two_orders_differ_so_the_switch_matters():
    torch.manual_seed(1)
    class_logits, mask_logits = torch.randn(5, 4), torch.randn(5, 6, 6) * 5
    kwargs = dict(padded_size=(24, 24), image_size=(20, 22), output_size=(37, 41))
    after = semantic_inference(class_logits, mask_logits, **kwargs)
    before = semantic_inference(class_logits, mask_logits, postprocess_before_inference=True, **kwargs)
    assert not torch.allclose(after, before, atol=1e-4)


@pytest.fixture(scope="module")
def semantic_model():
    torch.manual_seed(0)
    cfg = tiny_cfg(
        "MODEL.MASK_FORMER.TEST.SEMANTIC_ON", "True",
        "MODEL.MASK_FORMER.TEST.INSTANCE_ON", "False",
    )  # fmt: skip
    return build_model(cfg).eval()


def test_model_semantic_output_is_semantic_inference_of_the_ensembled_logits(semantic_model):
    model = semantic_model
    torch.manual_seed(3)
    image = torch.randint(0, 256, (3, 70, 90), dtype=torch.uint8)
    inputs = [{"image": image, "height": 140, "width": 180}]
    captured = {}

    def keep(module, args, output):
        captured["outputs"] = output

    handle = model.sem_seg_head.register_forward_hook(keep)
    try:
        with torch.no_grad():
            result = model(inputs)[0]
    finally:
        handle.remove()
    assert set(result) == {"sem_seg"}
    assert result["sem_seg"].shape == (len(model.test_class_names), 140, 180)
    # Recompute from the head's outputs: ensemble (7.3) first, then Mask2Former's semantic inference.
    outputs = captured["outputs"]
    with torch.no_grad():
        images = model.preprocess_image(inputs)
        features = model.image_features(images.tensor)
        out_logits, _ = model.out_vocab_logits(features, None, outputs["pred_masks"])
        final = geometric_ensemble(
            outputs["pred_logits"], out_logits, model._seen, model.geometric_ensemble_alpha,
            model.geometric_ensemble_beta, None,
        )  # fmt: skip
    padded = tuple(images.tensor.shape[-2:])
    expected = _mask2former(final[0], outputs["pred_masks"][0], padded, (70, 90), (140, 180))
    torch.testing.assert_close(result["sem_seg"], expected, rtol=1e-4, atol=1e-6)
    # Without the ensemble (the head's own logits) the map is another one: the ensemble is applied.
    raw = _mask2former(outputs["pred_logits"][0], outputs["pred_masks"][0], padded, (70, 90), (140, 180))
    assert not torch.allclose(result["sem_seg"], raw, atol=1e-4)


def test_both_tasks_give_both_outputs_and_none_is_refused():
    torch.manual_seed(0)
    model = build_model(tiny_cfg("MODEL.MASK_FORMER.TEST.SEMANTIC_ON", "True")).eval()
    with torch.no_grad():
        result = model([{"image": torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)}])[0]
    assert set(result) == {"sem_seg", "instances"}
    # INSTANCE_ON implies the original-size order, as in Mask2Former.
    assert model.sem_seg_postprocess_before_inference
    with pytest.raises(ValueError, match="SEMANTIC_ON and MODEL.MASK_FORMER.TEST.INSTANCE_ON"):
        build_model(tiny_cfg("MODEL.MASK_FORMER.TEST.INSTANCE_ON", "False"))
