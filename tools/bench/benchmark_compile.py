#!/usr/bin/env python
"""``torch.compile`` of the heavy frozen modules at inference, module by module, against eager.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python tools/bench/benchmark_compile.py --which full \\
        --modules backbone pixel_decoder context --rounds 3 --output tools/bench/results/compile_modules

Builds the SCORE model of ``--which`` with random weights (seed 0, as
tools/bench/benchmark.py), preprocesses one random ``--size`` image as the model
does, and for each module of ``--modules`` (each on its own, the others eager):

* ``backbone``: the frozen ConvNeXt CLIP trunk, ``model.backbone`` (B, 3, H, W)
  -> res2..res5, clip_vis_dense;
* ``pixel_decoder``: ``pixel_decoder.forward_features`` on those features
  (its deformable sampling is never compiled, see ``ms_deform_attn.py``);
* ``context``: the frozen RemoteCLIP ViT context tower (``context_encoder``).

compiles the function that ``MODEL.SCORE.COMPILE_AT_INFERENCE`` compiles in
that module with inductor (``--mode``; ``--freezing``, the option's setting:
weights folded in as constants and prepacked for oneDNN, inference only),
calls it through the module's forward as the option does, times the first
compiled call (compile + run), then alternates eager and compiled calls for
``--rounds`` rounds under ``torch.inference_mode`` with one thread, and
reports each round's times, their ratio, and the largest absolute and
relative difference of the outputs (relative: to the largest magnitude of
the eager output). The compile cache of each module is cleared after it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import torch
from tabulate import tabulate
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchmark  # noqa: E402  (configs, batches, random-weight models)

logger = logging.getLogger("score.benchmark_compile")


def _tensors(output) -> Dict[str, torch.Tensor]:
    """Named tensors of a module output: a dict, a tuple / list, or ContextFeatures."""
    if isinstance(output, torch.Tensor):
        return {"out": output}
    if isinstance(output, dict):
        return {k: v for k, v in output.items() if isinstance(v, torch.Tensor)}
    if isinstance(output, (tuple, list)):
        named = {}
        for index, item in enumerate(output):
            named.update({f"{index}.{k}": v for k, v in _tensors(item).items()})
        return named
    return {k: v for k, v in vars(output).items() if isinstance(v, torch.Tensor)}


# Module name -> (its attribute path in the model, the attribute that holds its compiled
# function, the function that MODEL.SCORE.COMPILE_AT_INFERENCE compiles).
MODULES = {
    "backbone": ("backbone", "_compiled_features", "_features"),
    "pixel_decoder": ("sem_seg_head.pixel_decoder", "_compiled_forward_features", "_forward_features"),
    "context": ("context_encoder", "_compiled_tensors", "_tensors"),
}


def _module_call(model: nn.Module, name: str, images: torch.Tensor) -> Tuple[nn.Module, Callable]:
    """(module, a call of its forward on this input) for module ``name``."""
    module = model
    for attribute in MODULES[name][0].split("."):
        module = getattr(module, attribute)
    if name == "pixel_decoder":
        with torch.inference_mode():
            features = model.backbone(images)
        return module, lambda: module.forward_features(features)
    return module, lambda: module(images)


def _timed(call: Callable) -> tuple:
    tic = time.perf_counter()
    with torch.inference_mode():
        output = call()
    return time.perf_counter() - tic, output


def compare_module(model: nn.Module, name: str, images: torch.Tensor, *, mode: str, rounds: int) -> dict:
    """Time the module's forward eager and with its function compiled, alternately; compare outputs.

    The compiled function is the one of MODEL.SCORE.COMPILE_AT_INFERENCE, called from the
    module's forward as the option does, but compiled with ``mode`` and inductor's current
    ``freezing`` setting.
    """
    import torch._inductor.config as inductor_config

    module, call = _module_call(model, name, images)
    _, holder, function = MODULES[name]
    compiled = torch.compile(getattr(module, function), mode=mode)
    setattr(module, holder, None)
    eager_s, eager_out = _timed(call)
    setattr(module, holder, compiled)
    first_s, compiled_out = _timed(call)
    logger.info("%s: eager %.2f s, first compiled call %.1f s", name, eager_s, first_s)
    eager_times: List[float] = []
    compiled_times: List[float] = []
    for _ in range(rounds):
        setattr(module, holder, None)
        eager_times.append(_timed(call)[0])
        setattr(module, holder, compiled)
        compiled_times.append(_timed(call)[0])
        logger.info("%s: eager %.2f s, compiled %.2f s", name, eager_times[-1], compiled_times[-1])
    setattr(module, holder, None)
    eager_tensors, compiled_tensors = _tensors(eager_out), _tensors(compiled_out)
    max_abs, max_rel, equal = 0.0, 0.0, True
    for key, ref in eager_tensors.items():
        new = compiled_tensors[key]
        diff = float((new.float() - ref.float()).abs().max())
        max_abs = max(max_abs, diff)
        max_rel = max(max_rel, diff / max(float(ref.float().abs().max()), 1e-12))
        equal = equal and torch.equal(new, ref)
    torch._dynamo.reset()
    return {
        "module": name,
        "mode": mode,
        "freezing": inductor_config.freezing,
        "first compiled call s": round(first_s, 1),
        "eager s (each round)": " / ".join(f"{t:.2f}" for t in eager_times),
        "compiled s (each round)": " / ".join(f"{t:.2f}" for t in compiled_times),
        "speed-up (each round)": " / ".join(f"{e / c:.2f}" for e, c in zip(eager_times, compiled_times)),
        "bit-equal": equal,
        "max abs diff": max_abs,
        "max rel diff": max_rel,
        "load1": round(os.getloadavg()[0], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--which", choices=sorted(benchmark.CONFIGS), default="full")
    parser.add_argument("--modules", nargs="+", default=["backbone", "pixel_decoder", "context"])
    parser.add_argument("--size", type=benchmark._parse_size, default=(512, 683))
    parser.add_argument("--mode", default="default", help="torch.compile mode")
    parser.add_argument("--freezing", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--opts", nargs="*", default=[], help="KEY VALUE config overrides")
    parser.add_argument("--output", required=True, help="OUTPUT.json, OUTPUT.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    import torch._inductor.config as inductor_config

    inductor_config.compile_threads = args.threads
    inductor_config.freezing = args.freezing

    torch.manual_seed(0)
    cfg = benchmark.build_cfg(args.which, "SCORE", "cpu", args.opts)
    model = benchmark.build_benchmark_model(cfg)
    batch = benchmark.make_batch(args.size, 1, len(model.train_class_names))
    images = model.preprocess_image(batch).tensor
    rows = []
    for name in args.modules:
        rows.append(compare_module(model, name, images, mode=args.mode, rounds=args.rounds))
        Path(f"{args.output}.json").write_text(
            json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=1)
        )
    size = "x".join(map(str, args.size))
    text = "\n".join(
        [
            f"Command: `{' '.join(sys.argv)}`",
            "",
            f"{args.which} SCORE, random weights, CPU, {args.threads} thread(s), {size} image "
            f"(padded {tuple(images.shape[-2:])}), inference_mode:",
            "",
            tabulate(rows, headers="keys", tablefmt="github"),
        ]
    )
    Path(f"{args.output}.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
