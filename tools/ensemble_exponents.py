"""Print the geometric-ensemble exponents "alpha beta" the authors used for a train / target pair.

    python tools/ensemble_exponents.py isaid nwpu                                  # 0.4 0.4
    python tools/ensemble_exponents.py isaid_train_instance nwpu_val_instance      # same

The values are metadata of the registered test split (score/data/datasets.py,
DATASETS.md); the evaluation scripts read them from here instead of writing
numbers into the shell. A family name (isaid, sior, nwpu, sota, fast) stands
for its ``<family>_train_instance`` (training) or ``<family>_val_instance``
(target) split. Output: one line, alpha then beta, on stdout.
"""

from __future__ import annotations

import argparse
import sys

import score  # noqa: F401  (detectron2 compatibility shims, dataset registrations)

# isort: split
from detectron2.data import DatasetCatalog

from score.data.datasets import ensemble_exponents


def split_name(name: str, subset: str) -> str:
    """A registered split name as given, or ``<family>_<subset>_instance`` for a family name."""
    return name if name in DatasetCatalog.list() else f"{name.lower()}_{subset}_instance"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("train", help="training split or family (isaid, sior)")
    parser.add_argument("target", help="target split or family (nwpu, sota, fast, sior, isaid)")
    args = parser.parse_args(argv)
    alpha, beta = ensemble_exponents(split_name(args.train, "train"), split_name(args.target, "val"))
    # Always with a decimal point: the values go to float config keys, and
    # detectron2's config refuses "0" (an int) for a float key.
    sys.stdout.write(f"{float(alpha)!r} {float(beta)!r}\n")


if __name__ == "__main__":
    main()
