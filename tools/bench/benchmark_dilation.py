#!/usr/bin/env python
"""Time and memory of RAI's Gumbel-phase dilation (forward + backward), one variant per subprocess.

    python tools/bench/benchmark_dilation.py --shape 1 300 128 128 --calls 1 \\
        --output tools/bench/results/dilation

Variants of sum_k w_k * maxfilter_k(M) over the six kernel candidates:

* ``reference``: the sparse-table max filters (``_mix_dilations``) under plain
  autograd, i.e. main's path before the change;
* ``recompute``: ``_MixedDilation`` (keeps M and w; backward recomputes each dilation with its argmax
  indices and scatters the gradient back), the path in use;
* ``max_pool2d``: six ``F.max_pool2d`` calls (autograd keeps int64 indices and each output).

Each subprocess runs ``--calls`` forwards (RAI runs once per decoder layer
before a single backward) and one backward, ``--repeats`` times. Columns:
forward and backward ms (minimum over the repeats); MB that autograd saved
for backward after the forwards (``saved_tensors_hooks``, each storage counted
once); peak RSS of the subprocess (ru_maxrss) and its growth over the RSS
before the first forward.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tabulate import tabulate

VARIANTS = ("reference", "recompute", "max_pool2d")
KERNELS = (3, 5, 7, 9, 11, 13)


def _forward(variant: str, mask: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    from score.modeling.dilation import _mix_dilations, _MixedDilation  # imported once by measure()

    if variant == "reference":
        return _mix_dilations(mask, weights, KERNELS)
    if variant == "recompute":
        return _MixedDilation.apply(mask, weights, KERNELS)
    return sum(w * F.max_pool2d(mask, k, stride=1, padding=k // 2) for w, k in zip(weights, KERNELS))


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def measure(variant: str, shape, calls: int, repeats: int) -> dict:
    import score.modeling.dilation  # noqa: F401  (before the RSS baseline)

    torch.manual_seed(0)
    masks = [torch.randn(shape, requires_grad=True) for _ in range(calls)]
    logits = torch.zeros(len(KERNELS), requires_grad=True)
    base_rss = _rss_mb()
    fwd, bwd, saved = [], [], 0
    for _ in range(repeats):
        storages = {}

        def pack(t: torch.Tensor, storages=storages):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        weights = logits.softmax(0)
        start = time.perf_counter()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = sum((_forward(variant, m, weights) * 1e-3).sum() for m in masks)
        fwd.append(time.perf_counter() - start)
        saved = sum(storages.values()) / 2**20
        start = time.perf_counter()
        loss.backward()
        bwd.append(time.perf_counter() - start)
        grads = [m.grad.clone() for m in masks] + [logits.grad.clone()]
        for t in [*masks, logits]:
            t.grad = None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    checksum = float(sum(g.double().abs().sum() for g in grads))
    return {
        "variant": variant,
        "forward ms": round(1e3 * min(fwd), 1),
        "backward ms": round(1e3 * min(bwd), 1),
        "saved MB": round(saved, 1),
        "peak RSS MB": round(peak, 1),
        "RSS growth MB": round(peak - base_rss, 1),
        "|grad| sum": checksum,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--shape", nargs=4, type=int, default=[1, 300, 128, 128], metavar=("B", "Q", "H", "W")
    )
    parser.add_argument("--calls", type=int, default=1, help="forwards before one backward")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--output", help="write OUTPUT.md and OUTPUT.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.worker:
        print(json.dumps(measure(args.worker, tuple(args.shape), args.calls, args.repeats)))
        return
    rows = []
    for variant in args.variants:
        cmd = [sys.executable, __file__, "--worker", variant, "--shape", *map(str, args.shape)]
        cmd += ["--calls", str(args.calls), "--repeats", str(args.repeats)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    table = tabulate(rows, headers="keys", tablefmt="github")
    header = f"shape {tuple(args.shape)}, kernels {KERNELS}, {args.calls} forward(s) per backward, 1 thread"
    print(header + "\n\n" + table)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output + ".md").write_text(header + "\n\n" + table + "\n")
        Path(args.output + ".json").write_text(
            json.dumps({"shape": args.shape, "calls": args.calls, "rows": rows})
        )


if __name__ == "__main__":
    main()
