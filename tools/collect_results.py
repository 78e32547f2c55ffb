"""Collect the per-target evaluations of one run into a row of the paper's Table 1 (or Table A).

    python tools/collect_results.py output/score_isaid/eval_final --targets nwpu sota fast sior
    python tools/collect_results.py output/score_landdiscover_semantic/eval_final \
        --targets flair fast potsdam floodnet --task sem_seg

``<eval_dir>/<target>/`` holds one evaluation (``train_net.py --eval-only``
with OUTPUT_DIR ``<eval_dir>/<target>``); its ``results.json`` (written by
``InstanceSegEvaluator`` or ``SemSegMIoUEvaluator`` under ``inference/<dataset>/``)
is found anywhere below. The row has each target's metric (mask AP for task
"segm", mIoU for "sem_seg"), their average, and each target's metric over
seen and unseen classes when the evaluation reported them. The table
is printed as markdown and written to ``<eval_dir>/results.md`` and
``<eval_dir>/results.csv``. A missing or duplicated result is an error.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys
from glob import glob
from typing import Any, Optional, Sequence

__all__ = ["TASK_METRICS", "collect", "find_result", "results_row", "to_csv", "to_markdown"]

# The metric of each task's row: COCO AP for instances, mIoU for semantic segmentation.
TASK_METRICS = {"segm": "AP", "bbox": "AP", "sem_seg": "mIoU"}


def find_result(target_dir: str) -> str:
    """The single ``results.json`` below ``target_dir``."""
    found = sorted(glob(os.path.join(target_dir, "**", "results.json"), recursive=True))
    if len(found) != 1:
        what = "no results.json" if not found else f"{len(found)} results.json files ({', '.join(found)})"
        raise FileNotFoundError(f"Expected one evaluation result below {target_dir}, found {what}")
    return found[0]


def _number(value: Any) -> float:
    """A metric from results.json; null (no ground truth or no detection) is NaN."""
    return float("nan") if value is None else float(value)


def results_row(results: dict[str, dict], task: str = "segm") -> tuple[list[str], list[float]]:
    """Header and values of one row.

    Args:
        results: target name -> parsed results.json, in column order.
        task: which task's metrics to read ("segm" for the paper's mask AP, "sem_seg" for mIoU).

    Returns:
        (["<target>", ..., "average", "<target> seen", "<target> unseen", ...],
        "mean seen", "mean unseen"], the matching numbers in percent). Seen /
        unseen columns appear for the targets whose evaluation has them; a
        mean is over those targets.
    """
    if task not in TASK_METRICS:
        raise ValueError(f"Unknown task {task!r}; one of {sorted(TASK_METRICS)}")
    metric = TASK_METRICS[task]
    header, values = [], []
    for target, result in results.items():
        if task not in result:
            raise KeyError(f"Result of target {target!r} has no {task!r} metrics (has {sorted(result)})")
        header.append(target)
        values.append(_number(result[task][metric]))
    header.append("average")
    values.append(sum(values) / len(values))
    groups: dict[str, list[float]] = {"seen": [], "unseen": []}
    for target, result in results.items():
        for group in groups:
            if group in result[task]:
                header.append(f"{target} {group}")
                values.append(_number(result[task][group][metric]))
                groups[group].append(values[-1])
    for group, group_values in groups.items():
        if group_values:
            header.append(f"mean {group}")
            values.append(sum(group_values) / len(group_values))
    return header, values


def _format(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.2f}"


def to_markdown(name: str, header: Sequence[str], values: Sequence[float]) -> str:
    """A one-row markdown table, numbers with two decimals as in the paper."""
    lines = [
        "| " + " | ".join(["run", *header]) + " |",
        "| " + " | ".join(["---"] * (len(header) + 1)) + " |",
        "| " + " | ".join([name, *(_format(v) for v in values)]) + " |",
    ]
    return "\n".join(lines) + "\n"


def to_csv(name: str, header: Sequence[str], values: Sequence[float]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["run", *header])
    writer.writerow([name, *(_format(v) for v in values)])
    return out.getvalue()


def collect(
    eval_dir: str, targets: Optional[Sequence[str]] = None, name: Optional[str] = None, task: str = "segm"
) -> str:
    """Read the targets' results; write ``results.md`` and ``results.csv`` in ``eval_dir``; return markdown.

    Args:
        eval_dir: folder with one sub-folder per target.
        targets: column order; default every sub-folder, sorted.
        name: row label; default the run folder (parent of ``eval_dir``).
        task: metrics to read.
    """
    eval_dir = os.path.normpath(eval_dir)
    if targets is None:
        targets = sorted(d for d in os.listdir(eval_dir) if os.path.isdir(os.path.join(eval_dir, d)))
    if not targets:
        raise FileNotFoundError(f"No target folder in {eval_dir}")
    results = {}
    for target in targets:
        with open(find_result(os.path.join(eval_dir, target))) as f:
            results[target] = json.load(f)
    header, values = results_row(results, task)
    name = name or os.path.basename(os.path.dirname(os.path.abspath(eval_dir)))
    markdown = to_markdown(name, header, values)
    with open(os.path.join(eval_dir, "results.md"), "w") as f:
        f.write(markdown)
    with open(os.path.join(eval_dir, "results.csv"), "w") as f:
        f.write(to_csv(name, header, values))
    return markdown


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("eval_dir", help="folder with one evaluation per target (<run>/eval_final)")
    parser.add_argument("--targets", nargs="+", help="target folders in column order (default: all, sorted)")
    parser.add_argument("--name", help="row label (default: the run folder's name)")
    parser.add_argument(
        "--task",
        default="segm",
        choices=sorted(TASK_METRICS),
        help="metrics to read: segm (default, the paper's mask AP) or sem_seg (mIoU, Table A)",
    )
    args = parser.parse_args(argv)
    sys.stdout.write(collect(args.eval_dir, args.targets, args.name, args.task))


if __name__ == "__main__":
    main()
