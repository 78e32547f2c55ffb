"""tools/bench/compare_checkouts.py with --trained: the named weights and vocabulary are the ones run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
from detectron2.modeling import build_model

from tests.conftest import REPO, tiny_cfg


def _checksum(model) -> float:
    return float(sum(p.detach().double().sum() for p in model.parameters()))


def test_trained_mode_loads_the_weights_and_encodes_the_vocabulary(tmp_path):
    torch.manual_seed(7)
    model = build_model(tiny_cfg())
    with torch.no_grad():
        for p in model.sem_seg_head.parameters():
            p.add_(0.01)
    weights = tmp_path / "tiny.pth"
    torch.save({"model": model.state_dict()}, weights)
    torch.manual_seed(0)
    seed0 = _checksum(build_model(tiny_cfg()))

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        cv2.imwrite(str(images / name), rng.integers(0, 256, (200, 260, 3), dtype=np.uint8))

    output = tmp_path / "report"
    done = subprocess.run(
        [
            sys.executable,
            "tools/bench/compare_checkouts.py",
            "--trained",
            "--repeats",
            "2",
            "--config",
            "configs/tiny/score_tiny_isaid.yaml",
            "--variant",
            f"ref={REPO}",
            "--variant",
            f"again={REPO}",
            "--variant",
            f"fused={REPO}:MODEL.SCORE.DECODER_FUSED_ATTENTION,True",
            "--image-dir",
            str(images),
            "--images",
            "a.png",
            "b.png",
            "--vocab",
            "ship, harbor",
            "--output",
            str(output),
            "--opts",
            "MODEL.WEIGHTS",
            str(weights),
            "MODEL.SCORE.TEXT_CLASSIFIER_CACHE_DIR",
            str(tmp_path / "cache"),
        ],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(Path(f"{output}.json").read_text())

    assert [r["variant"] for r in report["runs"]] == ["ref", "again", "fused"]
    for run in report["runs"]:
        assert run["checksum"] == _checksum(model) != seed0
        assert len(run["seconds_512x683_all"]) == 2 and run["seconds_512x683"] == min(
            run["seconds_512x683_all"]
        )
        outputs = np.load(f"{run['out']}.npz")
        for image in ("a", "b"):
            classes = outputs[f"{image}_classes"]
            assert len(classes) > 0 and set(classes.tolist()) <= {0, 1}  # the two-class vocabulary
    rows = {(r["variant"], r["image"]): r for r in report["agreement"]}
    assert set(rows) == {(v, i) for v in ("again", "fused") for i in ("a.png", "b.png")}
    for image in ("a.png", "b.png"):
        same = rows[("again", image)]
        assert same["classes_equal"] and same["min_mask_iou"] == 1.0 and same["max_score_diff"] == 0.0
    assert "trained weights" in Path(f"{output}.md").read_text()


def test_no_timed_forward_is_refused_before_any_model_is_built(tmp_path):
    done = subprocess.run(
        [sys.executable, "tools/bench/compare_checkouts.py", "--variant", f"a={REPO}", "--repeats", "0"]
        + ["--output", str(tmp_path / "report")],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "--repeats and --rounds must be at least 1" in done.stderr
    assert not (tmp_path / "report.json").exists()
