"""The real NWPU VHR-10 sample beside the project loads as a SCORE instance dataset.

The sample (24 images, COCO polygons, DATASETS.md "Real sample for tests") is
read in place from ``<repo>/../shared/data/nwpu_vhr10_sample``; it is never
copied into the project.
"""

import score  # noqa: F401, I001  (first: its shims let detectron2.data import on numpy>=1.24, Pillow>=10)

# isort: split
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import polygons_to_bitmask
from PIL import Image

from score.data.datasets import NWPU_CLASSES, register_instance_dataset

SAMPLE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "nwpu_vhr10_sample"
NAME = "nwpu_vhr10_sample_test"

pytestmark = pytest.mark.skipif(
    not (SAMPLE / "instances.json").is_file(), reason=f"real NWPU sample not found at {SAMPLE}"
)


@pytest.fixture(scope="module")
def sample():
    register_instance_dataset(
        NAME, str(SAMPLE / "images"), str(SAMPLE / "instances.json"), NWPU_CLASSES, dataset_family="nwpu"
    )
    try:
        yield DatasetCatalog.get(NAME), json.loads((SAMPLE / "instances.json").read_text())
    finally:
        DatasetCatalog.remove(NAME)
        MetadataCatalog.remove(NAME)


def test_loads_24_images_with_the_nwpu_classes(sample):
    dicts, coco = sample
    assert len(dicts) == 24
    meta = MetadataCatalog.get(NAME)
    assert meta.thing_classes == list(NWPU_CLASSES)
    assert meta.evaluator_type == "coco"
    id_map = meta.thing_dataset_id_to_contiguous_id
    loaded = Counter(a["category_id"] for r in dicts for a in r["annotations"])
    in_file = Counter(id_map[a["category_id"]] for a in coco["annotations"] if not a.get("iscrowd", 0))
    assert loaded == in_file
    assert set(loaded) == set(range(len(NWPU_CLASSES)))
    assert all(8 <= n <= 17 for n in loaded.values())


def test_masks_decode_to_the_size_of_their_image(sample):
    dicts, _ = sample
    for record in dicts:
        with Image.open(record["file_name"]) as im:
            width, height = im.size
        assert (record["height"], record["width"]) == (height, width)
        for ann in record["annotations"]:
            mask = polygons_to_bitmask(ann["segmentation"], height, width)
            assert mask.shape == (height, width)
            assert mask.sum() > 0
            ys, xs = np.nonzero(mask)
            x, y, w, h = ann["bbox"]
            assert x - 2 <= xs.min() and xs.max() <= x + w + 2 and y - 2 <= ys.min() and ys.max() <= y + h + 2
