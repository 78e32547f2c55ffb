#!/usr/bin/env python
"""Controlled check of the paper's claim on the synthetic context data.

Trains the tiny SCORE with RAI and GCA and the same model without them (the
FC-CLIP baseline, no context branch) on the synthetic iSAID split, for
several seeds, evaluates each run on the listed synthetic test splits, and
writes mean and spread per variant as a markdown table.

    python tools/context_check.py --root output/context_check --seeds 0 1 2 \\
        --iters 300 --jobs 2 --output context_check.md

Each run is ``train_net.py --config-file <variant config> SEED s
SOLVER.MAX_ITER n`` with DATASETS.TEST set to the test splits; the synthetic
data are generated under ``<root>/datasets`` unless they already exist.
In the synthetic scenes the same object shape belongs to different classes
depending on its surround (ship on water vs vehicle on road, courts on grass
vs asphalt, tanks vs roundabouts), so a model that uses the context can
separate them and one that does not must guess.
"""

import argparse
import concurrent.futures
import json
import logging
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {
    "SCORE (RAI + GCA)": "configs/tiny/score_tiny_isaid.yaml",
    "baseline (no context)": "configs/tiny/score_tiny_isaid_baseline.yaml",
}

logger = logging.getLogger("score.context_check")


def run(
    config: str, seed: int, iters: int, tests: List[str], output_dir: Path, env: dict
) -> Dict[str, float]:
    """Train and evaluate one run; {test split: segm AP}. A run whose results exist is not repeated."""
    result_files = {split: output_dir / "inference" / split / "results.json" for split in tests}
    if all(f.exists() for f in result_files.values()):
        logger.info("reusing the finished run in %s", output_dir)
        return {split: json.loads(f.read_text())["segm"]["AP"] for split, f in result_files.items()}
    steps = f"({int(iters * 0.9)}, {int(iters * 0.95)})"
    cmd = [
        sys.executable,
        str(REPO / "train_net.py"),
        "--config-file",
        str(REPO / config),
        "--num-gpus",
        "1",
        "SEED",
        str(seed),
        "SOLVER.MAX_ITER",
        str(iters),
        "SOLVER.STEPS",
        steps,
        "SOLVER.CHECKPOINT_PERIOD",
        str(iters * 10),
        "DATASETS.TEST",
        str(tuple(tests)),
        "OUTPUT_DIR",
        str(output_dir),
    ]
    logger.info("%s", " ".join(cmd))
    with open(output_dir.with_suffix(".log"), "w") as log:
        subprocess.run(cmd, check=True, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    return {split: json.loads(f.read_text())["segm"]["AP"] for split, f in result_files.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", default="output/context_check", help="runs and synthetic data go here")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--iters", type=int, default=300, help="training iterations per run")
    parser.add_argument("--tests", nargs="+", default=["isaid_val_instance", "nwpu_val_instance"])
    parser.add_argument("--output", default=None, help="write the markdown table here too")
    parser.add_argument(
        "--jobs", type=int, default=1, help="runs at a time (each then gets one thread, OMP_NUM_THREADS=1)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="[context_check] %(message)s")

    root = Path(args.root).resolve()
    env = dict(os.environ, DETECTRON2_DATASETS=str(root / "datasets"), PYTHONPATH=str(REPO))
    if not (root / "datasets" / "iSAID").exists():
        subprocess.run(
            [
                sys.executable,
                str(REPO / "tools" / "make_synthetic_datasets.py"),
                "--root",
                str(root / "datasets"),
            ],
            check=True,
            env=env,
        )

    if args.jobs > 1:
        env["OMP_NUM_THREADS"] = "1"
    runs = [(name, config, seed) for name, config in VARIANTS.items() for seed in args.seeds]
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {}
        for name, config, seed in runs:
            out = root / f"{Path(config).stem}_seed{seed}"
            out.mkdir(parents=True, exist_ok=True)
            futures[(name, seed)] = pool.submit(run, config, seed, args.iters, args.tests, out, env)
        results: Dict[str, List[Dict[str, float]]] = {}
        for (name, seed), future in futures.items():
            results.setdefault(name, []).append(future.result())
            logger.info("%s seed %d: %s", name, seed, results[name][-1])

    header = "| variant | " + " | ".join(f"{t} AP (mean ± sd)" for t in args.tests) + " | per seed |"
    lines = [header, "|" + " --- |" * (len(args.tests) + 2)]
    for name, runs in results.items():
        cells = []
        for t in args.tests:
            values = [r[t] for r in runs]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.2f} ± {spread:.2f}")
        per_seed = "; ".join(", ".join(f"{r[t]:.2f}" for t in args.tests) for r in runs)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {per_seed} |")
    table = "\n".join(lines)
    print(f"seeds {args.seeds}, {args.iters} iterations each\n\n{table}")
    if args.output:
        Path(args.output).write_text(table + "\n")


if __name__ == "__main__":
    main()
