"""Shared fixtures: the tiny SCORE config and generated inputs."""

from pathlib import Path

import pytest
import torch

import score  # noqa: F401  (patches detectron2 v0.6 before any test imports it)

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "configs" / "tiny" / "score_tiny_isaid.yaml"
NWPU_SAMPLE = REPO.parent / "shared" / "data" / "nwpu_vhr10_sample"


def load_script(path: str):
    """A script of the repository (``"tools/predict.py"``, ``"train_net.py"``) imported as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(Path(path).stem, REPO / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_cfg(*opts: str):
    """The tiny SCORE config (random CLIP weights, CPU) with KEY VALUE overrides."""
    from score.config import get_score_cfg

    cfg = get_score_cfg()
    cfg.merge_from_file(str(TINY_CONFIG))
    cfg.merge_from_list(list(opts))
    return cfg


@pytest.fixture
def make_inputs():
    """Batched detectron2 inputs with random images and (optionally) square instances."""
    from detectron2.structures import BitMasks, Instances

    def make(sizes, num_instances=2, num_classes=15, seed=0):
        g = torch.Generator().manual_seed(seed)
        batch = []
        for h, w in sizes:
            image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)
            masks = torch.zeros(num_instances, h, w, dtype=torch.bool)
            for i in range(num_instances):
                y, x = (
                    int(torch.randint(0, h // 2, (1,), generator=g)),
                    int(torch.randint(0, w // 2, (1,), generator=g)),
                )
                masks[i, y : y + h // 3, x : x + w // 3] = True
            instances = Instances((h, w))
            instances.gt_classes = torch.randint(0, num_classes, (num_instances,), generator=g)
            instances.gt_masks = BitMasks(masks)
            batch.append({"image": image, "height": h, "width": w, "instances": instances})
        return batch

    return make


def make_sem_seg_split(
    root, name, num_classes, *, ignore_values=(255,), label_values=None, sizes=((40, 50),), seed=0
):
    """Write random images and label PNGs (values: the class values and the ignore values) under
    ``root`` and register them as the semantic split ``name``; returns its records."""
    import numpy as np
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from PIL import Image

    from score.data.datasets import register_sem_seg_dataset

    rng = np.random.default_rng(seed)
    values = list(range(num_classes)) if label_values is None else list(label_values)
    image_dir, label_dir = Path(root) / "images", Path(root) / "labels"
    image_dir.mkdir(parents=True, exist_ok=True)
    label_dir.mkdir(parents=True, exist_ok=True)
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(image_dir / f"img{i}.png")
        label = rng.choice(values + list(ignore_values), size=(h, w)).astype(np.uint8)
        Image.fromarray(label).save(label_dir / f"img{i}.png")
    DatasetCatalog.pop(name, None)
    MetadataCatalog.pop(name, None)
    register_sem_seg_dataset(
        name,
        str(image_dir),
        str(label_dir),
        [f"class {chr(97 + k % 26)}{k}" for k in range(num_classes)],
        label_values=label_values,
        ignore_values=ignore_values,
    )
    return DatasetCatalog.get(name)
