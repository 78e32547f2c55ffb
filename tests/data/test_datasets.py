"""Registration, loading checks and metadata of the seven SCORE splits (score/data/datasets.py)."""

import score  # noqa: F401, I001  (first: its shims let detectron2.data import on numpy>=1.24, Pillow>=10)

# isort: split
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import polygons_to_bitmask

from score.data.datasets import (
    NWPU_CLASSES,
    SPLITS,
    ensemble_exponents,
    register_all,
    register_instance_dataset,
)
from score.vocabulary import canonical_class_name
from synthetic_world.scenes import write_split, write_synthetic_datasets

REPO = Path(__file__).resolve().parents[2]
SPLIT = {s.name: s for s in SPLITS}


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic_datasets(str(root), num_train=3, num_val=2, min_size=96, max_size=160, seed=1)
    return root


@pytest.fixture(autouse=True)
def default_registration():
    """Tests re-register the splits under temporary roots; leave the default behind."""
    yield
    register_all()


def test_import_score_registers_the_seven_splits():
    code = (
        "import score\n"
        "from detectron2.data import DatasetCatalog, MetadataCatalog\n"
        f"names = {[s.name for s in SPLITS]!r}\n"
        "missing = [n for n in names if n not in DatasetCatalog.list()]\n"
        "assert not missing, missing\n"
        "assert MetadataCatalog.get('nwpu_val_instance').dataset_family == 'nwpu'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_table_matches_datasets_md():
    expected = {
        "isaid_train_instance": ("iSAID/train/images", "iSAID/train/instances_train.json", 15, "isaid"),
        "isaid_val_instance": ("iSAID/val/images", "iSAID/val/instances_val.json", 15, "isaid"),
        "sior_train_instance": ("SIOR/train/images", "SIOR/train/instances_train.json", 20, "sior"),
        "sior_val_instance": ("SIOR/val/images", "SIOR/val/instances_val.json", 20, "sior"),
        "nwpu_val_instance": ("NWPU/image_patches", "NWPU/instances_val.json", 10, "nwpu"),
        "sota_val_instance": ("SOTA/val/images", "SOTA/val/instances_val.json", 18, "sota"),
        "fast_val_instance": ("FAST/val/images", "FAST/val/instances_val.json", 37, "fast"),
    }
    assert {s.name: (s.image_dir, s.json_file, len(s.class_names), s.family) for s in SPLITS} == expected
    assert SPLIT["isaid_train_instance"].class_names[5] == "Ground_Track_Field"
    assert SPLIT["sior_train_instance"].class_names[6] == "expressway-service-area"
    assert SPLIT["fast_val_instance"].class_names[-1] == "Warship"
    for split in SPLITS:
        normalised = [canonical_class_name(c) for c in split.class_names]
        assert len(set(normalised)) == len(normalised), split.name


def test_metadata_under_explicit_root(tmp_path):
    register_all(str(tmp_path))
    meta = MetadataCatalog.get("nwpu_val_instance")
    assert meta.thing_classes == list(NWPU_CLASSES)
    assert meta.evaluator_type == "coco"
    assert meta.dataset_family == "nwpu"
    assert meta.image_root == os.path.join(str(tmp_path), "NWPU/image_patches")
    assert meta.json_file == os.path.join(str(tmp_path), "NWPU/instances_val.json")
    assert meta.ensemble_exponents == {"isaid": (0.4, 0.4), "sior": (0.2, 0.6)}
    register_all(str(tmp_path / "other"))  # re-registering must not trip detectron2's duplicate checks
    assert MetadataCatalog.get("nwpu_val_instance").image_root.startswith(str(tmp_path / "other"))


def test_canonical_class_name():
    assert canonical_class_name("Storage_tank") == "storage tank"
    assert canonical_class_name("storage-tank") == "storage tank"
    assert canonical_class_name("Expressway-Service-Area") == "expressway service area"


def test_every_split_loads_with_its_classes(synthetic_root):
    register_all(str(synthetic_root))
    for split in SPLITS:
        dicts = DatasetCatalog.get(split.name)
        meta = MetadataCatalog.get(split.name)
        assert len(dicts) == (3 if split.subset == "train" else 2)
        assert meta.thing_classes == list(split.class_names)
        assert meta.thing_dataset_id_to_contiguous_id == {i + 1: i for i in range(len(split.class_names))}
        assert any(r["annotations"] for r in dicts)
        for record in dicts:
            assert os.path.isfile(record["file_name"])
            for ann in record["annotations"]:
                assert 0 <= ann["category_id"] < len(split.class_names)
                mask = polygons_to_bitmask(ann["segmentation"], record["height"], record["width"])
                assert mask.shape == (record["height"], record["width"])
                assert mask.sum() > 0


def test_root_is_read_from_the_environment_when_loading(synthetic_root, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_missing := synthetic_root / "nowhere"))
    register_all()
    assert MetadataCatalog.get("sota_val_instance").json_file.startswith(str(tmp_missing))
    monkeypatch.setenv("DETECTRON2_DATASETS", str(synthetic_root))
    assert len(DatasetCatalog.get("sota_val_instance")) == 2
    # The metadata follows the root actually loaded, so that evaluators read the right file.
    assert MetadataCatalog.get("sota_val_instance").json_file == os.path.join(
        str(synthetic_root), "SOTA/val/instances_val.json"
    )


def _write_nwpu(tmp_path: Path) -> Path:
    write_split(SPLIT["nwpu_val_instance"], str(tmp_path), 1, min_size=64, max_size=96)
    return tmp_path / "NWPU/instances_val.json"


def test_category_mismatch_names_both_lists(tmp_path):
    json_path = _write_nwpu(tmp_path)
    coco = json.loads(json_path.read_text())
    coco["categories"][1]["name"], coco["categories"][2]["name"] = "storage_tank", "ship"
    json_path.write_text(json.dumps(coco))
    register_all(str(tmp_path))
    with pytest.raises(ValueError) as err:
        DatasetCatalog.get("nwpu_val_instance")
    msg = str(err.value)
    assert str(json_path) in msg
    assert "['airplane', 'storage_tank', 'ship'," in msg  # the file's list
    assert "['airplane', 'ship', 'storage_tank'," in msg  # the registered list
    assert "position 1" in msg and "'storage_tank' vs registered 'ship'" in msg


def test_category_count_mismatch(tmp_path):
    json_path = _write_nwpu(tmp_path)
    coco = json.loads(json_path.read_text())
    coco["categories"] = coco["categories"][:9]
    coco["annotations"] = [a for a in coco["annotations"] if a["category_id"] <= 9]
    json_path.write_text(json.dumps(coco))
    register_all(str(tmp_path))
    with pytest.raises(ValueError, match=r"file \(9, id order\).*\n.*registered \(10\).*\n.*position 9"):
        DatasetCatalog.get("nwpu_val_instance")


def test_spelling_variants_of_the_same_names_load(tmp_path):
    json_path = _write_nwpu(tmp_path)
    coco = json.loads(json_path.read_text())
    for cat in coco["categories"]:
        cat["name"] = cat["name"].replace("_", "-").title()
    json_path.write_text(json.dumps(coco))
    register_all(str(tmp_path))
    assert len(DatasetCatalog.get("nwpu_val_instance")) == 1
    assert MetadataCatalog.get("nwpu_val_instance").thing_classes == list(NWPU_CLASSES)


def test_missing_annotation_file_and_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    register_all()
    with pytest.raises(FileNotFoundError) as err:
        DatasetCatalog.get("fast_val_instance")
    msg = str(err.value)
    assert os.path.join(str(tmp_path), "FAST/val/instances_val.json") in msg
    assert f"DETECTRON2_DATASETS='{tmp_path}'" in msg
    assert "datasets/README.md" in msg and "HuangShiqi008/SCORE" in msg
    assert "tools/make_synthetic_datasets.py --root" in msg

    (tmp_path / "FAST/val").mkdir(parents=True)
    (tmp_path / "FAST/val/instances_val.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="image folder not found: .*FAST/val/images"):
        DatasetCatalog.get("fast_val_instance")


def test_corrupt_json_names_the_file(tmp_path):
    json_path = _write_nwpu(tmp_path)
    json_path.write_text('{"images": [')
    register_all(str(tmp_path))
    with pytest.raises(ValueError, match=f"{json_path} is not valid JSON"):
        DatasetCatalog.get("nwpu_val_instance")


def test_json_without_coco_keys_names_the_file(tmp_path):
    json_path = _write_nwpu(tmp_path)
    json_path.write_text('{"images": []}')
    register_all(str(tmp_path))
    with pytest.raises(ValueError, match=f"{json_path} is not COCO instance JSON"):
        DatasetCatalog.get("nwpu_val_instance")


def test_register_instance_dataset_for_user_data(tmp_path):
    json_path = _write_nwpu(tmp_path)
    name = "user_nwpu_like_test"
    register_instance_dataset(
        name, str(tmp_path / "NWPU/image_patches"), str(json_path), NWPU_CLASSES, dataset_family="nwpu"
    )
    try:
        meta = MetadataCatalog.get(name)
        assert meta.thing_classes == list(NWPU_CLASSES)
        assert meta.evaluator_type == "coco" and meta.dataset_family == "nwpu"
        assert len(DatasetCatalog.get(name)) == 1
        assert ensemble_exponents("isaid_train_instance", "nwpu_val_instance") == (0.4, 0.4)
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


@pytest.mark.parametrize(
    "train, test, expected",
    [
        ("isaid_train_instance", "nwpu_val_instance", (0.4, 0.4)),
        ("isaid_train_instance", "sota_val_instance", (0.0, 0.4)),
        ("isaid_train_instance", "fast_val_instance", (0.2, 0.2)),
        ("isaid_train_instance", "sior_val_instance", (0.4, 0.4)),
        ("sior_train_instance", "nwpu_val_instance", (0.2, 0.6)),
        ("sior_train_instance", "sota_val_instance", (0.0, 0.2)),
        ("sior_train_instance", "fast_val_instance", (0.2, 0.4)),
        ("sior_train_instance", "isaid_val_instance", (0.2, 0.2)),
    ],
)
def test_ensemble_exponents_table(train, test, expected):
    assert ensemble_exponents(train, test) == expected


def test_ensemble_exponents_unknown_pair():
    with pytest.raises(
        ValueError, match="No ensemble exponents for training on 'isaid_train_instance'.*isaid_val"
    ):
        ensemble_exponents("isaid_train_instance", "isaid_val_instance")
    with pytest.raises(ValueError, match="not_a_dataset"):
        ensemble_exponents("not_a_dataset", "nwpu_val_instance")
