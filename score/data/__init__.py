"""SCORE datasets: importing this package registers the instance and semantic splits of DATASETS.md."""

from .datasets import (  # noqa: F401
    SEM_SEG_SPLITS,
    SPLITS,
    ensemble_exponents,
    register_all,
    register_all_sem_seg,
    register_instance_dataset,
    register_sem_seg_dataset,
)
from .labels import LabelEncoding  # noqa: F401
