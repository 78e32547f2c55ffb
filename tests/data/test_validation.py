"""Dataset validation: every bad record reported at once, or dropped with DATASETS.DROP_INVALID."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import score  # noqa: F401

# isort: split
from score.data.validation import InvalidDatasetError, annotation_problem, validate_dataset

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _record(path, ann_id=1, segmentation=None, size=(40, 50)):
    h, w = size
    seg = [[2, 2, 20, 2, 20, 20, 2, 20]] if segmentation is None else segmentation
    return {
        "file_name": str(path),
        "height": h,
        "width": w,
        "annotations": [{"id": ann_id, "segmentation": seg, "category_id": 0, "iscrowd": 0}],
    }


def _write(path, fmt="PNG", size=(40, 50)):
    h, w = size
    Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(path, format=fmt)


def test_annotation_problem_cases():
    assert annotation_problem({"segmentation": [[0, 0, 5, 0, 5, 5]]}, 10, 10) is None
    assert annotation_problem({"segmentation": []}, 10, 10) == "empty segmentation"
    assert "points" in annotation_problem({"segmentation": [[0, 0, 5, 5]]}, 10, 10)
    assert annotation_problem({"segmentation": [[0, 0, 5, 5, 10, 10]]}, 10, 10) == "polygon of zero area"
    assert annotation_problem({"segmentation": {"size": [10, 10], "counts": "x"}}, 10, 10) is None
    assert "RLE size" in annotation_problem({"segmentation": {"size": [9, 10], "counts": "x"}}, 10, 10)


def test_all_bad_records_reported_then_dropped(tmp_path):
    good, trunc, wrong = tmp_path / "good.png", tmp_path / "trunc.jpg", tmp_path / "wrong.png"
    _write(good)
    _write(trunc, "JPEG")
    trunc.write_bytes(trunc.read_bytes()[:-40])
    _write(wrong, size=(41, 50))
    dicts = [
        _record(good),
        _record(tmp_path / "missing.png", ann_id=2),
        _record(trunc, ann_id=3),
        _record(wrong, ann_id=4),
        _record(good, ann_id=5, segmentation=[]),
    ]
    with pytest.raises(InvalidDatasetError) as info:
        validate_dataset(dicts, "toy")
    message = str(info.value)
    assert "missing.png: image: image file not found" in message
    assert "trunc.jpg: image: truncated JPEG" in message
    assert "wrong.png: image: image is 50x41" in message
    assert "annotation id 5: empty segmentation" in message
    assert "annotation id 1" not in message

    kept = validate_dataset(dicts, "toy", drop_invalid=True)
    assert [r["file_name"] for r in kept] == [str(good), str(good)]
    assert [len(r["annotations"]) for r in kept] == [1, 0]


def test_cache_keyed_by_annotation_file(tmp_path):
    json_file = tmp_path / "a.json"
    json_file.write_text("{}")
    img = tmp_path / "x.png"
    _write(img)
    dicts = [_record(img)]
    cache = tmp_path / "cache"
    assert validate_dataset(dicts, "toy", json_file=str(json_file), cache_dir=str(cache)) is dicts
    assert len(os.listdir(cache)) == 1
    img.unlink()  # unseen: the cache says the unchanged annotation file is clean
    assert validate_dataset(dicts, "toy", json_file=str(json_file), cache_dir=str(cache)) is dicts
    json_file.write_text("{ }")  # a new size: validated again
    with pytest.raises(InvalidDatasetError):
        validate_dataset(dicts, "toy", json_file=str(json_file), cache_dir=str(cache))


def _broken_synthetic(root):
    from synthetic_world import write_synthetic_datasets

    write_synthetic_datasets(
        str(root), num_train=6, num_val=2, min_size=64, max_size=96, splits=["isaid_train_instance"]
    )
    json_file = root / "iSAID" / "train" / "instances_train.json"
    coco = json.loads(json_file.read_text())
    image_dir = root / "iSAID" / "train" / "images"
    images = coco["images"]
    os.remove(image_dir / images[0]["file_name"])
    jpeg = Image.open(image_dir / images[1]["file_name"]).convert("RGB")
    images[1]["file_name"] = "truncated.jpg"
    jpeg.save(image_dir / "truncated.jpg", format="JPEG")
    data = (image_dir / "truncated.jpg").read_bytes()
    (image_dir / "truncated.jpg").write_bytes(data[: len(data) // 2])
    empty = next(a for a in coco["annotations"] if a["image_id"] == images[2]["id"])
    empty["segmentation"] = []
    json_file.write_text(json.dumps(coco))
    return images[0]["file_name"], empty["id"]


@pytest.mark.slow
def test_train_net_stops_before_iteration_0_then_trains_with_drop(tmp_path):
    root = tmp_path / "datasets"
    missing, empty_id = _broken_synthetic(root)
    env = dict(os.environ, DETECTRON2_DATASETS=str(root), OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    base = [
        sys.executable, os.path.join(REPO, "train_net.py"),
        "--config-file", os.path.join(REPO, "configs", "tiny", "score_tiny_isaid.yaml"),
        "OUTPUT_DIR", str(tmp_path / "out"), "DATASETS.TEST", "()", "INPUT.IMAGE_SIZE", "64",
        "SOLVER.MAX_ITER", "2", "SOLVER.STEPS", "(1,)", "DATASETS.VALIDATION_CACHE_DIR", "",
        "DATALOADER.NUM_WORKERS", "0",
    ]  # fmt: skip
    run = subprocess.run(base, env=env, capture_output=True, text=True, cwd=REPO)
    assert run.returncode != 0
    assert "InvalidDatasetError" in run.stderr
    assert f"{missing}: image: image file not found" in run.stderr
    assert "truncated.jpg: image: truncated JPEG" in run.stderr
    assert f"annotation id {empty_id}: empty segmentation" in run.stderr
    assert "iter: 0" not in run.stdout + run.stderr
    assert "Starting training" not in run.stdout + run.stderr

    run = subprocess.run(base + ["DATASETS.DROP_INVALID", "True"], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "dropped 2 image(s) and 1 annotation(s)" in run.stdout + run.stderr
