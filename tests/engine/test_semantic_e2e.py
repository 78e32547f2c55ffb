"""Semantic segmentation end to end on generated label PNGs: train the tiny model, then
``eval_landdiscover.sh`` (the authors-style ``train_net.py --eval-only`` per target) and the Table A row."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from score.config import get_score_cfg
from score.data.datasets import SEM_SEG_SPLITS
from score.engine import Trainer
from tests.conftest import REPO

pytestmark = pytest.mark.slow

TINY_SEMANTIC = REPO / "configs" / "tiny" / "score_tiny_landdiscover_semantic.yaml"


def _write_split(root, split, num_images, size, rng):
    """Random images and labels (the split's class and ignore values) in the split's registered layout."""
    image_dir, label_dir = root / split.image_dir, root / split.label_dir
    image_dir.mkdir(parents=True, exist_ok=True)
    label_dir.mkdir(parents=True, exist_ok=True)
    values = list(range(len(split.class_names))) + list(split.ignore_values)
    for i in range(num_images):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(
            image_dir / f"tile{i}.{split.image_ext}"
        )
        # Blocks of one value, so that classes cover areas as in real label maps.
        blocks = rng.choice(values, size=(size[0] // 8, size[1] // 8)).astype(np.uint8)
        label = np.kron(blocks, np.ones((8, 8), np.uint8))
        Image.fromarray(label).save(label_dir / f"tile{i}.{split.label_ext}")


def test_train_then_eval_landdiscover_gives_the_table_a_row(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    splits = {s.name: s for s in SEM_SEG_SPLITS}
    root = tmp_path / "datasets"
    _write_split(root, splits["landdiscover50k_train_sem_seg"], 4, (64, 80), rng)
    _write_split(root, splits["floodnet_val_sem_seg"], 2, (48, 64), rng)
    _write_split(root, splits["potsdam_val_sem_seg"], 2, (40, 40), rng)
    monkeypatch.setenv("DETECTRON2_DATASETS", str(root))

    run = tmp_path / "run"
    cfg = get_score_cfg()
    cfg.merge_from_file(str(TINY_SEMANTIC))
    cfg.merge_from_list(
        [
            "OUTPUT_DIR", str(run), "SOLVER.MAX_ITER", "3", "SOLVER.STEPS", "(2,)",
            "SOLVER.CHECKPOINT_PERIOD", "100", "INPUT.IMAGE_SIZE", "64", "INPUT.MIN_SIZE_TEST", "64",
            "INPUT.MAX_SIZE_TEST", "96", "DATASETS.TEST", "()",
            "DATASETS.VALIDATION_CACHE_DIR", str(tmp_path / "cache"),
        ]
    )  # fmt: skip
    cfg.freeze()
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert (run / "model_final.pth").is_file()

    env = dict(
        os.environ,
        CONFIG=str(TINY_SEMANTIC),
        TARGETS="floodnet potsdam",
        PYTHON=sys.executable,
        OMP_NUM_THREADS="1",
    )
    extra = ["INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96"]
    extra += ["DATASETS.VALIDATION_CACHE_DIR", str(tmp_path / "cache")]
    done = subprocess.run(
        ["bash", str(REPO / "eval_landdiscover.sh"), str(run), *extra],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "landdiscover50k -> floodnet: alpha 0.4, beta 0.8" in done.stdout
    report = json.loads(
        (run / "eval_final" / "floodnet" / "inference" / "floodnet_val_sem_seg" / "results.json").read_text()
    )
    metrics = report["sem_seg"]
    assert report["num_images"] == 2 and np.isfinite(metrics["mIoU"])
    assert metrics["per_class"][0]["name"] == "Background" and metrics["per_class"][0]["scored"] is False
    # FloodNet against the 40 LandDiscover names: Background, water, tree, vehicle, grass are seen;
    # Background is not scored, so 4 seen and 5 unseen classes are averaged.
    assert metrics["seen"]["num_classes"] == 4 and metrics["unseen"]["num_classes"] == 5
    table = (run / "eval_final" / "results.md").read_text()
    header = table.splitlines()[0]
    for column in ("floodnet", "potsdam", "average", "floodnet seen", "potsdam unseen", "mean seen"):
        assert f" {column} |" in header
    assert "nan" not in table.splitlines()[2].split("|")[2]
