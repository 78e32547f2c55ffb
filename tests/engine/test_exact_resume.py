"""Exact resume: a run resumed from a checkpoint follows the uninterrupted run's losses (tiny SCORE, CPU)."""

import os
import shutil

import pytest
import torch

import score  # noqa: F401  (detectron2 compatibility shims before detectron2.engine)

# isort: split
from detectron2.utils.env import seed_all_rng

from score.config import get_score_cfg
from score.engine import Trainer
from tests.conftest import TINY_CONFIG

MAX_ITER = 6
CHECKPOINT_ITER = 2  # model_0000002.pth: iterations 0, 1, 2 done


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from synthetic_world.scenes import write_synthetic_datasets

    root = tmp_path_factory.mktemp("datasets")
    write_synthetic_datasets(
        str(root), num_train=5, num_val=1, min_size=48, max_size=80, splits=["isaid_train_instance"]
    )
    previous = os.environ.get("DETECTRON2_DATASETS")
    os.environ["DETECTRON2_DATASETS"] = str(root)
    yield root
    if previous is None:
        del os.environ["DETECTRON2_DATASETS"]
    else:
        os.environ["DETECTRON2_DATASETS"] = previous


def _cfg(output_dir):
    cfg = get_score_cfg()
    cfg.merge_from_file(str(TINY_CONFIG))
    cfg.merge_from_list(
        [
            "OUTPUT_DIR", str(output_dir), "DATASETS.TEST", "()", "DATASETS.VALIDATION_CACHE_DIR", "",
            "INPUT.IMAGE_SIZE", "48", "SOLVER.MAX_ITER", str(MAX_ITER), "SOLVER.STEPS", "(4,)",
            "SOLVER.CHECKPOINT_PERIOD", str(CHECKPOINT_ITER + 1),
            # Short enough for the Gumbel phase to end and the kernel to be fixed after the resume.
            "MODEL.SCORE.RAI.GUMBEL_WARMUP_ITERS", "4",
        ]
    )  # fmt: skip
    cfg.freeze()
    return cfg


def _train(cfg, seed, resume):
    seed_all_rng(seed)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=resume)
    trainer.train()
    return {i: v for v, i in trainer.storage.history("total_loss").values()}


def test_resumed_run_follows_the_uninterrupted_losses(data_root, tmp_path):
    full = _train(_cfg(tmp_path / "full"), seed=0, resume=False)
    assert sorted(full) == list(range(MAX_ITER))

    # The run "dies" after the checkpoint: only that checkpoint survives. The
    # resumed process starts with another global seed, as a new process would.
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    name = f"model_{CHECKPOINT_ITER:07d}.pth"
    shutil.copy(tmp_path / "full" / name, resumed_dir / name)
    (resumed_dir / "last_checkpoint").write_text(name)
    resumed = _train(_cfg(resumed_dir), seed=123, resume=True)

    assert sorted(resumed) == list(range(CHECKPOINT_ITER + 1, MAX_ITER))
    for i in resumed:
        assert resumed[i] == pytest.approx(full[i], abs=1e-6, rel=0), (i, resumed, full)
    final = torch.load(tmp_path / "full" / "model_final.pth", map_location="cpu", weights_only=True)
    final_resumed = torch.load(resumed_dir / "model_final.pth", map_location="cpu", weights_only=True)
    for key, value in final["model"].items():
        torch.testing.assert_close(final_resumed["model"][key], value, rtol=0, atol=1e-6, msg=key)
