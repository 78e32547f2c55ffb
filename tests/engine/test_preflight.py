"""Bad values, data and folders are refused before the model is built; --resume refuses what does not fit."""

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

import score  # noqa: F401  (detectron2 compatibility shims before detectron2.engine)

# isort: split
from score.checkpoint import PartialCheckpointError
from score.config import get_score_cfg
from score.data.validation import InvalidDatasetError
from score.engine import Trainer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY_CONFIG = os.path.join(REPO, "configs", "tiny", "score_tiny_isaid.yaml")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """Synthetic iSAID train and val splits of small images."""
    from synthetic_world.scenes import write_synthetic_datasets

    root = tmp_path_factory.mktemp("datasets")
    write_synthetic_datasets(
        str(root), num_train=4, num_val=2, min_size=64, max_size=96,
        splits=["isaid_train_instance", "isaid_val_instance"],
    )  # fmt: skip
    return root


@pytest.fixture
def dataset_env(data_root, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(data_root))
    return data_root


def _cfg(output_dir, *opts):
    cfg = get_score_cfg()
    cfg.merge_from_file(TINY_CONFIG)
    cfg.merge_from_list(
        [
            "OUTPUT_DIR", str(output_dir), "DATASETS.TEST", "()", "INPUT.IMAGE_SIZE", "64",
            "SOLVER.MAX_ITER", "2", "SOLVER.STEPS", "(1,)", "SOLVER.CHECKPOINT_PERIOD", "1",
            "DATASETS.VALIDATION_CACHE_DIR", "", *opts,
        ]
    )  # fmt: skip
    cfg.freeze()
    return cfg


@pytest.fixture
def no_model(monkeypatch):
    """Fails the test if the trainer gets as far as building the model."""

    def refuse(cls, cfg):
        raise AssertionError("the model was built before the problem was found")

    monkeypatch.setattr(Trainer, "build_model", classmethod(refuse))


@pytest.mark.parametrize(
    "opts, named",
    [
        (["SOLVER.MAX_ITER", "0"], "SOLVER.MAX_ITER = 0: must be a positive integer"),
        (["SOLVER.IMS_PER_BATCH", "0"], "SOLVER.IMS_PER_BATCH = 0: must be a positive integer"),
        (["SOLVER.BASE_LR", "-0.01"], "SOLVER.BASE_LR = -0.01: must be a finite number > 0"),
        (["SOLVER.STEPS", "(2,)"], "SOLVER.STEPS = (2,)"),
        (["SOLVER.WARMUP_FACTOR", "2.0"], "SOLVER.WARMUP_FACTOR = 2.0"),
    ],
)
def test_bad_solver_values_are_named_before_the_model(dataset_env, tmp_path, no_model, opts, named):
    with pytest.raises(ValueError) as info:
        Trainer(_cfg(tmp_path, *opts))
    assert named in str(info.value)


@pytest.mark.parametrize("root", ["unset", "nowhere"])
def test_dataset_root_is_checked_before_the_model(tmp_path, monkeypatch, no_model, root):
    monkeypatch.chdir(tmp_path)  # the default root, ./datasets, does not exist here
    if root == "unset":
        monkeypatch.delenv("DETECTRON2_DATASETS", raising=False)
    else:
        monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError) as info:
        Trainer(_cfg(tmp_path / "out"))
    expected = "DETECTRON2_DATASETS unset" if root == "unset" else f"DETECTRON2_DATASETS='{tmp_path}/nowhere'"
    assert expected in str(info.value)
    assert "does not exist" in str(info.value)


def _copy_root(data_root, tmp_path):
    root = tmp_path / "datasets"
    shutil.copytree(data_root, root)
    return root


def test_missing_val_image_of_a_training_run_fails_before_the_model(
    data_root, tmp_path, monkeypatch, no_model
):
    root = _copy_root(data_root, tmp_path)
    coco = json.loads((root / "iSAID" / "val" / "instances_val.json").read_text())
    missing = coco["images"][0]["file_name"]
    (root / "iSAID" / "val" / "images" / missing).unlink()
    monkeypatch.setenv("DETECTRON2_DATASETS", str(root))
    with pytest.raises(InvalidDatasetError) as info:
        Trainer(_cfg(tmp_path / "out", "DATASETS.TEST", "('isaid_val_instance',)"))
    assert "isaid_val_instance" in str(info.value)
    assert f"{missing}: image: image file not found" in str(info.value)


@pytest.mark.parametrize("case", ["missing", "empty"])
def test_training_json_without_annotations_is_named_before_the_model(
    data_root, tmp_path, monkeypatch, no_model, case
):
    root = _copy_root(data_root, tmp_path)
    json_file = root / "iSAID" / "train" / "instances_train.json"
    coco = json.loads(json_file.read_text())
    if case == "missing":
        del coco["annotations"]
    else:
        coco["annotations"] = []
    json_file.write_text(json.dumps(coco))
    monkeypatch.setenv("DETECTRON2_DATASETS", str(root))
    with pytest.raises(InvalidDatasetError) as info:
        Trainer(_cfg(tmp_path / "out"))
    assert str(json_file) in str(info.value)
    assert "'annotations' list: nothing to train or evaluate on" in str(info.value)


def _train_net(output_dir, data_root, *opts, timeout=300):
    command = [
        sys.executable, os.path.join(REPO, "train_net.py"), "--config-file", TINY_CONFIG,
        "OUTPUT_DIR", str(output_dir), "DATASETS.TEST", "()", "INPUT.IMAGE_SIZE", "64",
        "SOLVER.MAX_ITER", "1", "SOLVER.STEPS", "()", "DATASETS.VALIDATION_CACHE_DIR", "", *opts,
    ]  # fmt: skip
    env = dict(os.environ, DETECTRON2_DATASETS=str(data_root), OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    return subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO, timeout=timeout)


@pytest.mark.slow
def test_a_second_run_in_a_locked_output_dir_is_refused(data_root, tmp_path):
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from score.engine.preflight import lock_output_dir; "
         "lock_output_dir(sys.argv[1]); print('locked', flush=True); time.sleep(600)", str(out)],
        env=dict(os.environ, PYTHONPATH=REPO), stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        done = _train_net(out, data_root)
        assert done.returncode != 0
        assert "OutputDirInUseError" in done.stderr
        assert f"OUTPUT_DIR {out} is in use by another run (PID {holder.pid})" in done.stderr
        assert not (out / "config.yaml").exists()  # refused before writing anything
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    from score.engine.preflight import lock_output_dir

    lock_output_dir(str(out))  # the dead run's lock does not block
    other = _lock_in_a_process(out)
    assert other.returncode != 0 and f"(PID {os.getpid()})" in other.stderr


def _lock_in_a_process(out):
    return subprocess.run(
        [sys.executable, "-c", "import sys; from score.engine.preflight import lock_output_dir; "
         "lock_output_dir(sys.argv[1])", str(out)],
        env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True,
    )  # fmt: skip


def test_lock_of_a_dead_process_does_not_block(tmp_path):
    from score.engine.preflight import lock_output_dir

    out = tmp_path / "out"
    holder = subprocess.run(
        [sys.executable, "-c", "import os, sys; from score.engine.preflight import lock_output_dir; "
         "lock_output_dir(sys.argv[1]); os.kill(os.getpid(), 9)", str(out)],
        env=dict(os.environ, PYTHONPATH=REPO),
    )  # fmt: skip
    assert holder.returncode == -9
    assert lock_output_dir(str(out)) == str(out / ".score_run.lock")
    other = _lock_in_a_process(out)  # held by this process now: another process is refused
    assert other.returncode != 0
    assert (
        f"OutputDirInUseError: OUTPUT_DIR {out} is in use by another run (PID {os.getpid()})" in other.stderr
    )


@pytest.fixture(scope="module")
def finished_run(data_root, tmp_path_factory):
    """A tiny run of 2 iterations (checkpoints after each), trained in this process."""
    previous = os.environ.get("DETECTRON2_DATASETS")
    os.environ["DETECTRON2_DATASETS"] = str(data_root)
    out = tmp_path_factory.mktemp("run")
    trainer = Trainer(_cfg(out))
    trainer.resume_or_load(resume=False)
    trainer.train()
    if previous is None:
        del os.environ["DETECTRON2_DATASETS"]
    else:
        os.environ["DETECTRON2_DATASETS"] = previous
    return out


@pytest.mark.slow
def test_resume_with_another_model_names_the_keys_and_shapes(finished_run, dataset_env, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    cfg = _cfg(
        out, "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", "10", "SOLVER.MAX_ITER", "3", "SOLVER.STEPS", "()"
    )
    trainer = Trainer(cfg)
    with pytest.raises(PartialCheckpointError) as info:
        trainer.resume_or_load(resume=True)
    message = str(info.value)
    assert "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES: 20 in the checkpoint, 10 now" in message
    assert "query_feat.weight: (20, 32) in the checkpoint, (10, 32) in the model" in message
    assert "MODEL.ALLOW_PARTIAL_WEIGHTS" in message

    cfg = _cfg(out, "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", "10", "SOLVER.MAX_ITER", "3",
               "SOLVER.STEPS", "()", "MODEL.ALLOW_PARTIAL_WEIGHTS", "True")  # fmt: skip
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=True)
    assert trainer.start_iter == 2
    trainer.train()  # the optimizer restarted: no size mismatch in its step
    assert trainer.iter == 3


@pytest.mark.slow
def test_resume_past_or_at_max_iter_says_so(finished_run, dataset_env, tmp_path, caplog):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    trainer = Trainer(_cfg(out, "SOLVER.MAX_ITER", "1", "SOLVER.STEPS", "()"))
    with pytest.raises(ValueError) as info:
        trainer.resume_or_load(resume=True)
    assert "has trained 2 iterations, past SOLVER.MAX_ITER = 1" in str(info.value)

    trainer = Trainer(_cfg(out))
    trainer.resume_or_load(resume=True)
    with caplog.at_level("WARNING", logger="score.engine.trainer"):
        assert trainer.train() is None
    assert "Nothing to train" in caplog.text and "SOLVER.MAX_ITER = 2" in caplog.text
