"""Contrastive pretraining of the tiny-world CLIPs: object crops (ConvNeXt) and scenes (ViT context).

    python tools/pretrain_tiny_clip.py --out weights/tiny_world/score-tiny-convnext.pt
    python tools/pretrain_tiny_clip.py --tower context --out weights/tiny_world/score-tiny-vit.pt

The tiny towers of ``score/modeling/tiny_clip.py`` stand in for web-scale CLIP;
with random weights nothing of the open-vocabulary path can be shown. This
script gives the image and text towers of ``score-tiny-convnext`` the concepts
of the five vocabularies, seen as object crops and, as the detector's
out-of-vocabulary term sees them, as objects of whole scenes mask-pooled from
the trunk's dense map (``--region-scenes``): every class name of ``SPLITS`` (after
``canonical_class_name``) is drawn by ``synthetic_world.recipe_for``, names
with one recipe (``plane`` / ``airplane``) are one concept, and the captions
are prompt templates filled with any of the concept's names. The loss is
open_clip's ``ClipLoss``; each batch holds distinct concepts, so no caption is
a false negative of another image in the batch. ``--captions-per-image`` draws
more captions per crop (one ``ClipLoss`` term each) and ``--text-contrast``
contrasts those caption sets with each other too, which spreads the classifier
rows of concepts that the image term leaves nearly parallel (the shipped
checkpoint's second stage draws 3 captions, without ``--text-contrast``).
``--init`` goes on from a checkpoint; with ``--new-words-only`` only the token
embeddings of the words that land-cover names bring and no object caption
holds are trained, so that everything the detector computes for objects (image
features, object caption embeddings) stays bit-identical to ``--init``.

It logs the zero-shot top-1 over all concepts on held-out crops and regions (another
seed) and writes an open_clip state dict (fp16), which loads through
``MODEL.SCORE.CLIP_PRETRAINED_WEIGHTS`` with ``RANDOM_INIT_CLIP False``.

``--tower context`` trains the context CLIP ``score-tiny-vit`` (image and text
towers) instead, the stand-in for RemoteCLIP: its images are whole synthetic
scenes (``synthetic_world.render_scene``) and regions cropped from them, both
resized to the tower's input like SCORE's context branch does, with captions
from scene templates filled with the scene type's name or a synonym. Each
batch holds one image of every scene type, so again no caption is a false
negative. Besides open_clip's usual image embedding, the [CLS] output of the
context encoder's value-only last block (``score.modeling.context.remoteclip``,
the global context g that GCA reads) gets its own ``ClipLoss`` term against
the same captions, so that g, and not only the embedding that SCORE never
uses, names the scene. It logs the zero-shot scene-type accuracy of both on
held-out scenes and regions (another seed); the state dict loads through
``MODEL.SCORE.RSCLIP_PRETRAINED_WEIGHTS``.
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

from score.data.datasets import SEM_SEG_SPLITS, SPLITS
from score.modeling.context.remoteclip import value_only_block
from score.modeling.open_vocab import mask_pool
from score.modeling.tiny_clip import TINY_CLIP_CONFIGS, TINY_CONVNEXT, TINY_VIT
from score.vocabulary import RS_TEMPLATES, canonical_class_name
from synthetic_world import (
    SCENE_TYPES,
    draw_object,
    draw_surround,
    render_image,
    render_scene,
    scene_types_of,
    surround_radius,
)
from synthetic_world.landcover import (
    cover_for,
    object_recipe,
    paint_cover,
    painted_names,
    render_semantic_scene,
)
from synthetic_world.scenes import _background

logger = logging.getLogger("pretrain_tiny_clip")

# The detector's own prompts (RS_TEMPLATES, what its text classifier is built from) and five
# more, so that the tiny text tower is trained on the prompts it is used with.
TEMPLATES = RS_TEMPLATES + (
    "a satellite photo of a {}.",
    "an aerial image of a {}.",
    "a {} seen from above.",
    "a remote sensing image of the {}.",
    "a photo of a {}.",
)


SCENE_TEMPLATES = (
    "a satellite image of a {}.",
    "an aerial photo of a {}.",
    "a remote sensing image of a {} scene.",
    "a {} seen from above.",
    "an overhead view of a {}.",
)


def concept_of(class_name: str) -> str:
    """The concept that draws a class name: its land cover's (``"cover: water"``) or its object recipe's."""
    cover = cover_for(class_name)
    return f"cover: {cover.concept}" if cover is not None else object_recipe(class_name).concept


def concept_names(land_cover: bool = True) -> dict[str, list[str]]:
    """Concept -> the normalised class names drawn by it, over the instance splits and (``land_cover``)
    the semantic splits; land-cover concepts are named ``"cover: <cover>"``."""
    concepts: dict[str, set[str]] = defaultdict(set)
    names = [n for split in SPLITS for n in split.class_names]
    if land_cover:
        names += [n for split in SEM_SEG_SPLITS for n in painted_names(split)]
    for name in names:
        canonical = canonical_class_name(name)
        concepts[concept_of(name)].update(n.strip() for n in canonical.split(","))
    return {c: sorted(n) for c, n in sorted(concepts.items())}


def render_crop(rng: np.random.Generator, concept_name: str, size: int) -> np.ndarray:
    """One (size, size, 3) uint8 crop: the object with its surround, random length, angle and ground;
    for land cover, a patch of its texture (roads a band, buildings roof blocks, on other ground)."""
    cover = cover_for(concept_name)
    if cover is not None:
        return render_cover_crop(rng, concept_name, size)
    recipe = object_recipe(concept_name)
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


def drawing_name(concept: str) -> str:
    """A class name that draws a concept (``"cover: water"`` -> ``water``, ``"hashed: tug"`` -> ``tug``)."""
    return concept.removeprefix("cover: ").removeprefix("hashed: ")


def is_cover(concept: str) -> bool:
    return concept.startswith("cover: ")


def render_cover_crop(rng: np.random.Generator, class_name: str, size: int) -> np.ndarray:
    """One (size, size, 3) uint8 patch of a land cover: its texture over the whole patch, a band
    across other ground (roads) or two to four roof blocks on other ground (buildings)."""
    cover = cover_for(class_name)
    texture = paint_cover(rng, cover, size, size)
    if cover.layout == "area":
        return np.clip(np.round(texture), 0, 255).astype(np.uint8)
    canvas = _background(rng, size, size)
    mask = np.zeros((size, size), np.uint8)
    angle = float(rng.uniform(0.0, math.pi))
    c, s = math.cos(angle), math.sin(angle)
    if cover.layout == "band":
        centre = rng.uniform(0.4, 0.6, size=2) * size
        d = np.array([c, s]) * 2 * size
        thickness = int(rng.uniform(0.3, 0.5) * size)
        cv2.line(mask, tuple(int(v) for v in centre - d), tuple(int(v) for v in centre + d), 1, thickness)
    else:
        for _ in range(int(rng.integers(2, 5))):
            w, h = rng.uniform(0.25, 0.5, size=2) * size / 2
            corners = np.array([[-w, -h], [w, -h], [w, h], [-w, h]]) @ np.array([[c, s], [-s, c]])
            cv2.fillPoly(mask, [np.round(corners + rng.uniform(0.3, 0.7, size=2) * size).astype(np.int32)], 1)
    inside = mask.astype(bool)
    canvas[inside] = texture[inside]
    canvas += rng.normal(0.0, 3.0, size=canvas.shape).astype(np.float32)
    return np.clip(np.round(canvas), 0, 255).astype(np.uint8)


def scene_names() -> dict[str, list[str]]:
    """Scene type -> its caption names (the type's name, then its synonyms)."""
    return {name: [name, *t.synonyms] for name, t in SCENE_TYPES.items()}


def scene_classes() -> dict[str, list[str]]:
    """Scene type -> the class names of all splits that appear in it (one spelling per normalised name)."""
    by_name = {canonical_class_name(n): n for split in SPLITS for n in split.class_names}
    members: dict[str, list[str]] = {t: [] for t in SCENE_TYPES}
    for canonical in sorted(by_name):
        for t in scene_types_of(by_name[canonical]):
            members[t].append(by_name[canonical])
    return members


def render_context_view(
    rng: np.random.Generator, scene_type: str, classes: list[str], size: int, region: bool
) -> np.ndarray:
    """A (size, size, 3) uint8 view of a scene: the whole scene or a region of it, resized to the tower.

    The scene has a random size between 0.9 and 1.8 ``size`` per side (SCORE's
    images are resized to the context input whatever their size and shape);
    a region spans 40 to 80 % of each side.
    """
    height, width = (int(v) for v in rng.integers(int(0.9 * size), int(1.8 * size) + 1, size=2))
    image = render_scene(rng, height, width, collections.deque(), classes, scene_type=scene_type).image
    if region:
        h, w = (int(f * v) for f, v in zip(rng.uniform(0.4, 0.8, size=2), (height, width)))
        y, x = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
        image = image[y : y + h, x : x + w]
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)


def context_cls(model, images: torch.Tensor) -> torch.Tensor:
    """(B, 3, S, S) -> (B, D) [CLS] of the context encoder: the last block in value-only mode, projected.

    The computation of ``RemoteCLIPContextEncoder.forward`` at the tower's own
    input size, with gradients (the encoder is frozen and runs without).
    """
    visual = model.visual
    x = visual.conv1(images).flatten(2).transpose(1, 2)  # (B, h * w, W)
    cls_token = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, x.shape[-1])
    x = visual.ln_pre(torch.cat([cls_token, x], dim=1) + visual.positional_embedding.to(x.dtype))
    blocks = visual.transformer.resblocks
    for block in blocks[:-1]:
        x = block(x)
    x = value_only_block(blocks[-1], x)
    return visual.ln_post(x[:, 0]) @ visual.proj


@torch.no_grad()
def scene_accuracy(model, tokenizer, seed: int, per_scene: int, size: int) -> dict[str, float]:
    """Zero-shot scene-type accuracy on held-out views, for open_clip's embedding and the context [CLS].

    A scene type's classifier: its names x ``SCENE_TEMPLATES``, averaged. Keys
    ``"scene"`` / ``"region"`` (open_clip's ``encode_image``) and
    ``"scene g"`` / ``"region g"`` (:func:`context_cls`).
    """
    model.eval()
    names, classes = scene_names(), scene_classes()
    keys = list(names)
    weights = []
    for key in keys:
        prompts = [t.format(n) for n in names[key] for t in SCENE_TEMPLATES]
        emb = model.encode_text(tokenizer(prompts), normalize=True).mean(0)
        weights.append(emb / emb.norm())
    weights = torch.stack(weights)
    rng = np.random.default_rng(seed)
    correct = collections.Counter()
    for label, key in enumerate(keys):
        for region in (False, True):
            views = to_tensor(
                [render_context_view(rng, key, classes[key], size, region) for _ in range(per_scene)], model
            )
            kind = "region" if region else "scene"
            for suffix, feats in (("", model.encode_image(views)), (" g", context_cls(model, views))):
                hits = (F.normalize(feats, dim=-1) @ weights.T).argmax(1).eq(label)
                correct[kind + suffix] += int(hits.sum())
    model.train()
    return {k: v / (len(keys) * per_scene) for k, v in sorted(correct.items())}


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


def render_cover_regions(rng: np.random.Generator, cover_names: list[str], num_scenes: int, size: int):
    """Land-cover scenes of the given covers -> images (S, H, W, 3) uint8 and per region (scene index,
    cover index, mask (H, W) bool), as :func:`render_regions`; a cover already drawn is dropped."""
    queue: collections.deque = collections.deque()
    images, regions, drawn = [], [], set()
    for scene in range(num_scenes):
        if len(drawn) == len(cover_names):
            break
        image, label, _ = render_semantic_scene(rng, size, size, queue, cover_names)
        images.append(image)
        for index in np.unique(label).tolist():
            if index in drawn:
                continue
            drawn.add(index)
            regions.append((scene, index, label == index))
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
def zero_shot_top1(
    model, tokenizer, concepts: dict[str, list[str]], seed: int, per_concept: int, size: int
) -> dict[str, float]:
    """Top-1 of held-out crops over all concepts, for the object and the land-cover concepts
    (keys ``"objects"``, ``"land cover"``); a concept's classifier: its names x templates, averaged."""
    model.eval()
    keys = list(concepts)
    weights = text_weights(model, tokenizer, concepts)
    rng = np.random.default_rng(seed)
    correct, total = collections.Counter(), collections.Counter()
    for label, key in enumerate(keys):
        crops = [render_crop(rng, drawing_name(key), size) for _ in range(per_concept)]
        feats = model.encode_image(to_tensor(crops, model), normalize=True)
        group = "land cover" if is_cover(key) else "objects"
        correct[group] += int((feats @ weights.T).argmax(1).eq(label).sum())
        total[group] += per_concept
    model.train()
    return {g: correct[g] / total[g] for g in sorted(total)}


@torch.no_grad()
def closest_concepts(model, tokenizer, concepts: dict[str, list[str]], count: int = 3):
    """The ``count`` most similar pairs of zero-shot classifier rows: (cosine, concept, concept)."""
    weights = text_weights(model, tokenizer, concepts)
    cosine = torch.triu(weights @ weights.T, diagonal=1)
    keys = list(concepts)
    values, flat = cosine.flatten().topk(count)
    return [(float(v), keys[i // len(keys)], keys[i % len(keys)]) for v, i in zip(values, flat.tolist())]


def caption(rng: np.random.Generator, names: list[str]) -> str:
    """A random template filled with a random name of the concept."""
    return TEMPLATES[rng.integers(len(TEMPLATES))].format(names[rng.integers(len(names))])


@torch.no_grad()
def zero_shot_region_top1(
    model, tokenizer, concepts: dict[str, list[str]], seed: int, size: int, rounds: int = 4
) -> dict[str, float]:
    """Top-1 over all concepts of mask-pooled regions of held-out scenes (the out-of-vocabulary path):
    objects of instance scenes and land-cover regions of land-cover scenes, keys as :func:`zero_shot_top1`."""
    model.eval()
    weights = text_weights(model, tokenizer, concepts)
    keys = list(concepts)
    rng = np.random.default_rng(seed)
    correct, total = collections.Counter(), collections.Counter()
    for _ in range(rounds):
        for group in ("objects", "land cover"):
            members = [i for i, k in enumerate(keys) if is_cover(k) == (group == "land cover")]
            if not members:
                continue
            order = [members[i] for i in rng.permutation(len(members))]
            names = [drawing_name(keys[i]) for i in order]
            if group == "objects":
                images, regions = render_regions(rng, names, 4 * len(names), size)
            else:
                images, regions = render_cover_regions(rng, names, 2 * len(names), size)
            feats, kept = region_features(model, to_tensor(list(images), model), regions)
            labels = torch.tensor([int(order[regions[i][1]]) for i in kept])
            correct[group] += int((feats @ weights.T).argmax(1).eq(labels).sum())
            total[group] += len(kept)
    model.train()
    return {g: correct[g] / total[g] for g in sorted(total)}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, help="state dict to write (open_clip format, fp16)")
    parser.add_argument(
        "--tower",
        default="objects",
        choices=("objects", "context"),
        help="objects: the ConvNeXt CLIP on object crops; context: the ViT context CLIP on scenes",
    )
    parser.add_argument(
        "--model",
        default=None,
        choices=sorted(TINY_CLIP_CONFIGS),
        help=f"tiny open_clip config to train (default {TINY_CONVNEXT} / {TINY_VIT} by --tower)",
    )
    parser.add_argument("--steps", type=int, default=None, help="optimiser steps (default 300 / 600)")
    parser.add_argument(
        "--batch", type=int, default=48, help="distinct concepts per batch (at most all; objects only)"
    )
    parser.add_argument(
        "--captions-per-image",
        type=int,
        default=1,
        help="objects only: captions drawn per crop and step, one ClipLoss term each (averaged)",
    )
    parser.add_argument(
        "--text-contrast",
        action="store_true",
        help="objects only: also a ClipLoss between consecutive caption sets (needs --captions-per-image 2+)",
    )
    parser.add_argument("--lr", type=float, default=2e-3, help="AdamW learning rate (cosine decay)")
    parser.add_argument(
        "--region-scenes",
        type=int,
        default=8,
        help="objects only: scenes per step whose mask-pooled object regions are trained too (0: crops only)",
    )
    parser.add_argument("--region-size", type=int, default=256, help="side of those scenes, pixels")
    parser.add_argument(
        "--cover-scenes",
        type=int,
        default=3,
        help="objects only: land-cover scenes per step whose mask-pooled regions are trained too",
    )
    parser.add_argument(
        "--no-land-cover",
        action="store_true",
        help="objects only: the object concepts of the instance splits alone (no semantic class names)",
    )
    parser.add_argument("--eval-per-concept", type=int, default=10, help="held-out crops per concept")
    parser.add_argument(
        "--eval-per-scene", type=int, default=25, help="held-out scenes and as many regions per scene type"
    )
    parser.add_argument("--seed", type=int, default=0, help="training seed; held-out data use seed + 1000")
    parser.add_argument(
        "--init", default=None, help="state dict to start from (a checkpoint of this script), not random"
    )
    parser.add_argument(
        "--new-words-only",
        action="store_true",
        help="objects only, with --init: train only the token embeddings of the words that no object "
        "caption holds; the image tower and the embedding of every object caption stay those of --init",
    )
    args = parser.parse_args(argv)
    if args.new_words_only and (args.init is None or args.tower != "objects" or args.no_land_cover):
        parser.error("--new-words-only needs --init, the objects tower and the land-cover concepts")
    if args.model is None:
        args.model = TINY_CONVNEXT if args.tower == "objects" else TINY_VIT
    if args.steps is None:
        args.steps = 300 if args.tower == "objects" else 600
    return args


def object_tokens(tokenizer, concepts: dict[str, list[str]]) -> torch.Tensor:
    """The token ids of every caption of the object concepts (all their names in all ``TEMPLATES``)."""
    objects = [names for key, names in concepts.items() if not is_cover(key)]
    return torch.unique(tokenizer([t.format(n) for names in objects for n in names for t in TEMPLATES]))


def land_cover_words(tokenizer, concepts: dict[str, list[str]]) -> torch.Tensor:
    """The token ids that land-cover names bring and no object caption holds (``water``, ``flooded``...)."""
    covers = [n for key, names in concepts.items() if is_cover(key) for n in names]
    words = torch.unique(tokenizer(covers))
    return words[~torch.isin(words, object_tokens(tokenizer, concepts))]


def train_new_words_only(model, tokenizer, concepts: dict[str, list[str]]) -> torch.nn.Parameter:
    """Freeze all but the token embeddings of words that no object caption holds; returns that parameter.

    The image tower, the text transformer and the rows of the words of object
    captions get no gradient, so what the detector computes for objects (its
    image features, the embedding of every object caption) stays bit-identical,
    while land-cover names, whose words are new, are trained in.
    """
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    embedding = model.token_embedding.weight
    words = land_cover_words(tokenizer, concepts)
    trainable = torch.zeros(embedding.shape[0], 1)
    trainable[words] = 1
    embedding.requires_grad_(True)
    embedding.register_hook(lambda grad: grad * trainable)
    logger.info("training the token embeddings of the %d new words of land-cover names only", len(words))
    return embedding


def _object_batch(rng, concepts, keys, batch_size, size):
    """Crops of distinct concepts (``batch_size`` object concepts and every land-cover concept), one
    caption each, and the concepts' indices."""
    crops, captions = [], []
    objects = [i for i, k in enumerate(keys) if not is_cover(k)]
    covers = [i for i, k in enumerate(keys) if is_cover(k)]
    chosen = np.concatenate(
        [rng.choice(objects, size=min(batch_size, len(objects)), replace=False), covers]
    ).astype(int)
    for i in chosen:
        names = concepts[keys[i]]
        crops.append(render_crop(rng, drawing_name(keys[i]), size))
        captions.append(TEMPLATES[rng.integers(len(TEMPLATES))].format(names[rng.integers(len(names))]))
    return crops, captions, chosen


def _scene_batch(rng, names, classes, size):
    """One view (whole scene or region, even odds) of every scene type and one caption each."""
    views, captions = [], []
    for key in rng.permutation(list(names)):
        views.append(render_context_view(rng, key, classes[key], size, region=bool(rng.random() < 0.5)))
        options = names[key]
        captions.append(
            SCENE_TEMPLATES[rng.integers(len(SCENE_TEMPLATES))].format(options[rng.integers(len(options))])
        )
    return views, captions


def main(argv=None) -> float:
    """Train, evaluate and write the checkpoint; returns the held-out zero-shot top-1 (objects) or
    the context [CLS]'s scene-type accuracy on held-out whole scenes (context)."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.manual_seed(args.seed)
    model = open_clip.create_model(args.model)
    if args.init:
        # Go on from a checkpoint (fp16 on disk): new concepts are trained in while every
        # batch keeps holding the old ones, so that they are not forgotten.
        state = torch.load(args.init, map_location="cpu", weights_only=True)
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
        logger.info("initialised from %s", args.init)
    tokenizer = open_clip.get_tokenizer(args.model)
    size = (
        model.visual.image_size[0] if isinstance(model.visual.image_size, tuple) else model.visual.image_size
    )
    context = args.tower == "context"
    if context:
        names, classes = scene_names(), scene_classes()
        logger.info("%d scene types: %s", len(names), ", ".join(names))
    else:
        concepts = concept_names(land_cover=not args.no_land_cover)
        keys = list(concepts)
        logger.info("%d concepts from %d class names", len(keys), sum(len(v) for v in concepts.values()))
    loss_fn = open_clip.ClipLoss()
    if args.new_words_only:
        # Rows without gradient and without weight decay are left exactly as they are by AdamW.
        param_groups = [{"params": [train_new_words_only(model, tokenizer, concepts)], "weight_decay": 0.0}]
    else:
        # As open_clip's training does: no weight decay on gains, biases and the logit scale.
        decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "logit_scale" not in n]
        no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "logit_scale" in n]
        param_groups = [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(param_groups, lr=args.lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=args.steps, pct_start=0.05)
    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    model.train()
    for step in range(args.steps):
        if context:
            images, captions = _scene_batch(rng, names, classes, size)
        else:
            images, captions, chosen = _object_batch(rng, concepts, keys, args.batch, size)
        images = to_tensor(images, model)
        image_features, text_features, logit_scale = model(images, tokenizer(captions))
        loss = loss_fn(image_features, text_features, logit_scale)
        if not context and args.captions_per_image > 1:
            # More captions of the same crops: the text tower sees more of each concept's
            # names and templates per step for little more than the cost of its forward.
            # With --text-contrast, captions of one concept are also contrasted with those
            # of the others (ClipLoss between two caption sets), which spreads the classifier
            # rows of concepts that the image term leaves nearly parallel.
            terms, previous = 1, text_features
            for _ in range(args.captions_per_image - 1):
                more = model.encode_text(
                    tokenizer([caption(rng, concepts[keys[i]]) for i in chosen]), normalize=True
                )
                loss = loss + loss_fn(image_features, more, logit_scale)
                terms += 1
                if args.text_contrast:
                    loss = loss + loss_fn(previous, more, logit_scale)
                    terms += 1
                previous = more
            loss = loss / terms
        if context:
            g = F.normalize(context_cls(model, images), dim=-1)
            loss = loss + loss_fn(g, text_features, logit_scale)
        elif args.region_scenes:
            # The detector pools the trunk's dense map inside masks of whole scenes
            # (out-of-vocabulary term): train that path too, on distinct concepts: objects of
            # instance scenes and land-cover regions of land-cover scenes, in one ClipLoss.
            objects = [i for i, k in enumerate(keys) if not is_cover(k)]
            covers = [i for i, k in enumerate(keys) if is_cover(k)]
            batch = rng.choice(objects, size=min(args.batch, len(objects)), replace=False)
            scenes, regions = render_regions(
                rng, [drawing_name(keys[i]) for i in batch], args.region_scenes, args.region_size
            )
            region_feats, kept = region_features(model, to_tensor(list(scenes), model), regions)
            region_keys = [int(batch[regions[i][1]]) for i in kept]
            if covers and args.cover_scenes:
                order = [covers[i] for i in rng.permutation(len(covers))]
                scenes, regions = render_cover_regions(
                    rng, [drawing_name(keys[i]) for i in order], args.cover_scenes, args.region_size
                )
                cover_feats, cover_kept = region_features(model, to_tensor(list(scenes), model), regions)
                region_feats = torch.cat([region_feats, cover_feats])
                region_keys += [order[regions[i][1]] for i in cover_kept]
            region_text = model.encode_text(
                tokenizer([caption(rng, concepts[keys[i]]) for i in region_keys]), normalize=True
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
    if context:
        accuracy = scene_accuracy(model, tokenizer, args.seed + 1000, args.eval_per_scene, size)
        logger.info(
            "zero-shot scene-type accuracy over %d types on held-out views (chance %.1f %%): %s",
            len(names),
            100 / len(names),
            ", ".join(f"{k} {100 * v:.1f} %" for k, v in accuracy.items()),
        )
        result = accuracy["scene g"]
    else:
        crops = zero_shot_top1(model, tokenizer, concepts, args.seed + 1000, args.eval_per_concept, size)
        logger.info(
            "zero-shot top-1 over all %d concepts on held-out crops: %s",
            len(keys), ", ".join(f"{g} {100 * v:.1f} %" for g, v in crops.items()),
        )  # fmt: skip
        regions = zero_shot_region_top1(model, tokenizer, concepts, args.seed + 1000, args.region_size)
        logger.info(
            "zero-shot top-1 over all %d concepts of mask-pooled regions of held-out scenes: %s",
            len(keys), ", ".join(f"{g} {100 * v:.1f} %" for g, v in regions.items()),
        )  # fmt: skip
        result = crops["objects"]
        logger.info(
            "closest classifier rows (cosine): %s",
            ", ".join(f"{a} / {b} {v:.3f}" for v, a, b in closest_concepts(model, tokenizer, concepts)),
        )
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    torch.save(state, args.out)
    logger.info(
        "wrote %s (%.1f MB) in %.0f s",
        args.out,
        sum(v.numel() * v.element_size() for v in state.values()) / 1e6,
        time.perf_counter() - start,
    )
    return result


if __name__ == "__main__":
    main()
