"""tools/bench/gpu_check.py: the bf16 comparison's verdicts and the AMP verdict, on hand-made outputs."""

import os

import pytest
import torch

from tests.conftest import load_script

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def gpu_check():
    return load_script("tools/bench/gpu_check.py")


def _outputs(logits):
    masks = torch.full((1, logits.shape[1], 4, 4), -1.0)
    masks[..., :2, :2] = 1.0
    return {"logits": logits, "masks": masks}


def test_compare_outputs_tolerance_ties_and_masks(gpu_check):
    # Query 0 is decidable (margin 2), query 1 a tie (margin 0.05 < 2 * LOGIT_ATOL).
    ref = torch.tensor([[[3.0, 1.0, 0.0], [1.0, 1.05, 0.0]]])
    same = gpu_check.compare_outputs(_outputs(ref), _outputs(ref.clone()))
    assert same["pass"] and same["max_abs_logit_diff"] == 0 and same["decidable_queries"] == 1

    tie_flip = ref.clone()
    tie_flip[0, 1, :2] = torch.tensor([1.05, 1.0])  # argmax changes on the tie only
    result = gpu_check.compare_outputs(_outputs(ref), _outputs(tie_flip))
    assert result["pass"] and not result["classes_equal_all"]

    far = ref.clone()
    far[0, 0, 0] += 1.0  # beyond 0.1 + 0.05 * 3
    assert not gpu_check.compare_outputs(_outputs(ref), _outputs(far))["logits_within_tol"]

    other = _outputs(ref.clone())
    other["masks"][..., :2, :2] = -1.0
    other["masks"][..., 2:, 2:] = 1.0
    result = gpu_check.compare_outputs(_outputs(ref), other)
    assert result["min_mask_iou"] == 0 and not result["pass"]


def test_amp_verdict(gpu_check):
    ok = {"losses_finite": True, "grads_finite": True, "params_without_grad": "", "skipped_by_scaler": False}
    fixed = dict(ok, params_without_grad="sem_seg_head.predictor.rai.kernel_logits")
    rows = [dict(ok, rai_phase="gumbel"), dict(fixed, rai_phase="fixed")]
    assert gpu_check.verdict({"amp_train": rows})["amp_train"] is True
    # A skipped (overflowing) step may have non-finite gradients; a taken one may not.
    skipped = dict(ok, rai_phase="gumbel", grads_finite=False, skipped_by_scaler=True)
    assert gpu_check.verdict({"amp_train": [skipped] + rows})["amp_train"] is True
    assert gpu_check.verdict({"amp_train": [dict(skipped, skipped_by_scaler=False)]})["amp_train"] is False
    # In the Gumbel phase the kernel logits must get a gradient.
    assert gpu_check.verdict({"amp_train": [dict(fixed, rai_phase="gumbel")]})["amp_train"] is False
    gated = {"pass": False, "gates_verdict": True}
    info = {"pass": False, "gates_verdict": False}
    assert gpu_check.verdict({"bf16_inference": [{**gated, "pass": True}, info]})["bf16_inference"] is True
    assert gpu_check.verdict({"bf16_inference": [gated, info]})["bf16_inference"] is False
