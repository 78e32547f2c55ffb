"""Contrastive pretraining of the tiny ConvNeXt CLIP on synthetic object crops (the tiny world).

    python tools/pretrain_tiny_clip.py --out weights/tiny_world/score-tiny-convnext.pt

The tiny towers of ``score/modeling/tiny_clip.py`` stand in for web-scale CLIP;
with random weights nothing of the open-vocabulary path can be shown. This
script gives the image and text towers of ``score-tiny-convnext`` the concepts
of the five vocabularies: every class name of ``SPLITS`` (after
``canonical_class_name``) is drawn by ``synthetic_world.recipe_for``, names
with one recipe (``plane`` / ``airplane``) are one concept, and the captions
are prompt templates filled with any of the concept's names. The loss is
open_clip's ``ClipLoss``; each batch holds distinct concepts, so no caption is
a false negative of another image in the batch.

It logs the zero-shot top-1 over all concepts on held-out crops (another
seed) and writes an open_clip state dict (fp16), which loads through
``MODEL.SCORE.CLIP_PRETRAINED_WEIGHTS`` with ``RANDOM_INIT_CLIP False``.
"""

from __future__ import annotations

import argparse
import collections
import logging
import math
import time
from collections import defaultdict

import cv2
import numpy as np
import open_clip
import torch
import torch.nn.functional as F

from score.data.datasets import SPLITS, canonical_class_name
from score.modeling.open_vocab import mask_pool
from score.modeling.tiny_clip import TINY_CLIP_CONFIGS, TINY_CONVNEXT, register_tiny_clip_configs
from synthetic_world import draw_object, draw_surround, recipe_for, render_image, surround_radius
from synthetic_world.scenes import _background

logger = logging.getLogger("pretrain_tiny_clip")

TEMPLATES = (
    "a satellite photo of a {}.",
    "an aerial image of a {}.",
    "a {} seen from above.",
    "a remote sensing image of the {}.",
    "a photo of a {}.",
)


def concept_names() -> dict[str, list[str]]:
    """Concept (recipe) -> the normalised class names of all splits that are drawn by it."""
    concepts: dict[str, set[str]] = defaultdict(set)
    for split in SPLITS:
        for name in split.class_names:
            canonical = canonical_class_name(name)
            concepts[recipe_for(name).concept].update(n.strip() for n in canonical.split(","))
    return {c: sorted(n) for c, n in sorted(concepts.items())}


def render_crop(rng: np.random.Generator, concept_name: str, size: int) -> np.ndarray:
    """One (size, size, 3) uint8 crop: the object with its surround, random length, angle and ground."""
    recipe = recipe_for(concept_name)
    canvas = np.clip(_background(rng, size, size), 0, 255).astype(np.uint8)
    length = float(rng.uniform(0.5, 1.0)) * size
    # Shrink until object and surround fit in the crop, as a detector's box crop would hold them.
    length *= min(1.0, 0.5 * size / surround_radius(recipe, length))
    center = tuple(float(v) for v in rng.uniform(0.42 * size, 0.58 * size, size=2))
    angle = float(rng.uniform(0.0, 2.0 * math.pi))
    draw_surround(canvas, recipe, center, length, angle)
    draw_object(canvas, recipe, center, length, angle)
    canvas = canvas.astype(np.float32) + rng.normal(0.0, 3.0, size=canvas.shape).astype(np.float32)
    return np.clip(np.round(canvas), 0, 255).astype(np.uint8)


def render_regions(rng: np.random.Generator, concept_names: list[str], num_scenes: int, size: int):
    """Scenes holding the given concepts once each -> images (S, H, W, 3) uint8, and per object
    (scene index, concept index, mask (H, W) bool). Objects of a concept already drawn are dropped."""
    queue = collections.deque(range(len(concept_names)))
    images, regions, drawn = [], [], set()
    for scene in range(num_scenes):
        if not queue:
            break
        image, objects = render_image(rng, size, size, queue, concept_names)
        images.append(image)
        for label, outline in objects:
            if label in drawn:
                continue
            drawn.add(label)
            mask = np.zeros((size, size), np.uint8)
            cv2.fillPoly(mask, [np.round(outline).astype(np.int32)], 1)
            regions.append((scene, label, mask.astype(bool)))
    return np.stack(images), regions


def region_features(model, images: torch.Tensor, regions) -> tuple[torch.Tensor, list[int]]:
    """Mask-pooled dense features of the ConvNeXt trunk, mapped to the joint space as the detector does.

    The same path as ``CLIPConvNeXtBackbone`` + ``SCORE.out_vocab_logits``:
    the trunk's dense map at stride 32, hard mask pooling (``mask_pool``),
    then the trunk head and the CLIP projection. Objects whose mask vanishes
    on the stride-32 grid are skipped; returns the features and the kept indices.
    """
    trunk = model.visual.trunk
    dense = trunk.forward_features(images)
    masks = torch.stack([torch.from_numpy(m) for _, _, m in regions]).float()
    logits = F.interpolate(masks[:, None], size=dense.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    kept = [i for i in range(len(regions)) if bool((logits[i] > 0.5).any())]
    features = []
    for i in kept:
        scene = regions[i][0]
        features.append(mask_pool(dense[scene : scene + 1], logits[i][None, None] - 0.5)[0, 0])
    pooled = torch.stack(features)
    x = model.visual.head(trunk.head(pooled[:, :, None, None]))
    return F.normalize(x, dim=-1), kept


def to_tensor(crops: list[np.ndarray], model) -> torch.Tensor:
    """uint8 crops -> normalised (N, 3, S, S) float tensor with the model's mean and std."""
    x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(model.visual.preprocess_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(model.visual.preprocess_cfg["std"]).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def text_weights(model, tokenizer, concepts: dict[str, list[str]]) -> torch.Tensor:
    """(num concepts, D) zero-shot classifier: each concept's names x templates, averaged and normalised."""
    weights = []
    for names in concepts.values():
        emb = model.encode_text(
            tokenizer([t.format(n) for n in names for t in TEMPLATES]), normalize=True
        ).mean(0)
        weights.append(emb / emb.norm())
    return torch.stack(weights)


@torch.no_grad()
def zero_shot_top1(model, tokenizer, concepts: dict[str, list[str]], seed: int, per_concept: int, size: int):
    """Top-1 of held-out crops over all concepts; a concept's classifier: its names x templates, averaged."""
    model.eval()
    keys = list(concepts)
    weights = text_weights(model, tokenizer, concepts)
    rng = np.random.default_rng(seed)
    correct = 0
    for label, key in enumerate(keys):
        crops = [render_crop(rng, concepts[key][0], size) for _ in range(per_concept)]
        feats = model.encode_image(to_tensor(crops, model), normalize=True)
        correct += int((feats @ weights.T).argmax(1).eq(label).sum())
    model.train()
    return correct / (len(keys) * per_concept)


def caption(rng: np.random.Generator, names: list[str]) -> str:
    """A random template filled with a random name of the concept."""
    return TEMPLATES[rng.integers(len(TEMPLATES))].format(names[rng.integers(len(names))])


@torch.no_grad()
def zero_shot_region_top1(
    model, tokenizer, concepts: dict[str, list[str]], seed: int, size: int, rounds: int = 4
):
    """Top-1 over all concepts of mask-pooled regions of held-out scenes (the out-of-vocabulary path)."""
    model.eval()
    weights = text_weights(model, tokenizer, concepts)
    keys = list(concepts)
    rng = np.random.default_rng(seed)
    correct = total = 0
    for _ in range(rounds):
        order = rng.permutation(len(keys))
        images, regions = render_regions(rng, [concepts[keys[i]][0] for i in order], 4 * len(keys), size)
        feats, kept = region_features(model, to_tensor(list(images), model), regions)
        labels = torch.tensor([int(order[regions[i][1]]) for i in kept])
        correct += int((feats @ weights.T).argmax(1).eq(labels).sum())
        total += len(kept)
    model.train()
    return correct / total


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, help="state dict to write (open_clip format, fp16)")
    parser.add_argument(
        "--model",
        default=TINY_CONVNEXT,
        choices=sorted(TINY_CLIP_CONFIGS),
        help="tiny open_clip config to train",
    )
    parser.add_argument("--steps", type=int, default=300, help="optimiser steps")
    parser.add_argument("--batch", type=int, default=48, help="distinct concepts per batch (at most all)")
    parser.add_argument("--lr", type=float, default=2e-3, help="AdamW learning rate (cosine decay)")
    parser.add_argument(
        "--region-scenes",
        type=int,
        default=8,
        help="scenes per step whose mask-pooled object regions are trained too (0: crops only)",
    )
    parser.add_argument("--region-size", type=int, default=256, help="side of those scenes, pixels")
    parser.add_argument("--eval-per-concept", type=int, default=10, help="held-out crops per concept")
    parser.add_argument("--seed", type=int, default=0, help="training seed; held-out crops use seed + 1000")
    return parser.parse_args(argv)


def main(argv=None) -> float:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.manual_seed(args.seed)
    register_tiny_clip_configs()
    model = open_clip.create_model(args.model)
    tokenizer = open_clip.get_tokenizer(args.model)
    size = (
        model.visual.image_size[0] if isinstance(model.visual.image_size, tuple) else model.visual.image_size
    )
    concepts = concept_names()
    keys = list(concepts)
    logger.info("%d concepts from %d class names", len(keys), sum(len(v) for v in concepts.values()))
    loss_fn = open_clip.ClipLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=args.steps, pct_start=0.05)
    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    model.train()
    primary = [concepts[k][0] for k in keys]
    for step in range(args.steps):
        batch = rng.choice(len(keys), size=min(args.batch, len(keys)), replace=False)
        crops, captions = [], []
        for i in batch:
            crops.append(render_crop(rng, primary[i], size))
            captions.append(caption(rng, concepts[keys[i]]))
        image_features, text_features, logit_scale = model(to_tensor(crops, model), tokenizer(captions))
        loss = loss_fn(image_features, text_features, logit_scale)
        if args.region_scenes:
            # The detector pools the trunk's dense map inside masks of whole scenes
            # (out-of-vocabulary term): train that path too, on distinct concepts.
            batch = rng.choice(len(keys), size=min(args.batch, len(keys)), replace=False)
            images, regions = render_regions(
                rng, [primary[i] for i in batch], args.region_scenes, args.region_size
            )
            region_feats, kept = region_features(model, to_tensor(list(images), model), regions)
            region_text = model.encode_text(
                tokenizer([caption(rng, concepts[keys[batch[regions[i][1]]]]) for i in kept]), normalize=True
            )
            loss = 0.5 * (loss + loss_fn(region_feats, region_text, model.logit_scale.exp()))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 50 == 0 or step == args.steps - 1:
            logger.info(
                "step %d/%d loss %.3f (%.0f s)", step, args.steps, loss.item(), time.perf_counter() - start
            )
    top1 = zero_shot_top1(model, tokenizer, concepts, args.seed + 1000, args.eval_per_concept, size)
    logger.info("zero-shot top-1 over %d concepts on held-out crops: %.1f %%", len(keys), 100 * top1)
    region_top1 = zero_shot_region_top1(model, tokenizer, concepts, args.seed + 1000, args.region_size)
    logger.info(
        "zero-shot top-1 over %d concepts of mask-pooled regions of held-out scenes: %.1f %%",
        len(keys), 100 * region_top1,
    )  # fmt: skip
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    torch.save(state, args.out)
    logger.info(
        "wrote %s (%.1f MB) in %.0f s",
        args.out,
        sum(v.numel() * v.element_size() for v in state.values()) / 1e6,
        time.perf_counter() - start,
    )
    return top1


if __name__ == "__main__":
    main()
