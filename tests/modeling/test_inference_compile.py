"""MODEL.SCORE.COMPILE_AT_INFERENCE: torch.compile of the backbone, context tower and pixel
decoder at inference, against the eager model (close outputs, equal classes), and the
recompilation of ``InferenceCompiled`` when the weights change."""

import pytest
import torch
from torch import nn

from score.modeling.inference_compile import InferenceCompiled

ALL = '["backbone", "context", "pixel_decoder"]'


@pytest.mark.slow  # inductor compiles three modules: about 80 s with a cold compile cache
def test_compiled_model_keeps_the_classes_and_close_outputs(make_inputs):
    from detectron2.modeling import build_model

    from tests.conftest import tiny_cfg

    torch.manual_seed(0)
    reference = build_model(tiny_cfg()).eval()
    compiled = build_model(tiny_cfg("MODEL.SCORE.COMPILE_AT_INFERENCE", ALL)).eval()
    assert compiled.state_dict().keys() == reference.state_dict().keys()
    compiled.load_state_dict(reference.state_dict())
    inputs = make_inputs([(64, 96)])
    for x in inputs:
        del x["instances"]
    outputs = []
    for model in (reference, compiled):
        handle = model.sem_seg_head.register_forward_hook(lambda module, args, out: outputs.append(out))
        with torch.inference_mode():
            images = model.preprocess_image(inputs).tensor
            outputs.append(model.image_features(images))
            outputs.append(model.encode_context(images))
            outputs.append(model(inputs)[0]["instances"])
        handle.remove()
    features, context, head, instances = outputs[:4]
    c_features, c_context, c_head, c_instances = outputs[4:]

    # Each module went through its compiled code.
    for wrapper in (
        compiled.backbone._compiled_features,
        compiled.context_encoder._compiled_tensors,
        compiled.sem_seg_head.pixel_decoder._compiled_forward_features,
    ):
        assert wrapper._compiled is not None
    for name, feature in features.items():
        torch.testing.assert_close(c_features[name], feature, rtol=1e-4, atol=1e-4)
    # The context tower runs in float16: inductor rounds its fused float32 work once, eager per op.
    torch.testing.assert_close(c_context.dense.float(), context.dense.float(), rtol=0, atol=2e-2)
    torch.testing.assert_close(c_head["pred_masks"], head["pred_masks"], rtol=1e-3, atol=1e-3)
    assert torch.equal(c_head["pred_logits"].argmax(-1), head["pred_logits"].argmax(-1))
    assert torch.equal(c_instances.pred_classes, instances.pred_classes)


def test_training_runs_eager(make_inputs):
    from detectron2.modeling import build_model

    from tests.conftest import tiny_cfg

    model = build_model(tiny_cfg("MODEL.SCORE.COMPILE_AT_INFERENCE", ALL)).train()
    losses = model(make_inputs([(64, 64)]))
    sum(losses.values()).backward()
    assert model.backbone._compiled_features._compiled is None
    assert model.sem_seg_head.pixel_decoder._compiled_forward_features._compiled is None


def test_unknown_module_names_are_refused():
    from detectron2.modeling import build_model

    from tests.conftest import tiny_cfg

    with pytest.raises(ValueError, match="COMPILE_AT_INFERENCE: unknown module"):
        build_model(tiny_cfg("MODEL.SCORE.COMPILE_AT_INFERENCE", '["decoder"]'))


def test_inference_compiled_follows_changed_weights():
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4)).eval()
    compiled = InferenceCompiled(module.forward, module, "a test module")
    x = torch.randn(3, 8)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), module(x))
        first = compiled._compiled
        compiled(x)
        assert compiled._compiled is first  # unchanged weights: the same compiled code
        module[0].weight.mul_(2)  # in place, as a checkpoint load does
        torch.testing.assert_close(compiled(x), module(x))
        assert compiled._compiled is not first
        module.load_state_dict({k: torch.randn_like(v) for k, v in module.state_dict().items()})
        torch.testing.assert_close(compiled(x), module(x))
