#!/usr/bin/env python
"""One prepared check of SCORE on one GPU (or, with ``--cpu``, of the tiny model on the CPU).

    bash tools/bench/gpu_check.sh --output $OUT/gpu_check        # full model on cuda:0, <= 8 min on one GPU
    bash tools/bench/gpu_check.sh --cpu --output output/gpu_check # tiny model on the CPU, < 10 min on 1 core

(tools/bench/gpu_check.sh installs the missing dependencies offline first, then runs
this script.) Random weights (``RANDOM_INIT_CLIP``): the check is about the
numerics and the speed of the code paths, not about accuracy. Stages, each
written to OUTPUT.json / OUTPUT.md as soon as it ends (a run cut short keeps
what it measured):

1. **amp_train**: SCORE training steps under the trainer's AMP (CUDA: float16
   autocast and a ``GradScaler``, as detectron2's ``AMPTrainer``; CPU:
   bfloat16 autocast, no scaler), two in RAI's Gumbel warm-up and two after
   it. Passes when every loss is finite, every trainable parameter has a
   gradient (after the warm-up, all but RAI's kernel-selection logits: the
   kernel is then fixed), and the gradients of the steps the scaler did not skip are
   finite (a scaler skips a step on overflow by design, and lowers its scale).
2. **bf16_inference**: the head's outputs of one 512 x 512 image in float32
   against (a) ``MODEL.SCORE.FROZEN_TOWERS_AUTOCAST bf16`` (the ConvNeXt
   tower in bfloat16; a no-op on CPU) and (b) the whole forward under
   bfloat16 autocast. Compared: final-layer class logits (max |difference|,
   and within ``atol + rtol * |fp32|``, LOGIT_ATOL / LOGIT_RTOL below), the
   per-query argmax class on queries whose float32 top-2 margin exceeds
   twice LOGIT_ATOL (closer ones are ties at this precision), and the IoU of
   the binary masks (logits > 0). Only (a), the model's own bf16 option,
   decides the verdict; (b), bfloat16 through the trainable head as well, is
   reported for information (on the tiny CPU model its logits stray by up to
   0.14 while the classes stay equal).
3. **speed**: SCORE and its FC-CLIP baseline (``RAI.ENABLED False``,
   ``GCA.MODE none``, as tools/bench/benchmark.py): inference images per second at
   512 x 512, batch 1 and 8 (``torch.inference_mode``, best of the repeats
   after a warm-up), and one AMP training step at 512 x 512 batch 2 (the
   recipe's IMS_PER_BATCH), after RAI's warm-up; peak memory of each row
   (CUDA ``max_memory_allocated``, CPU resident-set high-water mark).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchmark  # noqa: E402  (tools/bench/benchmark.py: configs, random-weight models, batches, memory)

logger = logging.getLogger("score.gpu_check")

# Tolerance of the bfloat16 class logits against float32 (bfloat16 keeps 8 significant bits, a
# relative step of 2**-8 = 0.4 %; errors grow through the ~50 layers of the towers and the head).
LOGIT_ATOL = 0.1
LOGIT_RTOL = 0.05
MIN_MASK_IOU = 0.9
# After the Gumbel warm-up RAI's kernel is fixed and its selection logits get no gradient, by design.
_ALLOWED = {"gumbel": ("",), "fixed": ("", "sem_seg_head.predictor.rai.kernel_logits")}


# ---------------------------------------------------------------------------- helpers


def _amp(device: str, enabled: bool = True):
    """The trainer's AMP: float16 autocast on CUDA, bfloat16 autocast on CPU."""
    kind = torch.device(device).type
    dtype = torch.float16 if kind == "cuda" else torch.bfloat16
    return torch.autocast(kind, dtype=dtype, enabled=enabled)


_MODELS: Dict[str, tuple] = {}


def _model(which: str, variant: str, device: str):
    """(cfg, model) of ``variant``, built once (a full-size build takes tens of seconds) and shared
    by the stages; one variant held at a time. A new model's RAI is at the start of its warm-up."""
    if variant not in _MODELS:
        _MODELS.clear()
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()
        torch.manual_seed(0)
        cfg = benchmark.build_cfg(which, variant, device)
        _MODELS[variant] = cfg, benchmark.build_benchmark_model(cfg, rai_phase="gumbel")
    return _MODELS[variant]


def _past_warmup(model) -> None:
    """Move RAI past its Gumbel warm-up (the steady state of training and of inference)."""
    if model.rai is not None:
        for _ in range(max(0, model.rai.warmup_iters - int(model.rai.iteration))):
            model.rai.step()


class _Trainer:
    """forward + losses + backward + optimizer step under AMP, as detectron2's AMPTrainer.run_step."""

    def __init__(self, cfg, model, device: str):
        from score.engine.trainer import build_optimizer

        self.model = model
        self.device = device
        self.optimizer = build_optimizer(cfg, model)
        on_cuda = torch.device(device).type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda") if on_cuda else None

    def step(self, batch: List[dict]) -> Dict[str, object]:
        self.model.train()
        with _amp(self.device):
            losses = self.model(batch)
        total = sum(losses.values())
        self.optimizer.zero_grad(set_to_none=True)
        skipped = False
        if self.scaler is not None:
            self.scaler.scale(total).backward()
            self.scaler.unscale_(self.optimizer)
            grads_finite = _grads_finite(self.model)
            scale = self.scaler.get_scale()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            skipped = self.scaler.get_scale() < scale
        else:
            total.backward()
            grads_finite = _grads_finite(self.model)
            self.optimizer.step()
        missing = [n for n, p in self.model.named_parameters() if p.requires_grad and p.grad is None]
        return {
            "loss_total": float(total.detach()),
            "losses_finite": all(math.isfinite(float(v)) for v in losses.values()),
            "grads_finite": grads_finite,
            "params_without_grad": ", ".join(missing),
            "skipped_by_scaler": skipped,
        }


def _grads_finite(model) -> bool:
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()) if grads else False


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------- stages


def amp_train(which: str, device: str) -> List[dict]:
    """Two AMP steps in RAI's Gumbel warm-up, then two after it, on the SCORE model."""
    cfg, model = _model(which, "SCORE", device)
    trainer = _Trainer(cfg, model, device)
    batch = benchmark.make_batch((512, 512), 2, len(model.train_class_names))
    rows = []
    for index in range(4):
        if index == 2:
            _past_warmup(model)
        model.train()
        phase = "gumbel" if model.rai.in_gumbel_phase else "fixed"
        result = trainer.step(batch)
        rows.append({"step": index, "rai_phase": phase, **result})
        logger.info("amp step %d (%s): %s", index, phase, result)
    return rows


def _head_outputs(model, batch: List[dict], context) -> Dict[str, torch.Tensor]:
    """The head's final class logits (B, Q, K + 1) and mask logits (B, Q, h, w) of one forward."""
    captured = {}

    def hook(_module, _inputs, outputs):
        captured["logits"] = outputs["pred_logits"].float()
        captured["masks"] = outputs["pred_masks"].float()

    model.eval()
    handle = model.sem_seg_head.register_forward_hook(hook)
    try:
        with torch.inference_mode(), context:
            model(batch)
    finally:
        handle.remove()
    return captured


def compare_outputs(reference: Dict[str, torch.Tensor], other: Dict[str, torch.Tensor]) -> dict:
    """Logit differences, argmax agreement on decidable queries and mask IoU (see the module doc)."""
    ref, oth = reference["logits"], other["logits"]
    diff = (oth - ref).abs()
    within = bool((diff <= LOGIT_ATOL + LOGIT_RTOL * ref.abs()).all())
    top2 = ref.topk(2, dim=-1).values
    decidable = (top2[..., 0] - top2[..., 1]) > 2 * LOGIT_ATOL
    same_class = ref.argmax(-1) == oth.argmax(-1)
    ref_masks, oth_masks = reference["masks"] > 0, other["masks"] > 0
    inter = (ref_masks & oth_masks).flatten(2).sum(-1).float()
    union = (ref_masks | oth_masks).flatten(2).sum(-1).float()
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    classes_equal = bool(same_class[decidable].all())
    return {
        "max_abs_logit_diff": float(diff.max()),
        "mean_abs_logit_diff": float(diff.mean()),
        "logits_within_tol": within,
        "decidable_queries": int(decidable.sum()),
        "queries": int(decidable.numel()),
        "classes_equal_on_decidable": classes_equal,
        "classes_equal_all": bool(same_class.all()),
        "min_mask_iou": float(iou.min()),
        "mean_mask_iou": float(iou.mean()),
        "pass": within and classes_equal and float(iou.min()) >= MIN_MASK_IOU,
    }


def bf16_inference(which: str, device: str) -> List[dict]:
    """float32 against the bf16 frozen tower and against a whole-forward bfloat16 autocast."""
    _cfg, model = _model(which, "SCORE", device)
    _past_warmup(model)
    batch = benchmark.make_batch((512, 512), 1, len(model.train_class_names), seed=1)
    reference = _head_outputs(model, batch, contextlib.nullcontext())
    rows = []
    model.frozen_towers_autocast = "bf16"
    applies = torch.device(device).type == "cuda"
    result = compare_outputs(reference, _head_outputs(model, batch, contextlib.nullcontext()))
    name = "FROZEN_TOWERS_AUTOCAST bf16" + ("" if applies else " (no-op on CPU)")
    rows.append({"variant": name, "gates_verdict": True, **result})
    model.frozen_towers_autocast = "none"
    kind = torch.device(device).type
    whole = torch.autocast(kind, dtype=torch.bfloat16)
    result = compare_outputs(reference, _head_outputs(model, batch, whole))
    rows.append({"variant": "whole forward, bfloat16 autocast", "gates_verdict": False, **result})
    for row in rows:
        logger.info("bf16 %s", row)
    return rows


def speed(which: str, device: str, repeats: int, train_repeats: int) -> List[dict]:
    """Inference img/s at 512 x 512 batch 1 and 8, and an AMP training step, SCORE and FC-CLIP."""
    rows = []
    for variant in benchmark.VARIANTS:
        cfg, model = _model(which, variant, device)
        _past_warmup(model)
        num_classes = len(model.train_class_names)
        for batch_size in (1, 8):
            batch = benchmark.make_batch((512, 512), batch_size, num_classes)
            result = benchmark.measure_inference(model, batch, repeats=repeats, device=device)
            rows.append({"variant": variant, "task": "inference", "batch": batch_size, **result})
            logger.info("%s inference b%d: %.1f ms", variant, batch_size, result["ms"])
            del batch
        trainer = _Trainer(cfg, model, device)
        batch = benchmark.make_batch((512, 512), cfg.SOLVER.IMS_PER_BATCH, num_classes)
        with benchmark.PeakMemory(device) as peak:
            trainer.step(batch)  # optimizer state, autotuning
            times = []
            for _ in range(train_repeats):
                _sync(device)
                tic = time.perf_counter()
                trainer.step(batch)
                _sync(device)
                times.append(time.perf_counter() - tic)
        best = min(times)
        rows.append(
            {
                "variant": variant,
                "task": "train step (AMP)",
                "batch": len(batch),
                "ms": 1000 * best,
                "img_s": len(batch) / best,
                "peak_mb": peak.mb,
                "memory_scope": peak.scope,
                "repeats": train_repeats,
            }
        )
        logger.info("%s train step b%d: %.1f ms", variant, len(batch), 1000 * best)
        del trainer
    return rows


# ---------------------------------------------------------------------------- report


def verdict(report: dict) -> Dict[str, Optional[bool]]:
    amp = report.get("amp_train")
    bf16 = report.get("bf16_inference")
    amp_ok = None
    if amp:
        taken = [r for r in amp if not r["skipped_by_scaler"]]
        amp_ok = (
            all(r["losses_finite"] and r["params_without_grad"] in _ALLOWED[r["rai_phase"]] for r in amp)
            and bool(taken)
            and all(r["grads_finite"] for r in taken)
        )
    return {
        "amp_train": amp_ok,
        "bf16_inference": None if not bf16 else all(r["pass"] for r in bf16 if r["gates_verdict"]),
        "speed": None if not report.get("speed") else True,
    }


def render(report: dict) -> str:
    def fmt(rows, keys=None):
        rows = [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in rows]
        if keys:
            rows = [{k: r.get(k) for k in keys} for r in rows]
        return tabulate(rows, headers="keys", tablefmt="github")

    parts = [
        "Machine: " + ", ".join(f"{k} {v}" for k, v in report["machine"].items()),
        "",
        f"Command: `{report['command']}`; model: {report['which']} (random weights); "
        f"verdict: {report['verdict']}; seconds: {report.get('seconds', 0):.0f}",
    ]
    if report.get("amp_train"):
        parts += ["", "AMP training steps (512 x 512, batch 2):", "", fmt(report["amp_train"])]
    if report.get("bf16_inference"):
        parts += [
            "",
            f"bfloat16 against float32 inference (512 x 512, batch 1; tolerance |d| <= {LOGIT_ATOL} + "
            f"{LOGIT_RTOL} |fp32|, argmax on queries with a fp32 top-2 margin > {2 * LOGIT_ATOL}, "
            f"mask IoU >= {MIN_MASK_IOU}):",
            "",
            fmt(report["bf16_inference"]),
        ]
    if report.get("speed"):
        keys = ["variant", "task", "batch", "ms", "img_s", "peak_mb", "memory_scope", "repeats"]
        parts += [
            "",
            "Speed at 512 x 512 (best of the repeats after a warm-up):",
            "",
            fmt(report["speed"], keys),
        ]
    return "\n".join(parts) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cpu", action="store_true", help="tiny model (configs/tiny/) on the CPU")
    parser.add_argument(
        "--output", default="output/gpu_check/gpu_check", help="writes OUTPUT.json and OUTPUT.md"
    )
    parser.add_argument("--stages", nargs="+", default=["amp_train", "bf16_inference", "speed"])
    parser.add_argument("--repeats", type=int, help="timed inference runs (CUDA 10, CPU 2)")
    parser.add_argument("--train-repeats", type=int, help="timed training steps (CUDA 3, CPU 1)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", stream=sys.stderr)
    logger.setLevel(logging.INFO)
    if args.cpu:
        device, which = "cpu", "tiny"
    else:
        if not torch.cuda.is_available():
            parser.error("no CUDA device: run with --cpu for the tiny model on the CPU")
        device, which = "cuda", "full"
    on_cuda = device == "cuda"
    repeats = args.repeats or (10 if on_cuda else 2)
    train_repeats = args.train_repeats or (3 if on_cuda else 1)

    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"machine": benchmark.machine_info(device), "command": " ".join(sys.argv), "which": which}
    start = time.perf_counter()
    stages = {
        "amp_train": lambda: amp_train(which, device),
        "bf16_inference": lambda: bf16_inference(which, device),
        "speed": lambda: speed(which, device, repeats, train_repeats),
    }
    for name in args.stages:
        tic = time.perf_counter()
        report[name] = stages[name]()
        report[f"{name}_s"] = time.perf_counter() - tic
        report["seconds"] = time.perf_counter() - start
        report["verdict"] = verdict(report)
        Path(f"{out}.json").write_text(json.dumps(report, indent=1, default=str))
        Path(f"{out}.md").write_text(render(report))
        logger.info("stage %s done in %.0f s", name, report[f"{name}_s"])
    sys.stdout.write(render(report))
    failed = [k for k, v in report["verdict"].items() if v is False]
    if failed:
        logger.error("failed: %s", failed)
        sys.exit(1)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
