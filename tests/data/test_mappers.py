"""Training (large-scale jitter) and test mappers of score/data/mappers.py."""

import os

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch

import score  # noqa: F401  (detectron2 compatibility shims before detectron2.data)

# isort: split
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, BoxMode
from PIL import Image

from score.config import get_score_cfg
from score.data.mappers import (
    TRAIN_MAPPERS,
    SCOREInstanceLSJMapper,
    build_test_mapper,
    build_train_mapper,
)

NWPU_SAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "nwpu_vhr10_sample")


def _write_image(path, height, width, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return str(path)


def _polygon(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def _rle(mask):
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _anno(segmentation, bbox, category_id, iscrowd=0):
    return {
        "segmentation": segmentation,
        "bbox": bbox,
        "bbox_mode": BoxMode.XYWH_ABS,
        "category_id": category_id,
        "iscrowd": iscrowd,
    }


def _check_instances(instances, image_shape):
    """Every mask non-empty, every box the tight box of its mask."""
    masks = instances.gt_masks
    assert isinstance(masks, BitMasks)
    assert tuple(masks.tensor.shape[1:]) == image_shape
    assert masks.tensor.flatten(1).any(dim=1).all()
    for mask, box in zip(masks.tensor, instances.gt_boxes.tensor):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        expected = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
        torch.testing.assert_close(box, expected)


def test_crop_recomputes_boxes_and_drops_emptied_instances(tmp_path):
    # 64 x 64 image; the mapper keeps only the top-left 32 x 32 quarter.
    file_name = _write_image(tmp_path / "a.png", 64, 64)
    straddling = np.zeros((64, 64), dtype=bool)
    straddling[20:40, 10:20] = True  # rows 20..39: cut at row 32
    record = {
        "file_name": file_name,
        "height": 64,
        "width": 64,
        "image_id": 1,
        "annotations": [
            _anno(_polygon(4, 4, 12, 10), [4, 4, 8, 6], 3),  # inside the crop (polygon)
            _anno(_rle(straddling), [10, 20, 10, 20], 5),  # cut by the crop (RLE)
            _anno(_polygon(40, 40, 60, 60), [40, 40, 20, 20], 7),  # outside: dropped
            _anno(_polygon(2, 2, 30, 30), [2, 2, 28, 28], 1, iscrowd=1),  # crowd: dropped
        ],
    }
    mapper = SCOREInstanceLSJMapper(augmentations=[T.CropTransform(0, 0, 32, 32)], image_format="RGB")
    out = mapper(record)

    assert "annotations" not in out
    assert out["image"].dtype == torch.uint8 and tuple(out["image"].shape) == (3, 32, 32)
    instances = out["instances"]
    assert instances.gt_classes.tolist() == [3, 5]
    _check_instances(instances, (32, 32))
    # The straddling object keeps rows 20..31 only: its box is recomputed from the mask.
    torch.testing.assert_close(instances.gt_boxes.tensor[1], torch.tensor([10.0, 20.0, 20.0, 32.0]))
    assert int(instances.gt_masks.tensor[1].sum()) == 12 * 10
    # The record itself is not modified (it is reused every epoch).
    assert len(record["annotations"]) == 4 and "image" not in record


def test_image_without_annotations_gets_empty_masks(tmp_path):
    file_name = _write_image(tmp_path / "a.png", 40, 50)
    mapper = SCOREInstanceLSJMapper(augmentations=[], image_format="RGB")
    out = mapper({"file_name": file_name, "height": 40, "width": 50, "annotations": []})
    assert len(out["instances"]) == 0
    assert tuple(out["instances"].gt_masks.tensor.shape) == (0, 40, 50)


def test_lsj_from_config_gives_fixed_size_outputs(tmp_path):
    cfg = get_score_cfg()
    cfg.INPUT.DATASET_MAPPER_NAME = "score_instance_lsj"  # Base-SCORE.yaml's
    cfg.INPUT.IMAGE_SIZE = 64
    cfg.INPUT.MIN_SCALE, cfg.INPUT.MAX_SCALE = 0.1, 2.0
    mapper = build_train_mapper(cfg)
    assert isinstance(mapper, SCOREInstanceLSJMapper)
    augs = mapper.augmentations.augs
    assert [type(a) for a in augs] == [T.RandomFlip, T.ResizeScale, T.FixedSizeCrop]
    assert augs[0].horizontal and not augs[0].vertical
    assert (augs[1].min_scale, augs[1].max_scale, augs[1].target_height, augs[1].target_width) == (
        0.1,
        2.0,
        64,
        64,
    )
    assert tuple(augs[2].crop_size) == (64, 64)

    file_name = _write_image(tmp_path / "a.png", 90, 120)
    mask = np.zeros((90, 120), dtype=bool)
    mask[30:70, 40:100] = True
    record = {
        "file_name": file_name,
        "height": 90,
        "width": 120,
        "annotations": [
            _anno(_polygon(5, 5, 60, 40), [5, 5, 55, 35], 0),
            _anno(_rle(mask), [40, 30, 60, 40], 2),
        ],
    }
    np.random.seed(0)
    for _ in range(10):  # random scales, offsets and flips: the invariants hold for each
        out = mapper(record)
        assert tuple(out["image"].shape) == (3, 64, 64)
        _check_instances(out["instances"], (64, 64))
        assert set(out["instances"].gt_classes.tolist()) <= {0, 2}


def test_unknown_mapper_name_lists_the_registered_ones():
    cfg = get_score_cfg()
    cfg.INPUT.DATASET_MAPPER_NAME = "mask_former_instance"
    with pytest.raises(KeyError, match="score_instance_lsj"):
        build_train_mapper(cfg)
    assert TRAIN_MAPPERS["score_instance_lsj"] is SCOREInstanceLSJMapper


def test_unreadable_image_error_names_the_file(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png at all")
    mapper = SCOREInstanceLSJMapper(augmentations=[], image_format="RGB")
    with pytest.raises(OSError, match="broken.png"):
        mapper({"file_name": str(bad), "height": 8, "width": 8, "annotations": []})


def test_test_mapper_resizes_shortest_edge_and_drops_annotations(tmp_path):
    cfg = get_score_cfg()
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 512, 800
    mapper = build_test_mapper(cfg)
    file_name = _write_image(tmp_path / "wide.png", 100, 400)  # shortest edge 512 would make it 2048 wide
    out = mapper(
        {
            "file_name": file_name,
            "height": 100,
            "width": 400,
            "annotations": [_anno(_polygon(1, 1, 9, 9), [1, 1, 8, 8], 0)],
        }
    )
    assert tuple(out["image"].shape) == (3, 200, 800)
    assert "annotations" not in out and "instances" not in out
    assert (out["height"], out["width"]) == (100, 400)


@pytest.mark.skipif(not os.path.isdir(NWPU_SAMPLE), reason="real NWPU sample not present")
def test_lsj_on_real_nwpu_images():
    from detectron2.data.datasets import load_coco_json

    records = load_coco_json(
        os.path.join(NWPU_SAMPLE, "instances.json"),
        os.path.join(NWPU_SAMPLE, "images"),
        "score_test_nwpu_sample",
    )
    cfg = get_score_cfg()
    cfg.INPUT.DATASET_MAPPER_NAME = "score_instance_lsj"  # Base-SCORE.yaml's
    cfg.INPUT.IMAGE_SIZE = 256
    mapper = build_train_mapper(cfg)
    np.random.seed(1)
    kept = 0
    for record in records[:4]:
        out = mapper(record)
        assert tuple(out["image"].shape) == (3, 256, 256)
        _check_instances(out["instances"], (256, 256))
        kept += len(out["instances"])
    assert kept > 0


def _write_png16(path, height=40, width=50, seed=0):
    """A 16-bit RGB PNG of 12-bit values (0..4095); returns the (H, W, 3) RGB uint16 values."""
    import cv2

    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 4096, (height, width, 3), dtype=np.uint16)
    rgb[..., 2] //= 4  # a darker blue band: per-band stretch
    assert cv2.imwrite(str(path), rgb[:, :, ::-1])  # cv2 writes BGR
    return rgb


def _percentile_stretch(rgb):
    """The stretch of score/data/image_io.py written out: per band, 2nd..98th percentile to 0..255."""
    out = np.empty(rgb.shape, dtype=np.uint8)
    for c in range(3):
        low, high = np.percentile(rgb[..., c].astype(np.float64), [2, 98])
        scaled = (rgb[..., c].astype(np.float32) - np.float32(low)) * np.float32(255.0 / (high - low))
        out[..., c] = np.clip(np.rint(scaled), 0, 255)
    return out


@pytest.mark.parametrize("mapper_kind", ["train", "test"])
def test_mappers_stretch_16_bit_pngs_instead_of_saturating(tmp_path, mapper_kind):
    file_name = str(tmp_path / "u16.png")
    rgb = _write_png16(file_name)
    cfg = get_score_cfg()
    cfg.INPUT.FORMAT = "RGB"  # as SCORE's configs (detectron2's default is BGR)
    if mapper_kind == "train":
        mapper = SCOREInstanceLSJMapper(augmentations=[], image_format="RGB")
    else:  # no resize: the test size is the image's
        cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 40, 50
        mapper = build_test_mapper(cfg)
    out = mapper({"file_name": file_name, "height": 40, "width": 50, "annotations": []})
    image = out["image"].permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(image, _percentile_stretch(rgb))
    assert (image == 255).mean() < 0.05  # about 2 % (the top percentiles), not all white

    cfg.INPUT.HIGH_BIT_DEPTH_SCALING = "dtype"
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 40, 50
    out = build_test_mapper(cfg)({"file_name": file_name, "height": 40, "width": 50})
    expected = np.clip(np.rint(rgb.astype(np.float32) * np.float32(255.0 / 65535)), 0, 255)
    np.testing.assert_array_equal(out["image"].permute(1, 2, 0).numpy(), expected)


def test_unknown_high_bit_scaling_is_refused():
    cfg = get_score_cfg()
    cfg.INPUT.HIGH_BIT_DEPTH_SCALING = "clip"
    with pytest.raises(ValueError, match="HIGH_BIT_DEPTH_SCALING"):
        build_test_mapper(cfg)


def test_train_mapper_stretches_a_16_bit_tiff(tmp_path):
    import rasterio

    rgb = np.random.default_rng(3).integers(0, 4096, (30, 40, 3), dtype=np.uint16)
    path = str(tmp_path / "u16.tif")
    profile = dict(driver="GTiff", height=30, width=40, count=3, dtype="uint16")
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(rgb.transpose(2, 0, 1))
    mapper = SCOREInstanceLSJMapper(augmentations=[], image_format="RGB")
    out = mapper({"file_name": path, "height": 30, "width": 40, "annotations": []})
    np.testing.assert_array_equal(out["image"].permute(1, 2, 0).numpy(), _percentile_stretch(rgb))
