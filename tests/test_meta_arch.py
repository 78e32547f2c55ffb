"""The whole SCORE model on the tiny config: training step, inference, checkpoints."""

import copy

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import Instances

from score.checkpoint import SCORECheckpointer
from tests.conftest import tiny_cfg


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(tiny_cfg())


def test_training_step_losses_and_gradients(model, make_inputs):
    model.train()
    losses = model(make_inputs([(96, 128), (70, 90)]))
    names = {"loss_ce", "loss_mask", "loss_dice"}
    expected = names | {f"{n}_{i}" for n in names for i in range(9)}
    assert set(losses) == expected
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()

    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p for n, p in model.named_parameters() if not p.requires_grad}
    assert trainable and frozen
    missing = [n for n, p in trainable.items() if p.grad is None]
    assert not missing, f"trainable parameters without gradient: {missing}"
    assert all(torch.isfinite(p.grad).all() for p in trainable.values())
    assert all(p.grad is None for p in frozen.values())
    # Only the decoders, RAI, GCA, the void embedding and the logit scale train (SCORE.md 8).
    assert not any(n.startswith(("backbone.", "context_encoder.")) for n in trainable)
    model.zero_grad(set_to_none=True)


def test_frozen_towers_stay_in_eval_mode(model):
    model.train()
    assert model.sem_seg_head.training
    assert not model.backbone.training and not model.backbone.clip_model.training
    assert not model.context_encoder.training and not model.context_encoder.clip_model.training


def test_rai_warmup_advances_once_per_training_iteration(model, make_inputs):
    model.train()
    before = int(model.rai.iteration)
    model(make_inputs([(64, 64)]))
    assert int(model.rai.iteration) == before + 1
    model.eval()
    with torch.no_grad():
        model(make_inputs([(64, 64)]))
    assert int(model.rai.iteration) == before + 1


@pytest.mark.parametrize("sizes", [[(97, 131)], [(45, 200), (130, 60)]])
def test_inference_on_odd_sizes(model, make_inputs, sizes):
    model.eval()
    inputs = make_inputs(sizes)
    for x in inputs:
        del x["instances"]
    with torch.no_grad():
        outputs = model(inputs)
    assert len(outputs) == len(sizes)
    for out, (h, w) in zip(outputs, sizes):
        inst = out["instances"]
        assert isinstance(inst, Instances) and inst.image_size == (h, w)
        assert len(inst) == min(100, 20 * 15)
        assert inst.pred_masks.shape[1:] == (h, w) and inst.pred_masks.dtype == torch.bool
        assert inst.pred_classes.max() < 15 and (inst.scores >= 0).all() and (inst.scores <= 1).all()


def test_inference_reports_at_original_size(model, make_inputs):
    model.eval()
    inputs = make_inputs([(64, 96)])
    inputs[0].update(height=128, width=192)
    del inputs[0]["instances"]
    with torch.no_grad():
        inst = model(inputs)[0]["instances"]
    assert inst.image_size == (128, 192) and inst.pred_masks.shape[1:] == (128, 192)


def test_training_on_an_image_without_objects(model, make_inputs):
    model.train()
    losses = model(make_inputs([(64, 64)], num_instances=0))
    assert all(torch.isfinite(v) for v in losses.values())


def test_vocabulary_switch_changes_classes(model, make_inputs):
    model.eval()
    model.set_vocabulary(["ship", "harbor"])
    inputs = make_inputs([(64, 64)])
    del inputs[0]["instances"]
    with torch.no_grad():
        inst = model(inputs)[0]["instances"]
    assert inst.pred_classes.max() < 2 and len(inst) == 20 * 2
    with pytest.raises(ValueError, match="empty"):
        model.set_vocabulary([])
    model.set_vocabulary(model.train_class_names)


def test_checkpoint_round_trip_gives_identical_outputs(model, make_inputs, tmp_path):
    model.train()
    for _ in range(2):
        model(make_inputs([(64, 64)]))
    SCORECheckpointer(model, str(tmp_path)).save("model")

    torch.manual_seed(123)
    other = build_model(tiny_cfg())
    assert int(other.rai.iteration) == 0
    SCORECheckpointer(other).load(str(tmp_path / "model.pth"))
    assert int(other.rai.iteration) == int(model.rai.iteration)

    model.eval()
    other.eval()
    inputs = make_inputs([(80, 72)])
    del inputs[0]["instances"]
    with torch.no_grad():
        a = model(copy.deepcopy(inputs))[0]["instances"]
        b = other(inputs)[0]["instances"]
    assert torch.equal(a.pred_classes, b.pred_classes)
    torch.testing.assert_close(a.scores, b.scores)
    assert torch.equal(a.pred_masks, b.pred_masks)


def test_baseline_has_no_context_branch():
    model = build_model(tiny_cfg("MODEL.SCORE.RAI.ENABLED", "False", "MODEL.SCORE.GCA.MODE", "none"))
    assert model.context_encoder is None and model.rai is None
    assert not any(n.startswith("context_encoder.") for n, _ in model.named_parameters())


ABLATIONS = {
    "table2_rai_only": ["MODEL.SCORE.GCA.MODE", "none"],
    "table2_gca_only": ["MODEL.SCORE.RAI.ENABLED", "False"],
    "table4_cls": ["MODEL.SCORE.RAI.CONTEXT_SOURCE", "cls"],
    "table4_patch": ["MODEL.SCORE.RAI.CONTEXT_SOURCE", "patch", "MODEL.SCORE.RAI.PATCH_LAYER", "1"],
    "table5_add": ["MODEL.SCORE.GCA.MODE", "add"],
    "table5_concat": ["MODEL.SCORE.GCA.MODE", "concat"],
    "table6_rsclip": ["MODEL.SCORE.OUT_VOCAB_SOURCE", "rsclip"],
    "paper_dilation": ["MODEL.SCORE.RAI.DILATION", "paper"],
    "context_float32": ["MODEL.SCORE.RSCLIP_DTYPE", "float32", "MODEL.SCORE.RSCLIP_QUICK_GELU", "False"],
}


@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_every_ablation_trains_and_infers(name, make_inputs):
    torch.manual_seed(0)
    model = build_model(tiny_cfg(*ABLATIONS[name]))
    model.train()
    losses = model(make_inputs([(64, 96)]))
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"{name}: trainable parameters without gradient: {no_grad}"

    model.eval()
    inputs = make_inputs([(70, 50)])
    del inputs[0]["instances"]
    with torch.no_grad():
        instances = model(inputs)[0]["instances"]
    assert len(instances) > 0 and torch.isfinite(instances.scores).all()


def test_rai_kernel_is_fixed_after_the_last_warmup_update(make_inputs, monkeypatch):
    """Warm-up + 1 iterations; the last warm-up update flips the argmax; the next forward uses it."""
    import score.modeling.rai as rai_module

    warmup = 2
    torch.manual_seed(0)
    model = build_model(tiny_cfg("MODEL.SCORE.RAI.GUMBEL_WARMUP_ITERS", str(warmup))).train()
    rai = model.rai
    candidates = list(rai.kernel_candidates)
    optimizer = torch.optim.SGD([rai.kernel_logits], lr=1.0)
    with torch.no_grad():
        rai.kernel_logits.zero_()
        rai.kernel_logits[0] = 1.0
    for it in range(warmup):
        assert rai.in_gumbel_phase
        sum(model(make_inputs([(64, 64)], seed=it)).values()).backward()
        if it == warmup - 1:
            # The last update moves the argmax from the first candidate to the last.
            flip = torch.zeros_like(rai.kernel_logits)
            flip[0], flip[-1] = 2.0, -2.0
            rai.kernel_logits.grad = flip
            assert int(rai.kernel_logits.argmax()) == 0
        optimizer.step()
        model.zero_grad(set_to_none=True)
    assert int(rai.kernel_logits.argmax()) == len(candidates) - 1

    used = []
    dilate = rai_module.dilate

    def spy(mask_logits, kernel):
        used.append(kernel)
        return dilate(mask_logits, kernel)

    monkeypatch.setattr(rai_module, "dilate", spy)
    model(make_inputs([(64, 64)], seed=warmup))
    assert not rai.in_gumbel_phase
    assert used and set(used) == {candidates[-1]}
    assert int(rai.fixed_kernel) == candidates[-1] == rai.current_kernel()


def test_head_is_built_from_the_registry_by_name(tmp_path):

    from detectron2.engine import default_argument_parser
    from detectron2.modeling import SEM_SEG_HEADS_REGISTRY

    from score.modeling.head import SCOREHead
    from tests.conftest import TINY_CONFIG, load_script

    assert SEM_SEG_HEADS_REGISTRY.get("SCOREHead") is SCOREHead
    train_net = load_script("train_net.py")
    args = default_argument_parser().parse_args(
        ["--config-file", str(TINY_CONFIG), "--eval-only", "OUTPUT_DIR", str(tmp_path), "DATASETS.TEST", "()"]
        + ["MODEL.SEM_SEG_HEAD.NAME", "NoSuchHead"]  # no test split: its data would be checked first
    )
    with pytest.raises(KeyError, match="No object named 'NoSuchHead' found in 'SEM_SEG_HEADS' registry"):
        train_net.main(args)


@pytest.mark.parametrize(("value", "expected"), [(-1, 32), (0, 32), (64, 64)])
def test_size_divisibility_minus_one_is_the_backbones(value, expected, make_inputs):
    model = build_model(tiny_cfg("MODEL.MASK_FORMER.SIZE_DIVISIBILITY", str(value)))
    assert model.backbone.size_divisibility == 32
    assert model.size_divisibility == expected
    assert model.preprocess_image(make_inputs([(70, 50)])).tensor.shape[-2:] == (
        -(-70 // expected) * expected,
        -(-50 // expected) * expected,
    )


def test_negative_size_divisibility_other_than_minus_one_is_refused():
    with pytest.raises(ValueError, match="SIZE_DIVISIBILITY must be positive or -1.* not -2"):
        build_model(tiny_cfg("MODEL.MASK_FORMER.SIZE_DIVISIBILITY", "-2"))
