"""Dataset validation: every bad record reported at once, or dropped with DATASETS.DROP_INVALID."""

import json
import os
import re
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


def test_cache_notices_a_removed_changed_or_added_image(tmp_path):
    json_file = tmp_path / "a.json"
    image = {"id": 1, "file_name": "x.png", "height": 40, "width": 50}
    anno = {"id": 1, "image_id": 1, "category_id": 1, "segmentation": [[2, 2, 20, 2, 20, 20, 2, 20]]}
    coco = {"images": [image], "annotations": [anno], "categories": [{"id": 1, "name": "ship"}]}
    json_file.write_text(json.dumps(coco))
    img, other = tmp_path / "x.png", tmp_path / "y.png"
    _write(img)
    dicts = [_record(img)]
    cache = tmp_path / "cache"
    assert validate_dataset(dicts, "toy", json_file=str(json_file), cache_dir=str(cache)) is dicts
    assert len(os.listdir(cache)) == 1
    assert validate_dataset(dicts, "toy", json_file=str(json_file), cache_dir=str(cache)) is dicts
    assert len(os.listdir(cache)) == 1  # read from the cache
    img.unlink()  # the annotation file is unchanged, the image is gone
    with pytest.raises(InvalidDatasetError, match="x.png: image: image file not found"):
        validate_dataset(dicts, "toy", json_file=str(json_file), cache_dir=str(cache))
    _write(img, size=(41, 50))  # back, with another size
    with pytest.raises(InvalidDatasetError, match="image is 50x41"):
        validate_dataset(dicts, "toy", json_file=str(json_file), cache_dir=str(cache))
    _write(img)
    _write(other, size=(41, 50))  # a record of a new, wrong image: another key
    two = dicts + [_record(other, ann_id=2)]
    with pytest.raises(InvalidDatasetError, match="y.png: image: image is 50x41"):
        validate_dataset(two, "toy", json_file=str(json_file), cache_dir=str(cache))
    json_file.write_text(json.dumps(coco, indent=1))  # a new size of the annotation file: validated again
    assert validate_dataset(dicts, "toy", json_file=str(json_file), cache_dir=str(cache)) is dicts


@pytest.mark.parametrize(
    "polygon, reason",
    [
        ([2, 2, 20, 2, 20, float("nan"), 2, 20], "polygon coordinate nan is not finite"),
        ([2, 2, 20, 2, 20, float("inf"), 2, 20], "polygon coordinate inf is not finite"),
        (["2", "2", "20", "2", "20", "20"], "polygon coordinate '2' is not a number"),
        ([2, 2, 20, 2, 20, 20, 2], "polygon of 7 coordinates (an odd number"),
        ([2, 2, 20, 2, 1e9, 20], "polygon point (1000000000.0, 20) lies far outside the 50x40"),
    ],
)
def test_malformed_polygons_are_named(polygon, reason):
    assert reason in annotation_problem({"segmentation": [polygon]}, 40, 50)


def _coco(tmp_path, annotations=None, images=None):
    """A COCO instance file of two 50x40 PNG images (ids 1, 2), one square annotation each by default."""
    folder = tmp_path / "images"
    folder.mkdir(exist_ok=True)
    for name in ("a.png", "b.png"):
        _write(folder / name)
    square = [2, 2, 20, 2, 20, 20, 2, 20]
    coco = {
        "images": images
        or [
            {"id": 1, "file_name": "a.png", "height": 40, "width": 50},
            {"id": 2, "file_name": "b.png", "height": 40, "width": 50},
        ],
        "annotations": annotations
        if annotations is not None
        else [
            {"id": 11, "image_id": 1, "category_id": 1, "segmentation": [square], "bbox": [2, 2, 18, 18],
             "area": 324, "iscrowd": 0},
            {"id": 12, "image_id": 2, "category_id": 1, "segmentation": [square], "bbox": [2, 2, 18, 18],
             "area": 324, "iscrowd": 0},
        ],
        "categories": [{"id": 1, "name": "ship"}],
    }  # fmt: skip
    return folder, coco


def _load_and_validate(tmp_path, folder, coco, **kwargs):
    from score.data.datasets import load_instance_json

    json_file = tmp_path / "instances.json"
    json_file.write_text(json.dumps(coco))  # NaN is written as the literal NaN, as Python reads it
    dicts, _ = load_instance_json("toy", str(folder), str(json_file), ["ship"])
    return validate_dataset(dicts, "toy", json_file=str(json_file), **kwargs)


@pytest.mark.parametrize(
    "polygon, reason",
    [
        ([2, 2, 20, 2, 20, float("nan"), 2, 20], "polygon coordinate nan is not finite"),
        (["2", "2", "20", "2", "20", "20"], "polygon coordinate '2' is not a number"),
        ([2, 2, 20, 2, 20, 20, 2], "polygon of 7 coordinates"),  # load_coco_json drops it silently
    ],
)
def test_bad_polygons_in_the_file_are_named_by_annotation(tmp_path, polygon, reason):
    folder, coco = _coco(tmp_path)
    coco["annotations"][1]["segmentation"] = [polygon]
    with pytest.raises(InvalidDatasetError) as info:
        _load_and_validate(tmp_path, folder, coco)
    message = str(info.value)
    assert f"b.png: annotation id 12: {reason}" in message
    assert "annotation id 11" not in message
    assert "instances.json" in message
    kept = _load_and_validate(tmp_path, folder, coco, drop_invalid=True)
    assert [[a["id"] for a in r["annotations"]] for r in kept] == [[11], []]
    # A test split's evaluator reads the file as written: its bad annotations are not dropped.
    with pytest.raises(InvalidDatasetError, match=f"b.png: annotation id 12: {re.escape(reason)}"):
        _load_and_validate(tmp_path, folder, coco, drop_invalid=True, drop_annotations=False)


@pytest.mark.parametrize(
    "case, reason",
    [
        ("no_annotations", "no 'annotations' list"),
        ("empty_annotations", "an empty 'annotations' list"),
        ("same_id", "image id 1 is given to 2 images: a.png, b.png"),
        ("same_file", "file name a.png is listed 2 times (image ids [1, 2])"),
    ],
)
def test_file_problems_name_the_file_and_the_reason(tmp_path, case, reason):
    folder, coco = _coco(tmp_path)
    if case == "no_annotations":
        del coco["annotations"]
    elif case == "empty_annotations":
        coco["annotations"] = []
    elif case == "same_id":
        coco["images"][1]["id"] = 1
        coco["annotations"][1]["image_id"] = 1
    else:
        coco["images"][1]["file_name"] = "a.png"
    for drop in (False, True):  # not droppable: the file itself is wrong
        with pytest.raises(InvalidDatasetError) as info:
            _load_and_validate(tmp_path, folder, coco, drop_invalid=drop)
        assert reason in str(info.value)
        assert "instances.json" in str(info.value)


def _exif_jpeg(path, size_hw, orientation):
    h, w = size_hw
    image = Image.fromarray(np.full((h, w, 3), 90, np.uint8))
    exif = Image.Exif()
    exif[0x0112] = orientation
    image.save(path, format="JPEG", exif=exif.tobytes())


def test_exif_orientation_is_the_loaders(tmp_path):
    """The size checked is the size detectron2's read_image returns: turned by EXIF orientations 5-8."""
    from detectron2.data.detection_utils import read_image

    path = tmp_path / "turned.jpg"
    _exif_jpeg(path, (40, 50), orientation=6)  # stored 50 wide, 40 high; read 40 wide, 50 high
    assert read_image(str(path)).shape[:2] == (50, 40)
    stored = _record(path, size=(40, 50))
    with pytest.raises(InvalidDatasetError, match="EXIF orientation 6"):
        validate_dataset([stored], "toy")
    assert validate_dataset([stored], "toy", drop_invalid=True) == []
    as_read = _record(path, size=(50, 40))
    assert validate_dataset([as_read], "toy") == [as_read]
    _exif_jpeg(path, (40, 50), orientation=3)  # a half turn keeps the size
    assert validate_dataset([stored], "toy") == [stored]


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


# Runs a command with a cap on its address space (a safety net: without the check, the COCO mask
# encoding of a NaN polygon grew past 19 GB) and prints the peak resident memory of its process, KiB.
_MEASURE = """
import resource, subprocess, sys
cap = lambda: resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))
done = subprocess.run(sys.argv[1:], preexec_fn=cap)
print("peak_rss_kib", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, flush=True)
sys.exit(done.returncode)
"""


@pytest.mark.slow
def test_eval_only_on_a_nan_polygon_names_it_quickly_in_little_memory(tmp_path):
    import time

    from synthetic_world import write_synthetic_datasets

    root = tmp_path / "datasets"
    write_synthetic_datasets(
        str(root), num_train=2, num_val=2, min_size=64, max_size=96, splits=["isaid_val_instance"]
    )
    json_file = root / "iSAID" / "val" / "instances_val.json"
    coco = json.loads(json_file.read_text())
    bad = coco["annotations"][-1]
    bad["segmentation"][0][3] = float("nan")
    json_file.write_text(json.dumps(coco))  # written as the literal NaN
    env = dict(os.environ, DETECTRON2_DATASETS=str(root), OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    command = [
        sys.executable, "-c", _MEASURE, sys.executable, os.path.join(REPO, "train_net.py"),
        "--config-file", os.path.join(REPO, "configs", "tiny", "score_tiny_isaid.yaml"), "--eval-only",
        "OUTPUT_DIR", str(tmp_path / "out"), "DATASETS.TEST", "('isaid_val_instance',)",
        "DATASETS.VALIDATION_CACHE_DIR", "",
    ]  # fmt: skip
    start = time.perf_counter()
    run = subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO, timeout=300)
    seconds = time.perf_counter() - start
    peak_gib = int(run.stdout.split("peak_rss_kib")[-1]) / 2**20
    print(f"eval-only on a NaN polygon: exit {run.returncode}, {seconds:.1f} s, peak RSS {peak_gib:.2f} GiB")
    assert run.returncode != 0
    assert f"annotation id {bad['id']}: polygon coordinate nan is not finite" in run.stderr
    assert seconds < 60
    assert peak_gib < 2.0
