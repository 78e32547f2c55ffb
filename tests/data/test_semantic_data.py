"""Semantic splits: registration, label encoding, the mask_former_semantic mapper, validation, loader."""

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T
from PIL import Image

from score.data.datasets import (
    FLOODNET_CLASSES,
    LANDDISCOVER_CLASSES,
    SEM_SEG_SPLITS,
    register_all_sem_seg,
)
from score.data.labels import LabelEncoding, read_label
from score.data.mappers import SCORESemanticLSJMapper, build_train_mapper
from score.data.validation import InvalidDatasetError, validate_dataset
from score.vocabulary import seen_flags
from tests.conftest import make_sem_seg_split, tiny_cfg


def test_splits_of_the_interface_are_registered_with_detectron2_metadata():
    names = {s.name for s in SEM_SEG_SPLITS}
    assert names == {
        "landdiscover50k_train_sem_seg", "landdiscover50k_val_sem_seg", "flair_val_sem_seg",
        "fast_val_sem_seg", "potsdam_val_sem_seg", "floodnet_val_sem_seg",
    }  # fmt: skip
    meta = MetadataCatalog.get("floodnet_val_sem_seg")
    assert meta.evaluator_type == "sem_seg" and meta.ignore_label == 255
    assert meta.stuff_classes == list(FLOODNET_CLASSES) and meta.ignore_values == [0, 255]
    assert LabelEncoding.from_metadata(meta).scored == [False] + [True] * 9
    assert len(LANDDISCOVER_CLASSES) == 40 and LANDDISCOVER_CLASSES[32] == "expresswalltoll station"


@pytest.mark.parametrize(
    "split, seen",
    [
        ("flair_val_sem_seg", 2),
        ("fast_val_sem_seg", 4),
        ("potsdam_val_sem_seg", 2),
        ("floodnet_val_sem_seg", 5),
    ],
)
def test_seen_counts_against_landdiscover(split, seen):
    assert sum(seen_flags(MetadataCatalog.get(split).stuff_classes, LANDDISCOVER_CLASSES)) == seen


def test_split_loads_records_by_stem_under_the_dataset_root(tmp_path, monkeypatch):
    folder = tmp_path / "FloodNet" / "val+test"
    (folder / "img").mkdir(parents=True)
    (folder / "lbl").mkdir(parents=True)
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(folder / "img" / "7001.jpg")
    Image.fromarray(np.zeros((6, 8), np.uint8)).save(folder / "lbl" / "7001.png")
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    (record,) = DatasetCatalog.get("floodnet_val_sem_seg")
    assert record == {
        "file_name": str(folder / "img" / "7001.jpg"),
        "sem_seg_file_name": str(folder / "lbl" / "7001.png"),
        "height": 6,
        "width": 8,
        "image_id": "7001",
    }
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        DatasetCatalog.get("floodnet_val_sem_seg")
    register_all_sem_seg()


def test_label_encoding_maps_raw_values_and_names_the_file_of_an_unknown_value():
    encoding = LabelEncoding((3, 1, 7), (0, 255))
    raw = np.array([[3, 1, 7], [0, 255, 3]])
    assert encoding.encode(raw).tolist() == [[0, 1, 2], [255, 255, 0]]
    with pytest.raises(ValueError, match=r"lab\.png.*\[2, 9\]"):
        encoding.encode(np.array([[3, 9, 2]]), "lab.png")


def test_labels_are_read_raw_not_stretched(tmp_path):
    values = np.array([[0, 300], [1000, 5]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "l16.png")
    assert read_label(str(tmp_path / "l16.png")).tolist() == values.tolist()
    palette = Image.fromarray(np.array([[0, 3], [3, 1]], np.uint8), mode="P")
    palette.putpalette([255, 0, 0] * 256)
    palette.save(tmp_path / "p.png")
    assert read_label(str(tmp_path / "p.png")).tolist() == [[0, 3], [3, 1]]
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="single-channel"):
        read_label(str(tmp_path / "rgb.png"))


def test_mapper_targets_one_mask_per_class_present_without_ignore_and_pads_with_ignore(tmp_path):
    (record,) = make_sem_seg_split(tmp_path, "_test_sem_mapper", 6, ignore_values=(4, 255), sizes=((30, 40),))
    raw = read_label(record["sem_seg_file_name"])
    # Only resize to 20 x 27 and pad to 32: no random crop, so the expected label is computable.
    mapper = SCORESemanticLSJMapper(
        augmentations=[T.Resize((20, 27)), T.FixedSizeCrop(crop_size=(32, 32))],
        image_format="RGB",
        label_encoding=LabelEncoding.from_metadata(MetadataCatalog.get("_test_sem_mapper")),
    )
    out = mapper(record)
    assert out["image"].shape == (3, 32, 32) and "sem_seg_file_name" not in out
    sem_seg = out["sem_seg"]
    encoded = LabelEncoding((0, 1, 2, 3, 4, 5), (4, 255)).encode(raw)
    resized = np.asarray(Image.fromarray(encoded).resize((27, 20), Image.NEAREST))
    assert sem_seg[:20, :27].tolist() == resized.tolist()
    assert (sem_seg[20:] == 255).all() and (sem_seg[:, 27:] == 255).all()  # padding is ignore, not class 0
    classes = out["instances"].gt_classes
    assert sorted(classes.tolist()) == sorted(set(np.unique(resized).tolist()) - {255})
    assert 4 not in classes.tolist()  # value 4 is ignored: no class id 4 and no mask for it
    masks = out["instances"].gt_masks.tensor
    for c, mask in zip(classes, masks):
        assert torch.equal(mask, sem_seg == c)


def test_mapper_is_registered_by_name_and_uses_the_training_split_encoding(tmp_path):
    make_sem_seg_split(tmp_path, "_test_sem_train", 5, ignore_values=(255,), sizes=((40, 40),))
    cfg = tiny_cfg(
        "INPUT.DATASET_MAPPER_NAME", "mask_former_semantic", "DATASETS.TRAIN", "('_test_sem_train',)"
    )
    mapper = build_train_mapper(cfg)
    assert isinstance(mapper, SCORESemanticLSJMapper)
    assert mapper.label_encoding == LabelEncoding((0, 1, 2, 3, 4), (255,))
    out = mapper(DatasetCatalog.get("_test_sem_train")[0])
    assert out["image"].shape == (3, cfg.INPUT.IMAGE_SIZE, cfg.INPUT.IMAGE_SIZE)


def test_validation_names_every_bad_semantic_record(tmp_path):
    records = make_sem_seg_split(
        tmp_path, "_test_sem_bad", 3, ignore_values=(255,), sizes=((20, 20), (20, 20), (20, 20), (20, 20))
    )
    encoding = LabelEncoding.from_metadata(MetadataCatalog.get("_test_sem_bad"))
    assert validate_dataset(records, "_test_sem_bad", label_encoding=encoding) is records
    labels = tmp_path / "labels"
    Image.fromarray(np.full((20, 20), 9, np.uint8)).save(labels / "img0.png")
    Image.fromarray(np.zeros((10, 20), np.uint8)).save(labels / "img1.png")
    (labels / "img2.png").unlink()
    with pytest.raises(InvalidDatasetError) as err:
        validate_dataset(records, "_test_sem_bad", label_encoding=encoding)
    text = str(err.value)
    assert "img0.png has value(s) [9]" in text
    assert "img1.png is 20x10 (WxH), the image 20x20" in text
    assert "label file not found" in text and "img2.png" in text
    assert "img3" not in text
    kept = validate_dataset(records, "_test_sem_bad", drop_invalid=True, label_encoding=encoding)
    assert [r["image_id"] for r in kept] == ["img3"]


def test_train_loader_takes_semantic_records_without_annotations(tmp_path):
    from score.engine import Trainer

    make_sem_seg_split(tmp_path, "_test_sem_loader", 4, sizes=((40, 40), (30, 50)))
    cfg = tiny_cfg(
        "INPUT.DATASET_MAPPER_NAME", "mask_former_semantic",
        "DATASETS.TRAIN", "('_test_sem_loader',)",
        "DATALOADER.FILTER_EMPTY_ANNOTATIONS", "True",
        "DATASETS.VALIDATION_CACHE_DIR", str(tmp_path / "cache"),
    )  # fmt: skip
    batch = next(iter(Trainer.build_train_loader(cfg)))
    assert len(batch) == cfg.SOLVER.IMS_PER_BATCH and all("sem_seg" in b for b in batch)
