"""SCORE datasets: importing this package registers the seven splits of DATASETS.md."""

from .datasets import (  # noqa: F401
    SPLITS,
    ensemble_exponents,
    register_all,
    register_instance_dataset,
)
