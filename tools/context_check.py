#!/usr/bin/env python
"""The paper's Table 2 on the tiny world: baseline, +RAI, +GCA and SCORE, several seeds each.

Each variant of ``configs/tiny_world/`` (the tiny SCORE on the frozen tiny
towers pretrained on the concepts of all five vocabularies) is trained on the
synthetic iSAID split per seed, evaluated in-domain (synthetic iSAID val) and
on the four synthetic targets through ``eval_isaid.sh`` (the authors'
per-target ensemble exponents), and once more on the targets with the
out-of-vocabulary term switched off (alpha = beta = 0). The table gives mean
and standard deviation over the seeds:

    python tools/context_check.py --root output/context_check --seeds 0 1 2 --jobs 2 \\
        --output context_check.md

In the synthetic scenes the same object shape belongs to different classes
depending on its surround (ship on water vs vehicle on road, courts on grass
vs asphalt, tanks vs roundabouts) and the scene type decides which objects
appear, so a model that uses the context can separate them and one that does
not must guess. A run whose results exist is not repeated.
"""

import argparse
import concurrent.futures
import json
import logging
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
from collect_results import find_result  # noqa: E402

VARIANTS = {
    "baseline (FC-CLIP)": "configs/tiny_world/baseline_isaid.yaml",
    "+ RAI": "configs/tiny_world/rai_isaid.yaml",
    "+ GCA": "configs/tiny_world/gca_isaid.yaml",
    "SCORE (RAI + GCA)": "configs/tiny_world/score_isaid.yaml",
}
TARGETS = ("nwpu", "sota", "fast", "sior")
NO_OOV = "eval_no_oov"  # the targets again with alpha = beta = 0

logger = logging.getLogger("score.context_check")


def _ap(result: dict, group: str = "") -> float:
    segm = result["segm"][group] if group else result["segm"]
    return float("nan") if segm.get("AP") is None else float(segm["AP"])


def _targets(eval_dir: Path) -> Dict[str, dict]:
    return {t: json.loads(Path(find_result(str(eval_dir / t))).read_text()) for t in TARGETS}


def summarise(run_dir: Path) -> Dict[str, float]:
    """The figures of one finished run (mask AP, %)."""
    in_domain = json.loads((run_dir / "inference" / "isaid_val_instance" / "results.json").read_text())
    targets = _targets(run_dir / "eval_final")
    no_oov = _targets(run_dir / NO_OOV)
    return {
        "isaid": _ap(in_domain),
        "cross": statistics.mean(_ap(r) for r in targets.values()),
        "seen": statistics.mean(_ap(r, "seen") for r in targets.values()),
        "unseen": statistics.mean(_ap(r, "unseen") for r in targets.values()),
        "unseen_no_oov": statistics.mean(_ap(r, "unseen") for r in no_oov.values()),
    }


def run(config: str, seed: int, iters: Optional[int], run_dir: Path, env: dict) -> Dict[str, float]:
    """Train, evaluate in-domain, on the targets and on the targets without the OOV term."""
    log = run_dir.with_suffix(".log")
    try:
        return summarise(run_dir)
    except (FileNotFoundError, KeyError):
        pass
    commands = []
    if not (run_dir / "model_final.pth").exists():
        schedule = []
        if iters is not None:
            steps = f"({int(iters * 0.9)}, {int(iters * 0.95)})"
            schedule = ["SOLVER.MAX_ITER", str(iters), "SOLVER.STEPS", steps]
        commands.append(
            [sys.executable, str(REPO / "train_net.py"), "--config-file", str(REPO / config),
             "--num-gpus", "1", "SEED", str(seed), *schedule,
             "SOLVER.CHECKPOINT_PERIOD", "1000000", "OUTPUT_DIR", str(run_dir)]
        )  # fmt: skip
    evaluate = ["bash", str(REPO / "eval_isaid.sh"), str(run_dir)]
    commands.append(evaluate)
    off = ["MODEL.SCORE.GEOMETRIC_ENSEMBLE_ALPHA", "0.0", "MODEL.SCORE.GEOMETRIC_ENSEMBLE_BETA", "0.0"]
    commands.append(["env", f"EVAL_NAME={NO_OOV}", *evaluate, *off])
    run_env = dict(env, CONFIG=str(REPO / config), PYTHON=sys.executable)
    with open(log, "a") as out:
        for cmd in commands:
            logger.info("%s", " ".join(cmd))
            subprocess.run(cmd, check=True, env=run_env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    return summarise(run_dir)


def _cell(values: List[float]) -> str:
    if any(math.isnan(v) for v in values):
        return "nan"
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {spread:.2f}"


COLUMNS = {
    "isaid": "iSAID val AP",
    "cross": "cross-dataset AP (4 targets)",
    "seen": "seen AP (targets)",
    "unseen": "unseen AP (targets)",
    "unseen_no_oov": "unseen AP, α = β = 0",
}


def table(results: Dict[str, List[Dict[str, float]]]) -> str:
    lines = [
        "| variant | " + " | ".join(COLUMNS.values()) + " | per seed (iSAID, cross, unseen) |",
        "|" + " --- |" * (len(COLUMNS) + 2),
    ]
    for name, runs in results.items():
        cells = [_cell([r[key] for r in runs]) for key in COLUMNS]
        per_seed = "; ".join(f"{r['isaid']:.1f}, {r['cross']:.1f}, {r['unseen']:.1f}" for r in runs)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {per_seed} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", default="output/context_check", help="runs and synthetic data go here")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--iters",
        type=int,
        default=None,
        help="training iterations per run, lr steps at 90 and 95 %% (default: the configs' schedule)",
    )
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--output", default=None, help="write the markdown table here too")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (each with OMP_NUM_THREADS=1)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="[context_check] %(message)s")

    root = Path(args.root).resolve()
    env = dict(os.environ, DETECTRON2_DATASETS=str(root / "datasets"), PYTHONPATH=str(REPO))
    env.setdefault("OMP_NUM_THREADS", "1")
    if not (root / "datasets" / "iSAID").exists():
        cmd = [
            sys.executable,
            str(REPO / "tools" / "make_synthetic_datasets.py"),
            "--root",
            str(root / "datasets"),
        ]
        subprocess.run(cmd, check=True, env=env)

    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {}
        for name in args.variants:
            config = VARIANTS[name]
            for seed in args.seeds:
                run_dir = root / f"{Path(config).stem}_seed{seed}"
                run_dir.mkdir(parents=True, exist_ok=True)
                futures[(name, seed)] = pool.submit(run, config, seed, args.iters, run_dir, env)
        results: Dict[str, List[Dict[str, float]]] = {}
        for (name, seed), future in futures.items():
            results.setdefault(name, []).append(future.result())
            logger.info("%s seed %d: %s", name, seed, results[name][-1])

    schedule = "the configs' schedule" if args.iters is None else f"{args.iters} iterations each"
    text = f"seeds {args.seeds}, {schedule}; mask AP (%)\n\n{table(results)}"
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")


if __name__ == "__main__":
    main()
