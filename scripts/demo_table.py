"""The demo's summary of a trained run: in-domain AP and the cross-dataset table, one row per target.

    python scripts/demo_table.py RUN_DIR

RUN_DIR is a training run folder after ``eval_isaid.sh RUN_DIR`` (or ``eval_sior.sh``): the
in-domain evaluation under ``RUN_DIR/inference/<dataset>/results.json`` and one evaluation per
target under ``RUN_DIR/eval_final/<target>/``. The numbers are those of
``RUN_DIR/eval_final/results.md`` (tools/collect_results.py computes both); the classes of each
target that the training vocabulary never names (its unseen classes) are listed below the table.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import textwrap
import warnings
from glob import glob

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))
sys.path.insert(0, REPO)

from collect_results import find_result, results_row  # noqa: E402  (tools/collect_results.py)

warnings.filterwarnings("ignore", category=FutureWarning)  # torch's deprecation notices at `import score`
from score.vocabulary import display_name  # noqa: E402


def _ap(value) -> str:
    return "  -" if value is None or math.isnan(value) else f"{value:.2f}"


def in_domain_line(run_dir: str) -> str:
    """AP, AP50 and AP75 of the run's own test split (the evaluation at the end of training)."""
    found = sorted(glob(os.path.join(run_dir, "inference", "*", "results.json")))
    if len(found) != 1:
        raise FileNotFoundError(f"Expected one results.json under {run_dir}/inference/*/, found {len(found)}")
    with open(found[0]) as f:
        segm = json.load(f)["segm"]
    dataset = os.path.basename(os.path.dirname(found[0]))
    return f"{dataset}: AP {_ap(segm['AP'])}  AP50 {_ap(segm['AP50'])}  AP75 {_ap(segm['AP75'])}"


def targets_of(eval_dir: str) -> list[str]:
    """The targets in the order of eval_final/results.csv (the columns before "average")."""
    with open(os.path.join(eval_dir, "results.csv")) as f:
        header = next(csv.reader(f))
    return header[1 : header.index("average")]


def cross_dataset_table(eval_dir: str, targets: list[str]) -> str:
    """One row per target (AP of all classes, seen AP, unseen AP, class counts), the mean, and the
    names of each target's unseen classes."""
    results = {}
    for target in targets:
        with open(find_result(os.path.join(eval_dir, target))) as f:
            results[target] = json.load(f)
    header, values = results_row(results)
    column = dict(zip(header, values))

    lines = [f"{'target':<8}{'AP':>8}{'seen AP':>10}{'unseen AP':>11}{'#seen':>8}{'#unseen':>9}"]
    for target in targets:
        segm = results[target]["segm"]
        n_seen = len(segm.get("seen", {}).get("classes", []))
        n_unseen = len(segm.get("unseen", {}).get("classes", []))
        lines.append(
            f"{target:<8}{_ap(column[target]):>8}{_ap(column.get(f'{target} seen')):>10}"
            f"{_ap(column.get(f'{target} unseen')):>11}{n_seen:>8}{n_unseen:>9}"
        )
    lines.append(
        f"{'mean':<8}{_ap(column['average']):>8}{_ap(column.get('mean seen')):>10}"
        f"{_ap(column.get('mean unseen')):>11}"
    )
    lines += ["", "Unseen classes (no training class name or synonym matches them):"]
    for target in targets:
        names = [display_name(name) for name in results[target]["segm"].get("unseen", {}).get("classes", [])]
        text = ", ".join(names) if names else "none"
        lines += textwrap.wrap(text, width=78, initial_indent=f"  {target:<6}", subsequent_indent=" " * 8)
    return "\n".join(lines)


def main(argv=None) -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("run_dir", help="training run folder, evaluated by eval_isaid.sh / eval_sior.sh")
    parser.add_argument("--eval-name", default="eval_final", help="folder of the per-target evaluations")
    parser.add_argument("--targets", nargs="+", help="default: the columns of <eval-name>/results.csv")
    args = parser.parse_args(argv)
    eval_dir = os.path.join(args.run_dir, args.eval_name)
    print("## In-domain (mask AP, %; every class seen)")
    print(in_domain_line(args.run_dir))
    print()
    print("## Cross-dataset (mask AP, %): all classes, those the training set names (seen) and not")
    print(cross_dataset_table(eval_dir, args.targets or targets_of(eval_dir)))


if __name__ == "__main__":
    main()
