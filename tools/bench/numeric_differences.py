#!/usr/bin/env python
"""Size of each numeric variant of SCORE against its default computation, on the tiny model.

    python tools/bench/numeric_differences.py                  # tiny config, random weights, CPU
    python tools/bench/numeric_differences.py --size 256 --seed 1

The default path computes as the authors do (docs/DESIGN.md, "Numeric
differences from the authors' computation"). Each row switches one thing to
the other computation, runs the same inputs with the same weights and random
state, and reports how far it moves:

* ``pred_logits``: max |diff| / max |default| of the head's final class logits;
* ``masks``: max |diff| of the final mask logits, and the share of mask pixels
  whose sign (M > 0) flips;
* ``loss``: max over the weighted losses of |diff| / |default| (training mode);
* ``scores``: max |diff| of the final instance scores (after the ensemble).

Rows: the fused decoder attention (``MODEL.SCORE.DECODER_FUSED_ATTENTION``);
the context tower's attention through PyTorch's MHA fast path; GCA normalising
g in float32; the float32 context tower (``MODEL.SCORE.RSCLIP_DTYPE``); the
bfloat16 frozen ConvNeXt tower (``MODEL.SCORE.FROZEN_TOWERS_AUTOCAST``); the
ensemble as a product of probabilities instead of in log space. Random weights
are far from trained ones (near-uniform classes), so the figures say how large
each difference is in kind, not what it does to AP.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
from typing import Callable, Dict, Iterator

import score  # noqa: F401  (detectron2 compatibility shims and registrations first)

# isort: split
import torch
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Instances

import score.modeling.context.remoteclip as remoteclip
from score.config import get_score_cfg

TINY_CONFIG = "configs/tiny/score_tiny_isaid.yaml"


def _inputs(size: int, seed: int, with_targets: bool) -> list:
    g = torch.Generator().manual_seed(seed)
    batch = []
    for _ in range(2):
        image = torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=g)
        item = {"image": image, "height": size, "width": size}
        if with_targets:
            masks = torch.zeros(3, size, size, dtype=torch.bool)
            for i in range(3):
                y, x = (int(v) for v in torch.randint(0, size // 2, (2,), generator=g))
                masks[i, y : y + size // 3, x : x + size // 3] = True
            instances = Instances((size, size))
            instances.gt_classes = torch.randint(0, 15, (3,), generator=g)
            instances.gt_masks = BitMasks(masks)
            item["instances"] = instances
        batch.append(item)
    return batch


def _run(model, size: int, seed: int) -> Dict[str, object]:
    """Inference (head outputs and instance scores) and one training forward (losses)."""
    recorded = {}
    handle = model.sem_seg_head.register_forward_hook(lambda m, a, out: recorded.update(head=out))
    model.eval()
    torch.manual_seed(seed)
    with torch.no_grad():
        results = model(_inputs(size, seed, with_targets=False))
    head = recorded["head"]
    model.train()
    torch.manual_seed(seed)
    with torch.no_grad():
        losses = model(_inputs(size, seed, with_targets=True))
    handle.remove()
    return {
        "pred_logits": head["pred_logits"],
        "pred_masks": head["pred_masks"],
        "scores": [r["instances"].scores for r in results],
        "losses": losses,
    }


@contextlib.contextmanager
def _fused_decoder(model) -> Iterator[None]:
    predictor = model.sem_seg_head.predictor
    layers = [*predictor.transformer_cross_attention_layers, *predictor.transformer_self_attention_layers]
    for layer in layers:
        layer.fused_attention = True
    try:
        yield
    finally:
        for layer in layers:
            layer.fused_attention = False


@contextlib.contextmanager
def _context_fast_path(model) -> Iterator[None]:
    original = remoteclip._mha_fast_path
    remoteclip._mha_fast_path = lambda enabled: original(True)
    try:
        yield
    finally:
        remoteclip._mha_fast_path = original


@contextlib.contextmanager
def _gca_float32(model) -> Iterator[None]:
    original = model.gca.forward
    model.gca.forward = lambda text, global_embed: original(text, global_embed.float())
    try:
        yield
    finally:
        del model.gca.forward


def _product_ensemble(in_logits, out_logits, seen, alpha, beta, valid=None):
    """SCORE.md 7.3 as a product of probabilities (the authors' arithmetic)."""
    p_in = in_logits[..., :-1].softmax(-1)
    p_out = out_logits[..., :-1].softmax(-1)
    exponent = torch.where(seen, alpha, beta).to(p_in.dtype)
    if valid is not None:
        exponent = exponent * valid.to(p_in.dtype).unsqueeze(-1)
    p = p_in ** (1 - exponent) * p_out**exponent
    void = in_logits.softmax(-1)[..., -1:]
    return torch.log(torch.cat([p / p.sum(-1, keepdim=True) * (1 - void), void], dim=-1) + 1e-8)


@contextlib.contextmanager
def _product_ensemble_patch(model) -> Iterator[None]:
    import score.meta_arch as meta_arch

    original = meta_arch.geometric_ensemble
    meta_arch.geometric_ensemble = _product_ensemble
    try:
        yield
    finally:
        meta_arch.geometric_ensemble = original


def _compare(default: Dict[str, object], variant: Dict[str, object]) -> Dict[str, float]:
    logits, ref_logits = variant["pred_logits"], default["pred_logits"]
    masks, ref_masks = variant["pred_masks"], default["pred_masks"]
    loss_rel = max(
        (abs(variant["losses"][k] - v) / abs(v)).item() for k, v in default["losses"].items() if v != 0
    )
    scores = max((a - b).abs().max().item() for a, b in zip(variant["scores"], default["scores"]))
    return {
        "pred_logits": ((logits - ref_logits).abs().max() / ref_logits.abs().max()).item(),
        "masks": (masks - ref_masks).abs().max().item(),
        "flipped": ((masks > 0) != (ref_masks > 0)).float().mean().item(),
        "loss": loss_rel,
        "scores": scores,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", default=TINY_CONFIG)
    parser.add_argument("--size", type=int, default=128, help="side of the two square test images (px)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    def build(*opts: str):
        cfg = get_score_cfg()
        cfg.merge_from_file(args.config_file)
        cfg.merge_from_list(list(opts))
        torch.manual_seed(args.seed)
        return build_model(cfg)

    model = build()
    default = _run(model, args.size, args.seed)
    patches: Dict[str, Callable] = {
        "DECODER_FUSED_ATTENTION True": _fused_decoder,
        "context attention: MHA fast path": _context_fast_path,
        "GCA: normalise g in float32": _gca_float32,
        "ensemble: product of probabilities": _product_ensemble_patch,
    }
    rows = {}
    for name, patch in patches.items():
        with patch(model):
            rows[name] = _compare(default, _run(model, args.size, args.seed))
    state = copy.deepcopy(model.state_dict())
    for name, opts in {
        "RSCLIP_DTYPE float32": ("MODEL.SCORE.RSCLIP_DTYPE", "float32"),
        "FROZEN_TOWERS_AUTOCAST bf16": ("MODEL.SCORE.FROZEN_TOWERS_AUTOCAST", "bf16"),
    }.items():
        variant = build(*opts)
        variant.load_state_dict(state)
        rows[name] = _compare(default, _run(variant, args.size, args.seed))

    print(f"{args.config_file}, 2 images {args.size} x {args.size}, seed {args.seed}")
    print("| variant | pred_logits rel | mask logits max abs | flipped pixels | loss rel | scores max abs |")
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(
            f"| {name} | {r['pred_logits']:.1e} | {r['masks']:.1e} | {100 * r['flipped']:.3f} % "
            f"| {r['loss']:.1e} | {r['scores']:.1e} |"
        )


if __name__ == "__main__":
    main()
