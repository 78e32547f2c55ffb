#!/usr/bin/env python
"""Training peak memory in RAI's Gumbel warm-up against after it, one model, one process.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python tools/bench/benchmark_gumbel_memory.py --which full \
        --size 512x683 --output tools/bench/results/gumbel_memory

Builds the SCORE model of ``--which`` (tools/bench/benchmark.py's configs, random
CLIP weights) once and runs training steps (forward, losses, backward, the
Trainer's optimizer step) on one random batch of ``--batch`` images:

1. one untimed step in the Gumbel phase (it allocates the optimizer state);
2. ``--steps`` measured steps in the Gumbel phase;
3. the warm-up counter moved to its end, one untimed step (it fixes the
   argmax kernel), then ``--steps`` measured steps after the warm-up.

Each measured step reports its time, the forward's time (model call up to
the losses) and its peak memory: on CPU the resident-set high-water mark
(VmHWM, reset before the step), on CUDA ``max_memory_allocated``. The Gumbel
steps come first, so memory the allocator keeps from them can only raise the
post-warm-up figures, never lower them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark import PeakMemory, _parse_size, build_benchmark_model, build_cfg, make_batch  # noqa: E402

logger = logging.getLogger(__name__)


def measure(args: argparse.Namespace) -> dict:
    from score.engine.trainer import build_optimizer

    torch.manual_seed(0)
    cfg = build_cfg(args.which, "SCORE", args.device)
    model = build_benchmark_model(cfg, rai_phase="gumbel")
    optimizer = build_optimizer(cfg, model)
    batch = make_batch(args.size, args.batch, len(model.train_class_names))
    model.train()
    rows = []

    def step(phase: str, record: bool) -> None:
        load = os.getloadavg()[0]
        with PeakMemory(args.device) as peak:
            tic = time.perf_counter()
            losses = model(batch)
            forward_s = time.perf_counter() - tic
            optimizer.zero_grad(set_to_none=True)
            sum(losses.values()).backward()
            optimizer.step()
            step_s = time.perf_counter() - tic
        assert (phase == "gumbel") == model.rai.in_gumbel_phase or not record
        logger.info("%s step: %.1f s (forward %.1f s), peak %.0f MB", phase, step_s, forward_s, peak.mb)
        if record:
            rows.append(
                {
                    "phase": phase,
                    "step_s": step_s,
                    "forward_s": forward_s,
                    "peak_mb": peak.mb,
                    "memory_scope": peak.scope,
                    "load1": load,
                }
            )

    step("gumbel", record=False)
    for _ in range(args.steps):
        step("gumbel", record=True)
    while model.rai.in_gumbel_phase:
        model.rai.step()
    step("fixed", record=False)
    for _ in range(args.steps):
        step("fixed", record=True)
    gumbel = max(r["peak_mb"] for r in rows if r["phase"] == "gumbel")
    fixed = max(r["peak_mb"] for r in rows if r["phase"] == "fixed")
    return {
        "command": " ".join(sys.argv),
        "which": args.which,
        "size": list(args.size),
        "batch": args.batch,
        "threads": torch.get_num_threads(),
        "rows": rows,
        "gumbel_peak_mb": gumbel,
        "fixed_peak_mb": fixed,
        "ratio": gumbel / fixed,
    }


def render(report: dict) -> str:
    lines = [
        f"Command: `{report['command']}`",
        "",
        "| phase | step s | forward s | peak MB | load1 |",
        "|-------|-------:|----------:|--------:|------:|",
    ]
    for r in report["rows"]:
        cells = (r["phase"], f"{r['step_s']:.1f}", f"{r['forward_s']:.1f}", f"{r['peak_mb']:.0f}")
        lines.append("| " + " | ".join(cells) + f" | {r['load1']:.2f} |")
    lines += ["", f"Gumbel / post-warm-up peak: {report['ratio']:.3f}", ""]
    return "\n".join(lines)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--which", choices=["tiny", "full"], default="full")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=_parse_size, default=(512, 683))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=1, help="measured steps per phase")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", help="write OUTPUT.md and OUTPUT.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    report = measure(args)
    text = render(report)
    print(text)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output + ".json").write_text(json.dumps(report, indent=2))
        Path(args.output + ".md").write_text(text)


if __name__ == "__main__":
    main()
