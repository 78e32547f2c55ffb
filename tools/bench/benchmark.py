#!/usr/bin/env python
"""Speed and memory of SCORE beside its FC-CLIP baseline, with random weights.

    python tools/bench/benchmark.py --output tools/bench/results/benchmark  # the default run (CPU, < 10 min)
    python tools/bench/benchmark.py --device cuda --full-sizes 512x512 512x683 --full-batch-sizes 1 2

For each architecture (``--which``: "tiny", configs/tiny/score_tiny_isaid.yaml,
and "full", configs/score_isaid_instance.yaml) the SCORE model and its FC-CLIP
baseline (``MODEL.SCORE.RAI.ENABLED False MODEL.SCORE.GCA.MODE none``: no
context branch) are built with RANDOM CLIP weights (``RANDOM_INIT_CLIP``, no
weights exist here; the speed does not depend on the values) and measured,
each variant in a fresh subprocess, at every size and batch size:

* inference: latency (ms per batch, the MINIMUM of ``--repeats`` runs after
  one warm-up run) under ``torch.inference_mode``, and images per second; the
  first size at batch 1 is also timed under ``torch.no_grad`` for comparison;
* training step: forward + losses + backward + optimizer step, with the
  Trainer's optimizer (AdamW, full-model gradient clipping), RAI past its
  Gumbel warm-up (the steady state of training) unless ``--rai-phase gumbel``;
  after one untimed step, except for the full model on CPU (a step takes a
  minute there), whose timed step also allocates the optimizer state;
* peak memory of the row: on CPU the resident set high-water mark (VmHWM,
  reset before each row through /proc/self/clear_refs; where that reset is
  refused, the process-lifetime ru_maxrss, marked "lifetime"); on CUDA
  ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``;
* GFLOPs of the inference forward, counted during the warm-up run by
  PyTorch's ``FlopCounterMode`` (2 flops per multiply-add: fvcore's
  ``FlopCountAnalysis`` reports half this number). Ops without a flop formula
  (element-wise, pooling, grid_sample of the deformable attention, softmax)
  are skipped, as fvcore skips them.

The text classifier is timed apart (``--skip-text`` to skip): for each target
vocabulary (NWPU, SOTA, FAST, SIOR, iSAID), built cold by the text tower, then
from the bank's memory, then from its disk cache (a fresh bank reading the
file written by the cold build; random weights have no disk cache by default,
so an explicit cache key is passed). In the model rows the bank's text tower
is replaced by random rows so that warm-up does not pay for it twice.

The evaluation rows (``--skip-eval`` to skip) time detectron2's
``instances_to_coco_json`` (RLE encoding of each instance) on 300 masks of one
image, and COCO mask-AP evaluation of ``--eval-images`` images with 300
detections each per backend, on tools/bench/benchmark_coco_eval.py's synthetic data.

Each model row records the 1-minute load average when it started: the
machine may be shared, and a high load inflates the times.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import logging
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pycocotools.mask as mask_util
import torch
from tabulate import tabulate

import score  # noqa: F401  (detectron2 compatibility shims before detectron2 imports)
from score.config import get_score_cfg

logger = logging.getLogger("score.benchmark")

REPO = Path(__file__).resolve().parents[2]
CONFIGS = {
    "tiny": REPO / "configs" / "tiny" / "score_tiny_isaid.yaml",
    "full": REPO / "configs" / "score_isaid_instance.yaml",
}
VARIANTS = {
    "SCORE": [],
    "FC-CLIP": ["MODEL.SCORE.RAI.ENABLED", "False", "MODEL.SCORE.GCA.MODE", "none"],
}
# Target vocabularies of the text-classifier rows (score/data/datasets.py).
VOCABULARIES = ("NWPU", "SOTA", "FAST", "SIOR", "ISAID")


# ---------------------------------------------------------------------------- building


def build_cfg(which: str, variant: str, device: str, opts: Sequence[str] = ()):
    """Frozen config of architecture ``which`` ("tiny" / "full"), variant "SCORE" / "FC-CLIP".

    ``opts`` (KEY VALUE pairs) apply to both variants, before the variant's own keys.
    """
    cfg = get_score_cfg()
    cfg.merge_from_file(str(CONFIGS[which]))
    cfg.merge_from_list(list(opts))
    cfg.merge_from_list(VARIANTS[variant])
    cfg.MODEL.SCORE.RANDOM_INIT_CLIP = True
    cfg.MODEL.DEVICE = device
    cfg.freeze()
    return cfg


def _random_text_rows(embed_dim: int) -> Callable[[List[str]], torch.Tensor]:
    """A stand-in text tower: prompts -> (N, D) random rows (the text classifier is timed apart)."""
    generator = torch.Generator().manual_seed(0)

    def encode(prompts: List[str]) -> torch.Tensor:
        return torch.randn(len(prompts), embed_dim, generator=generator)

    return encode


def build_benchmark_model(cfg, rai_phase: str = "fixed") -> torch.nn.Module:
    """The model of ``cfg`` in eval mode, text towers replaced by random rows, RAI in ``rai_phase``."""
    from detectron2.modeling import build_model

    model = build_model(cfg)
    model.text_classifiers.encode_fn = _random_text_rows(model.backbone.embed_dim)
    if model.context_text_classifiers is not None:
        model.context_text_classifiers.encode_fn = _random_text_rows(model.backbone.embed_dim)
    if model.rai is not None and rai_phase == "fixed":
        # Past the Gumbel warm-up, as in all but the first warmup_iters iterations of training.
        for _ in range(model.rai.warmup_iters):
            model.rai.step()
    return model.eval()


def make_batch(size: Tuple[int, int], batch_size: int, num_classes: int, seed: int = 0) -> List[dict]:
    """detectron2 inputs: random uint8 images of ``size`` (H, W), each with 4 square instances."""
    from detectron2.structures import BitMasks, Instances

    generator = torch.Generator().manual_seed(seed)
    height, width = size
    batch = []
    for _ in range(batch_size):
        image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator)
        masks = torch.zeros(4, height, width, dtype=torch.bool)
        for i in range(4):
            y = int(torch.randint(0, height // 2, (1,), generator=generator))
            x = int(torch.randint(0, width // 2, (1,), generator=generator))
            masks[i, y : y + height // 4, x : x + width // 4] = True
        instances = Instances((height, width))
        instances.gt_classes = torch.randint(0, num_classes, (4,), generator=generator)
        instances.gt_masks = BitMasks(masks)
        batch.append({"image": image, "height": height, "width": width, "instances": instances})
    return batch


# ---------------------------------------------------------------------------- memory


def _reset_cpu_peak() -> bool:
    """Reset the resident-set high-water mark of this process (Linux >= 4.0); False where refused."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _cpu_peak_mb() -> float:
    """VmHWM of /proc/self/status in MiB, else ru_maxrss (KiB on Linux)."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class PeakMemory:
    """Peak memory of a block: CUDA max_memory_allocated, or the CPU resident-set high-water mark."""

    def __init__(self, device: str):
        self.device = torch.device(device)
        self.mb = 0.0
        self.scope = "row"

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        elif not _reset_cpu_peak():
            self.scope = "lifetime"
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self.mb = _cpu_peak_mb()


# ---------------------------------------------------------------------------- timing


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _timed(fn: Callable[[], object], repeats: int, device: str) -> List[float]:
    """Seconds of each of ``repeats`` calls of ``fn``."""
    times = []
    for _ in range(repeats):
        _sync(device)
        tic = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - tic)
    return times


def _grad_mode(name: str):
    return torch.inference_mode() if name == "inference_mode" else torch.no_grad()


def measure_inference(
    model: torch.nn.Module, batch: List[dict], *, repeats: int, device: str, grad_mode: str = "inference_mode"
) -> Dict[str, float]:
    """Warm-up (flops counted), then ``repeats`` timed runs: min ms, img/s, peak MB, GFLOPs."""
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    with PeakMemory(device) as peak, _grad_mode(grad_mode):
        counter = FlopCounterMode(display=False)
        with counter:
            model(batch)
        times = _timed(lambda: model(batch), repeats, device)
    best = min(times)
    return {
        "ms": 1000 * best,
        "img_s": len(batch) / best,
        "peak_mb": peak.mb,
        "memory_scope": peak.scope,
        "gflops": counter.get_total_flops() / 1e9,
        "repeats": repeats,
    }


def measure_train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: List[dict],
    *,
    repeats: int,
    device: str,
    warmup: int = 1,
) -> Dict[str, float]:
    """``warmup`` untimed steps, then ``repeats`` timed ones (forward, losses, backward, optimizer step).

    Without warm-up the first timed step also allocates the optimizer's state.
    """

    def step() -> None:
        losses = model(batch)
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()

    model.train()
    with PeakMemory(device) as peak:
        for _ in range(warmup):
            step()
        times = _timed(step, repeats, device)
    model.eval()
    best = min(times)
    return {
        "ms": 1000 * best,
        "img_s": len(batch) / best,
        "peak_mb": peak.mb,
        "memory_scope": peak.scope,
        "repeats": repeats,
        "warmup": warmup,
    }


def benchmark_variant(
    which: str,
    variant: str,
    *,
    device: str,
    sizes: Sequence[Tuple[int, int]],
    batch_sizes: Sequence[int],
    repeats: int,
    train_repeats: int,
    skip_train: bool,
    compare_no_grad: bool,
    rai_phase: str = "fixed",
    train_warmup: int = 1,
    opts: Sequence[str] = (),
) -> List[dict]:
    """Rows of one (architecture, variant): build, inference per size/batch, then training steps."""
    from score.engine.trainer import build_optimizer

    torch.manual_seed(0)
    cfg = build_cfg(which, variant, device, opts)
    load = os.getloadavg()[0]
    tic = time.perf_counter()
    model = build_benchmark_model(cfg, rai_phase)
    build_s = time.perf_counter() - tic
    params = sum(p.numel() for p in model.parameters())
    num_classes = len(model.train_class_names)
    base = {"arch": which, "variant": variant, "build_s": build_s, "params_m": params / 1e6}
    rows = []
    configs = [(size, b) for size in sizes for b in batch_sizes]
    for index, (size, b) in enumerate(configs):
        batch = make_batch(size, b, num_classes)
        modes = ["inference_mode"] + (["no_grad"] if compare_no_grad and index == 0 else [])
        for mode in modes:
            load = os.getloadavg()[0]
            result = measure_inference(model, batch, repeats=repeats, device=device, grad_mode=mode)
            task = "inference" if mode == "inference_mode" else "inference (no_grad)"
            rows.append({**base, "task": task, "size": size, "batch": b, "load1": load, **result})
            logger.info("%s %s %s %s b%d: %.1f ms", which, variant, task, size, b, result["ms"])
    if not skip_train:
        optimizer = build_optimizer(cfg, model)
        for size, b in configs:
            batch = make_batch(size, b, num_classes)
            load = os.getloadavg()[0]
            result = measure_train_step(
                model, optimizer, batch, repeats=train_repeats, device=device, warmup=train_warmup
            )
            rows.append({**base, "task": "train step", "size": size, "batch": b, "load1": load, **result})
            logger.info("%s %s train %s b%d: %.1f ms", which, variant, size, b, result["ms"])
    return rows


# ---------------------------------------------------------------------------- profile

# (profiler label, table row). The labels are set in the model (score/profiling.py), except the
# decoder layers (forward hooks below) and the backward / optimizer step (this script). The
# "of which" rows are parts of the transformer decoder.
PROFILE_STAGES = (
    ("score.backbone", "backbone (frozen ConvNeXt CLIP)"),
    ("score.context_tower", "context tower (frozen RemoteCLIP ViT)"),
    ("score.text_classifier", "text classifier (cached)"),
    ("score.pixel_decoder", "pixel decoder (deformable attention)"),
    ("score.transformer_decoder", "transformer decoder"),
    ("score.decoder_layers", "of which: decoder layers (attention + FFN)"),
    ("score.rai", "of which: RAI (every prediction in training, the last at inference)"),
    ("score.oov_pooling", "out-of-vocabulary pooling"),
    ("score.postprocessing", "post-processing (instance inference)"),
    ("score.losses", "losses (matcher + criterion)"),
    ("score.backward", "backward"),
    ("score.optimizer_step", "optimizer step"),
)


@contextlib.contextmanager
def _decoder_layer_labels(model: torch.nn.Module):
    """Profiler ranges "score.decoder_layers" around each decoder layer's forward, by hooks."""
    from torch.profiler import record_function

    predictor = model.sem_seg_head.predictor
    layers = [
        layer
        for name in (
            "transformer_cross_attention_layers",
            "transformer_self_attention_layers",
            "transformer_ffn_layers",
        )
        for layer in getattr(predictor, name, [])
    ]
    open_ranges: List[record_function] = []

    def enter(_module, _inputs):
        open_ranges.append(record_function("score.decoder_layers").__enter__())

    def leave(_module, _inputs, _outputs):
        open_ranges.pop().__exit__(None, None, None)

    handles = [
        h
        for layer in layers
        for h in (layer.register_forward_pre_hook(enter), layer.register_forward_hook(leave))
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def profile_variant(
    which: str, *, device: str, size: Tuple[int, int], tasks: Sequence[str], opts: Sequence[str] = ()
) -> List[dict]:
    """torch.profiler time per stage (PROFILE_STAGES) of one inference and/or one training step.

    Each task runs once unprofiled (warm-up; its wall time is kept as "unprofiled ms") and once
    under the profiler (CPU activity, no shapes or stacks). Stage times are the profiler's
    inclusive CPU time of each labelled range.
    """
    from torch.profiler import ProfilerActivity, profile, record_function

    from score.engine.trainer import build_optimizer

    torch.manual_seed(0)
    cfg = build_cfg(which, "SCORE", device, opts)
    model = build_benchmark_model(cfg)
    batch = make_batch(size, 1, len(model.train_class_names))
    optimizer = build_optimizer(cfg, model) if "train step" in tasks else None

    def inference() -> None:
        model.eval()
        with torch.inference_mode():
            model(batch)

    def train_step() -> None:
        model.train()
        losses = model(batch)
        optimizer.zero_grad(set_to_none=True)
        with record_function("score.backward"):
            sum(losses.values()).backward()
        with record_function("score.optimizer_step"):
            optimizer.step()

    rows = []
    for task in tasks:
        fn = inference if task == "inference" else train_step
        unprofiled = _timed(fn, 1, device)[0]
        with _decoder_layer_labels(model), profile(activities=[ProfilerActivity.CPU]) as prof:
            tic = time.perf_counter()
            fn()
            wall = time.perf_counter() - tic
        totals = {e.key: e.cpu_time_total / 1000 for e in prof.key_averages() if e.key.startswith("score.")}
        calls = {e.key: e.count for e in prof.key_averages() if e.key.startswith("score.")}
        for label, stage in PROFILE_STAGES:
            if label in totals:
                rows.append(
                    {"arch": which, "task": task, "stage": stage, "ms": totals[label], "calls": calls[label]}
                )
        top = {label for label, stage in PROFILE_STAGES if not stage.startswith("of which")}
        other = 1000 * wall - sum(ms for label, ms in totals.items() if label in top)
        rows.append(
            {
                "arch": which,
                "task": task,
                "stage": "other (preprocessing, unlabelled)",
                "ms": other,
                "calls": 1,
            }
        )
        rows.append({"arch": which, "task": task, "stage": "total (profiled)", "ms": 1000 * wall, "calls": 1})
        rows.append(
            {
                "arch": which,
                "task": task,
                "stage": "total (unprofiled run)",
                "ms": 1000 * unprofiled,
                "calls": 1,
            }
        )
        logger.info(
            "profile %s %s: %.0f ms profiled, %.0f ms unprofiled", which, task, 1000 * wall, 1000 * unprofiled
        )
    return rows


def render_profile(report: dict) -> str:
    """One column per (arch, task): ms and share of the profiled total of each stage."""
    columns: Dict[tuple, Dict[str, dict]] = {}
    for row in report["profile"]:
        columns.setdefault((row["arch"], row["task"]), {})[row["stage"]] = row
    stages = [stage for _, stage in PROFILE_STAGES] + [
        "other (preprocessing, unlabelled)",
        "total (profiled)",
        "total (unprofiled run)",
    ]
    table = []
    for stage in stages:
        line = {"stage": stage}
        present = False
        for (arch, task), by_stage in columns.items():
            row = by_stage.get(stage)
            total = by_stage["total (profiled)"]["ms"]
            cell = ""
            if row is not None:
                present = True
                cell = (
                    f"{row['ms']:.0f}"
                    if stage.startswith("total")
                    else f"{row['ms']:.0f} ({100 * row['ms'] / total:.0f} %)"
                )
            line[f"{arch} {task} ms"] = cell
        if present:
            table.append(line)
    size = _size_label(report["profile_size"])
    parts = [
        "Machine: " + ", ".join(f"{k} {v}" for k, v in report["machine"].items()),
        "",
        f"Command: `{report['command']}`",
        "",
        f"Profile (torch.profiler, CPU time per labelled stage, inclusive), {size}, batch 1, random weights:",
        "",
        tabulate(table, headers="keys", tablefmt="github"),
    ]
    return "\n".join(parts)


# ---------------------------------------------------------------------------- text classifier


def benchmark_text_classifier(
    which: str, *, device: str, vocabularies: Sequence[str], cache_dir: str
) -> List[dict]:
    """Cold, in-memory and on-disk build times of each vocabulary's text classifier."""
    from detectron2.modeling import build_backbone

    from score.data import datasets
    from score.modeling.text_classifier import TextClassifierBank
    from score.vocabulary import normalize_class_name

    torch.manual_seed(0)
    cfg = build_cfg(which, "FC-CLIP", device)
    backbone = build_backbone(cfg).to(device)
    # Random weights have no disk cache by default (classifier_cache_key gives ""): name them explicitly.
    key = f"benchmark|{which}|random-seed-0"
    bank = TextClassifierBank(backbone.encode_text, cache_key=key, cache_dir=cache_dir)
    rows = []
    for name in vocabularies:
        classes = list(getattr(datasets, f"{name}_CLASSES"))
        prompts = sum(len(normalize_class_name(c)) for c in classes) * len(bank.templates)
        load = os.getloadavg()[0]
        cold = _timed(partial(bank.get, classes), 1, device)[0]
        memory = min(_timed(partial(bank.get, classes), 5, device))
        disk_bank = TextClassifierBank(backbone.encode_text, cache_key=key, cache_dir=cache_dir)
        disk = _timed(partial(disk_bank.get, classes), 1, device)[0]
        rows.append(
            {
                "arch": which,
                "vocabulary": name,
                "classes": len(classes),
                "prompts": prompts,
                "cold_ms": 1000 * cold,
                "memory_ms": 1000 * memory,
                "disk_ms": 1000 * disk,
                "load1": load,
            }
        )
        logger.info("text classifier %s %s: cold %.0f ms", which, name, 1000 * cold)
    return rows


# ---------------------------------------------------------------------------- evaluation


def _coco_eval_tool():
    """tools/bench/benchmark_coco_eval.py as a module (its synthetic data and backends)."""
    path = REPO / "tools" / "bench" / "benchmark_coco_eval.py"
    spec = importlib.util.spec_from_file_location("benchmark_coco_eval", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def benchmark_evaluation(*, images: int, dets: int, size: int, backends: Sequence[str]) -> List[dict]:
    """instances_to_coco_json on one image's ``dets`` masks, and COCO evaluation of ``images`` images."""
    from detectron2.evaluation.coco_evaluation import instances_to_coco_json
    from detectron2.structures import Boxes, Instances

    from score.evaluation.instance_evaluation import evaluate_coco

    tool = _coco_eval_tool()
    rows = []
    rng = np.random.default_rng(0)
    masks = np.stack([tool._ellipse_mask(tool._random_ellipse(rng, size), size) for _ in range(dets)])
    instances = Instances((size, size))
    instances.pred_masks = torch.from_numpy(masks).bool()
    instances.pred_boxes = Boxes(torch.tensor([[0.0, 0.0, size, size]]).repeat(dets, 1))
    instances.scores = torch.from_numpy(rng.random(dets)).float()
    instances.pred_classes = torch.from_numpy(rng.integers(0, 10, dets))
    label = f"1 image x {dets} ellipse masks {size}x{size}"
    seconds = min(_timed(partial(instances_to_coco_json, instances, 1), 3, "cpu"))
    rows.append({"step": f"instances_to_coco_json (RLE per instance), {label}", "seconds": seconds})
    # The same RLEs from one pycocotools call on the (H, W, N) stack, to see what batching would save.
    batched = partial(mask_util.encode, np.asfortranarray(masks.transpose(1, 2, 0)))
    seconds = min(_timed(batched, 3, "cpu"))
    rows.append({"step": f"pycocotools encode, one call for all masks, {label}", "seconds": seconds})
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt, results = tool.make_synthetic(
            images=images, dets=dets, objects=10, classes=10, size=size, seed=0
        )
    for backend in backends:
        with contextlib.redirect_stdout(io.StringIO()):
            evaluate = partial(evaluate_coco, coco_gt, results, max_dets_per_image=dets, backend=backend)
            seconds = _timed(evaluate, 1, "cpu")[0]
        rows.append({"step": f"COCO eval ({backend}), {images} images x {dets} dets", "seconds": seconds})
    return rows


# ---------------------------------------------------------------------------- tables


def _size_label(size) -> str:
    return f"{size[0]}x{size[1]}"


def side_by_side(rows: Sequence[dict]) -> List[dict]:
    """One row per (arch, task, size, batch) with SCORE, FC-CLIP and SCORE / FC-CLIP columns."""
    keyed: Dict[tuple, Dict[str, dict]] = {}
    for row in rows:
        key = (row["arch"], row["task"], _size_label(row["size"]), row["batch"])
        keyed.setdefault(key, {})[row["variant"]] = row

    def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
        return round(a / b, 2) if a and b else None

    table = []
    for (arch, task, size, batch), by_variant in keyed.items():
        s, f = by_variant.get("SCORE", {}), by_variant.get("FC-CLIP", {})
        table.append(
            {
                "arch": f"{arch} (random init)",
                "task": task,
                "HxW": size,
                "batch": batch,
                "SCORE ms": _round(s.get("ms")),
                "FC-CLIP ms": _round(f.get("ms")),
                "ms ratio": ratio(s.get("ms"), f.get("ms")),
                "SCORE img/s": _round(s.get("img_s"), 2),
                "FC-CLIP img/s": _round(f.get("img_s"), 2),
                "SCORE peak MB": _round(s.get("peak_mb")),
                "FC-CLIP peak MB": _round(f.get("peak_mb")),
                "MB ratio": ratio(s.get("peak_mb"), f.get("peak_mb")),
                "SCORE GFLOPs": _round(s.get("gflops")),
                "FC-CLIP GFLOPs": _round(f.get("gflops")),
                "GFLOPs ratio": ratio(s.get("gflops"), f.get("gflops")),
                "load1": "/".join(f"{v['load1']:.1f}" for v in (s, f) if v),
            }
        )
    return table


def _round(value: Optional[float], digits: int = 1) -> Optional[float]:
    return None if value is None else round(value, digits)


def machine_info(device: str) -> Dict[str, object]:
    """CPU model, cores, torch version and threads (and the GPU name on CUDA)."""
    cpu = platform.processor()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
            cpu = names[0] if names else cpu
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": device,
        "load_at_start": os.getloadavg(),
    }
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def render(report: dict) -> str:
    """The report as markdown: machine, model table, text classifier and evaluation tables."""
    parts = [
        "Machine: " + ", ".join(f"{k} {v}" for k, v in report["machine"].items()),
        "",
        f"Command: `{report['command']}`",
        "",
        "Latency: minimum over the repeats after one warm-up run. Weights: random (RANDOM_INIT_CLIP).",
        "Peak MB: "
        + ("CUDA max_memory_allocated" if "cuda" in report["machine"]["device"] else "CPU VmHWM")
        + " of the row; GFLOPs: FlopCounterMode, 2 per multiply-add, ops without formula skipped.",
        "",
        tabulate(side_by_side(report["models"]), headers="keys", tablefmt="github"),
    ]
    if report.get("text"):
        text_table = tabulate(report["text"], headers="keys", tablefmt="github")
        parts += ["", "Text classifier (ms):", "", text_table]
    if report.get("evaluation"):
        parts += ["", "Evaluation:", "", tabulate(report["evaluation"], headers="keys", tablefmt="github")]
    return "\n".join(parts)


# ---------------------------------------------------------------------------- driver


def _parse_size(text: str) -> Tuple[int, int]:
    height, width = text.lower().split("x")
    return int(height), int(width)


def _in_subprocess(job: dict) -> List[dict]:
    """Run ``job`` by this script in a fresh interpreter (memory peaks and caches of its own)."""
    with tempfile.TemporaryDirectory() as tmp:
        job_file, out_file = Path(tmp) / "job.json", Path(tmp) / "rows.json"
        job_file.write_text(json.dumps(job))
        subprocess.run([sys.executable, __file__, "--worker", str(job_file), str(out_file)], check=True)
        return json.loads(out_file.read_text())


def _worker(job_file: str, out_file: str) -> None:
    job = json.loads(Path(job_file).read_text())
    kind = job.pop("kind")
    threads = job.pop("threads")
    if threads:
        torch.set_num_threads(threads)
    if kind == "model":
        job["sizes"] = [tuple(s) for s in job["sizes"]]
        rows = benchmark_variant(**job)
    elif kind == "profile":
        job["size"] = tuple(job["size"])
        rows = profile_variant(**job)
    else:
        rows = benchmark_text_classifier(**job)
    Path(out_file).write_text(json.dumps(rows))


def run_profile(args: argparse.Namespace) -> dict:
    """--profile: the stage profile of SCORE for each --which, each in its own subprocess."""
    report = {"machine": machine_info(args.device), "command": " ".join(sys.argv), "profile": []}
    report["profile_size"] = args.profile_size
    for which in args.which:
        tasks = (
            ["inference"] if which == "full" and not args.profile_full_train else ["inference", "train step"]
        )
        job = {
            "kind": "profile",
            "which": which,
            "device": args.device,
            "size": args.profile_size,
            "tasks": tasks,
            "opts": args.opts,
            "threads": args.threads,
        }
        report["profile"] += _in_subprocess(job)
    return report


def run(args: argparse.Namespace) -> dict:
    """All measurements of ``args``; each model variant and text tower in its own subprocess."""
    on_cpu = torch.device(args.device).type == "cpu"
    report = {"machine": machine_info(args.device), "command": " ".join(sys.argv), "models": [], "text": []}
    for which in args.which:
        full = which == "full"
        sizes = args.full_sizes if full and args.full_sizes else args.sizes
        batch_sizes = args.full_batch_sizes if full and args.full_batch_sizes else args.batch_sizes
        if full and on_cpu and not args.full_sizes:
            sizes = sizes[:1]
        if full and on_cpu and not args.full_batch_sizes:
            batch_sizes = batch_sizes[:1]
        repeats = args.full_repeats if full else args.repeats
        for variant in VARIANTS:
            job = {
                "kind": "model",
                "which": which,
                "variant": variant,
                "device": args.device,
                "sizes": sizes,
                "batch_sizes": batch_sizes,
                "repeats": repeats,
                "train_repeats": args.full_train_repeats if full else args.train_repeats,
                "skip_train": args.skip_train,
                "compare_no_grad": not (full and on_cpu),
                "rai_phase": args.rai_phase,
                "train_warmup": (0 if on_cpu else 1) if full else 1,
                "opts": args.opts,
                "threads": args.threads,
            }
            report["models"] += _in_subprocess(job)
        if not args.skip_text:
            vocabularies = args.full_text_vocabularies if full and on_cpu else args.text_vocabularies
            with tempfile.TemporaryDirectory() as cache_dir:
                job = {
                    "kind": "text",
                    "which": which,
                    "device": args.device,
                    "vocabularies": vocabularies,
                    "cache_dir": cache_dir,
                    "threads": args.threads,
                }
                report["text"] += _in_subprocess(job)
    if not args.skip_eval:
        report["evaluation"] = benchmark_evaluation(
            images=args.eval_images, dets=300, size=512, backends=args.eval_backends
        )
    report["machine"]["load_at_end"] = os.getloadavg()
    return report


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
        _worker(sys.argv[2], sys.argv[3])
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--which", nargs="+", choices=sorted(CONFIGS), default=["tiny", "full"])
    parser.add_argument(
        "--sizes",
        nargs="+",
        type=_parse_size,
        default=[(512, 512), (512, 683)],
        help="HxW inputs; 512x683 is a 600x800 picture after the test resize (short side 512, long <= 800)",
    )
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per inference row (tiny)")
    parser.add_argument("--train-repeats", type=int, default=3, help="timed steps per training row (tiny)")
    parser.add_argument(
        "--full-sizes",
        nargs="+",
        type=_parse_size,
        help="full model's sizes (default --sizes; CPU: the first)",
    )
    parser.add_argument(
        "--full-batch-sizes",
        nargs="+",
        type=int,
        help="full model's batch sizes (default --batch-sizes; CPU: 1)",
    )
    parser.add_argument("--full-repeats", type=int, default=1)
    parser.add_argument("--full-train-repeats", type=int, default=1)
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--skip-text", action="store_true")
    parser.add_argument("--skip-eval", action="store_true")
    parser.add_argument("--rai-phase", choices=["fixed", "gumbel"], default="fixed")
    parser.add_argument("--text-vocabularies", nargs="+", choices=VOCABULARIES, default=list(VOCABULARIES))
    parser.add_argument(
        "--full-text-vocabularies",
        nargs="+",
        choices=VOCABULARIES,
        default=["NWPU"],
        help="vocabularies of the full text tower on CPU (0.25 s per prompt on 2 cores: NWPU has 180)",
    )
    parser.add_argument("--eval-images", type=int, default=50)
    parser.add_argument("--eval-backends", nargs="+", default=["pycocotools", "faster_coco_eval"])
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads of the measuring processes (0: torch's default). On a machine shared "
        "with other busy processes, use fewer threads than free cores: a descheduled OpenMP thread "
        "stalls every parallel op (10x slower on 2 shared cores)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="only the per-stage torch.profiler table (inference and a training step; the full model: "
        "inference only unless --profile-full-train) at --profile-size, batch 1",
    )
    parser.add_argument("--profile-size", type=_parse_size, default=(512, 683))
    parser.add_argument("--profile-full-train", action="store_true")
    parser.add_argument("--opts", nargs="*", default=[], help="KEY VALUE config overrides for both variants")
    parser.add_argument("--output", help="write OUTPUT.md and OUTPUT.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if args.threads:
        torch.set_num_threads(args.threads)

    report = run_profile(args) if args.profile else run(args)
    text = render_profile(report) if args.profile else render(report)
    sys.stdout.write(text + "\n")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(f"{args.output}.md").write_text(text + "\n")
        Path(f"{args.output}.json").write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
