"""tools/model_summary.py runs as a script and counts what the model holds."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_model_summary_on_the_tiny_config():
    done = subprocess.run(
        [sys.executable, "tools/model_summary.py", "--config-file", "configs/tiny/score_tiny_isaid.yaml"],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {line.split("|")[2].strip(): line for line in done.stdout.splitlines() if line.count("|") > 5}
    branches = {"backbone.clip_model", "context_encoder.clip_model", "sem_seg_head.predictor.rai", "gca"}
    assert branches <= set(rows)
    frozen_tower = [c.strip() for c in rows["backbone.clip_model"].split("|")]
    assert frozen_tower[4] == "0"  # trainable parameters of the frozen CLIP
