"""End to end on synthetic data with the tiny SCORE: training, resuming, the authors' evaluation commands."""

import json
import os
import subprocess
import sys

import pytest
import torch

import score  # noqa: F401  (detectron2 compatibility shims before detectron2.engine)

# isort: split
from detectron2.checkpoint import DetectionCheckpointer

from score.config import get_score_cfg
from score.engine import Trainer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY_CONFIG = os.path.join("configs", "tiny", "score_tiny_isaid.yaml")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """Synthetic iSAID training and NWPU test splits, small images; DETECTRON2_DATASETS points at them."""
    from synthetic_world.scenes import write_synthetic_datasets

    root = tmp_path_factory.mktemp("datasets")
    write_synthetic_datasets(
        str(root),
        num_train=6,
        num_val=3,
        min_size=64,
        max_size=96,
        splits=["isaid_train_instance", "nwpu_val_instance"],
    )
    previous = os.environ.get("DETECTRON2_DATASETS")
    os.environ["DETECTRON2_DATASETS"] = str(root)
    yield str(root)
    if previous is None:
        del os.environ["DETECTRON2_DATASETS"]
    else:
        os.environ["DETECTRON2_DATASETS"] = previous


def _tiny_cfg(output_dir, *opts):
    cfg = get_score_cfg()
    cfg.merge_from_file(os.path.join(REPO, TINY_CONFIG))
    cfg.merge_from_list(
        [
            "OUTPUT_DIR", str(output_dir),
            "DATASETS.TEST", "()",
            "INPUT.IMAGE_SIZE", "64",
            "SOLVER.MAX_ITER", "4",
            "SOLVER.STEPS", "(3,)",
            "SOLVER.CHECKPOINT_PERIOD", "2",
            *opts,
        ]
    )  # fmt: skip
    cfg.freeze()
    return cfg


def _rai_counter(state_dict):
    keys = [k for k in state_dict if k.endswith("rai.iteration")]
    assert len(keys) == 1, keys
    return int(state_dict[keys[0]])


def test_resume_continues_at_the_right_iteration_with_the_rai_counter(data_root, tmp_path):
    cfg = _tiny_cfg(tmp_path / "run")
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    uninterrupted = _rai_counter(trainer.model.state_dict())
    assert uninterrupted > 0

    # Stop after iteration 2 (index 1): keep only its checkpoint, as if the run had died there.
    run = tmp_path / "run"
    saved = torch.load(run / "model_0000001.pth", map_location="cpu", weights_only=False)
    assert saved["iteration"] == 1
    for name in ("model_0000003.pth", "model_final.pth"):
        (run / name).unlink()
    (run / "last_checkpoint").write_text("model_0000001.pth")

    resumed = Trainer(cfg)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 2
    assert _rai_counter(resumed.model.state_dict()) == _rai_counter(saved["model"]) > 0
    resumed.train()
    assert resumed.iter == cfg.SOLVER.MAX_ITER  # detectron2 leaves iter one past the last step
    assert _rai_counter(resumed.model.state_dict()) == uninterrupted
    assert (run / "model_final.pth").exists()


@pytest.fixture(scope="module")
def tiny_weights(data_root, tmp_path_factory):
    """A run folder with model_final.pth of a randomly initialised tiny SCORE."""
    run = tmp_path_factory.mktemp("run")
    cfg = _tiny_cfg(run)
    model = Trainer.build_model(cfg)
    DetectionCheckpointer(model, save_dir=str(run)).save("model_final")
    return run


def _env(data_root):
    python_path = os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p)
    return dict(os.environ, DETECTRON2_DATASETS=data_root, PYTHONPATH=python_path, PYTHON=sys.executable)


def test_authors_eval_command_line(data_root, tiny_weights, tmp_path):
    out = tmp_path / "eval_final" / "nwpu"
    # The tiny config with other exponents than the command line's, so that the dumped config
    # shows the command line's only if it overrode them.
    yaml_file = tmp_path / "tiny_other_exponents.yaml"
    yaml_file.write_text(
        f"_BASE_: {os.path.join(REPO, TINY_CONFIG)}\n"
        "MODEL:\n  SCORE:\n    GEOMETRIC_ENSEMBLE_ALPHA: 0.9\n    GEOMETRIC_ENSEMBLE_BETA: 0.9\n"
    )
    command = [
        sys.executable, "train_net.py", "--config", str(yaml_file), "--num-gpus", "1", "--dist-url", "auto",
        "--eval-only", "OUTPUT_DIR", str(out), "DATASETS.TEST", "('nwpu_val_instance',)",
        "MODEL.WEIGHTS", str(tiny_weights / "model_final.pth"),
        "MODEL.SCORE.GEOMETRIC_ENSEMBLE_ALPHA", "0.4", "MODEL.SCORE.GEOMETRIC_ENSEMBLE_BETA", "0.4",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, env=_env(data_root), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "inference" / "nwpu_val_instance" / "results.json").read_text())
    assert report["max_dets_per_image"] == 100  # the tiny config's TEST.DETECTIONS_PER_IMAGE
    assert report["segm"]["unseen"]["classes"] == ["airplane", "vehicle"]  # trained on iSAID
    config = (out / "config.yaml").read_text()
    assert "GEOMETRIC_ENSEMBLE_ALPHA: 0.4" in config and "GEOMETRIC_ENSEMBLE_BETA: 0.4" in config


def test_eval_only_with_a_truncated_checkpoint_names_it_and_fails(data_root, tiny_weights, tmp_path):
    truncated = tmp_path / "model_final.pth"
    data = (tiny_weights / "model_final.pth").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    command = [
        sys.executable, "train_net.py", "--config", TINY_CONFIG, "--eval-only",
        "OUTPUT_DIR", str(tmp_path / "eval"), "DATASETS.TEST", "('nwpu_val_instance',)",
        "MODEL.WEIGHTS", str(truncated),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, env=_env(data_root), capture_output=True, text=True)
    assert done.returncode != 0
    last_line = done.stderr.strip().splitlines()[-1]
    assert "UnreadableCheckpointError" in last_line and f"cannot read checkpoint {truncated}" in last_line


def test_eval_script_runs_targets_and_collects_the_table(data_root, tiny_weights):
    env = dict(_env(data_root), CONFIG=TINY_CONFIG, TARGETS="nwpu")
    done = subprocess.run(
        ["bash", "eval_isaid.sh", str(tiny_weights), "INPUT.MIN_SIZE_TEST", "64"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "alpha 0.4, beta 0.4" in done.stdout  # iSAID -> NWPU, from the dataset metadata
    table = (tiny_weights / "eval_final" / "results.md").read_text()
    header = "| run | nwpu | average | nwpu seen | nwpu unseen | mean seen | mean unseen |"
    assert table.splitlines()[0] == header
    config = (tiny_weights / "eval_final" / "nwpu" / "config.yaml").read_text()
    assert "MIN_SIZE_TEST: 64" in config  # extra arguments are passed through

    # A failing evaluation (no weights) fails the script.
    env["TARGETS"] = "nwpu"
    failed = subprocess.run(
        ["bash", "eval_isaid.sh", str(tiny_weights / "missing")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert failed.returncode != 0
