"""Colour-coded class maps of a semantic SCORE model, beside the input and the ground truth.

    python scripts/semantic_pictures.py --config-file configs/tiny_world/score_landdiscover_semantic.yaml \
        --weights RUN/model_final.pth --dataset floodnet_val_sem_seg --count 3 --output OUT

For the first ``--count`` images of a registered semantic split (its class names are the
vocabulary), writes ``OUT/<dataset>_<stem>.png``: input | predicted class map | ground
truth | legend of the classes in either map. Ignored ground truth is black.
"""

from __future__ import annotations

import score  # noqa: F401, I001  (first: registers the model and splits; its shims let detectron2 load)

# isort: split
import argparse
import logging
import os

import cv2
import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.modeling import build_model

from score.config import get_score_cfg
from score.data.labels import LabelEncoding, read_label
from score.vocabulary import display_name

logger = logging.getLogger("semantic_pictures")


def palette(num_classes: int) -> np.ndarray:
    """(K, 3) uint8 RGB colours, distinct hues at two brightness levels."""
    hues = (np.arange(num_classes) * 0.61803 % 1.0 * 180).astype(np.uint8)
    value = np.where(np.arange(num_classes) % 2 == 0, 235, 160).astype(np.uint8)
    hsv = np.stack([hues, np.full(num_classes, 200, np.uint8), value], axis=1)[None]
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0]


def legend(names: list[str], colors: np.ndarray, classes: list[int], height: int) -> np.ndarray:
    """(H, 220, 3) uint8 legend of the given class indices."""
    panel = np.full((max(height, 22 * len(classes) + 8), 220, 3), 255, np.uint8)
    for row, k in enumerate(classes):
        y = 8 + 22 * row
        cv2.rectangle(panel, (8, y), (26, y + 16), tuple(int(c) for c in colors[k]), -1)
        cv2.putText(panel, names[k][:24], (32, y + 13), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1)
    return panel


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--weights", required=True, help="trained model (model_final.pth)")
    parser.add_argument(
        "--dataset", required=True, help="registered semantic split (its names are the vocabulary)"
    )
    parser.add_argument("--count", type=int, default=3, help="images, the split's first")
    parser.add_argument("--output", required=True, help="folder for the pictures")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    cfg = get_score_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.DATASETS.TEST = (args.dataset,)
    cfg.freeze()
    metadata = MetadataCatalog.get(args.dataset)
    if metadata.get("evaluator_type", None) != "sem_seg":
        raise ValueError(f"{args.dataset} is not a registered semantic split")
    records = DatasetCatalog.get(args.dataset)[: args.count]
    names = [display_name(n) for n in metadata.stuff_classes]
    encoding = LabelEncoding.from_metadata(metadata)
    colors = palette(len(names))

    model = build_model(cfg)
    DetectionCheckpointer(model).load(args.weights)
    model.eval()
    resize = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    os.makedirs(args.output, exist_ok=True)
    for record in records:
        image = cv2.cvtColor(cv2.imread(record["file_name"]), cv2.COLOR_BGR2RGB)
        height, width = image.shape[:2]
        resized = resize.get_transform(image).apply_image(image)
        tensor = torch.as_tensor(resized.transpose(2, 0, 1).copy())
        with torch.no_grad():
            output = model([{"image": tensor, "height": height, "width": width}])[0]
        predicted = output["sem_seg"].argmax(0).cpu().numpy()
        truth = encoding.encode(read_label(record["sem_seg_file_name"]), record["sem_seg_file_name"])
        ignored = truth == encoding.ignore_label
        truth_rgb = colors[np.where(ignored, 0, truth)]
        truth_rgb[ignored] = 0
        present = sorted(set(np.unique(predicted).tolist()) | set(np.unique(truth[~ignored]).tolist()))
        maps = np.hstack([image, colors[predicted], truth_rgb])
        panel = legend(names, colors, present, height)
        picture = np.full((panel.shape[0], maps.shape[1] + panel.shape[1], 3), 255, np.uint8)
        picture[:height, : maps.shape[1]] = maps
        picture[:, maps.shape[1] :] = panel
        stem = os.path.splitext(os.path.basename(record["file_name"]))[0]
        path = os.path.join(args.output, f"{args.dataset}_{stem}.png")
        if not cv2.imwrite(path, cv2.cvtColor(picture, cv2.COLOR_RGB2BGR)):
            raise OSError(f"could not write {path}")
        logger.info("Wrote %s", path)


if __name__ == "__main__":
    main()
