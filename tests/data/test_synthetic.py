"""The synthetic-data generator (synthetic_world/scenes.py and tools/make_synthetic_datasets.py)."""

import score  # noqa: F401, I001  (first: its shims let detectron2.data import on numpy>=1.24, Pillow>=10)

# isort: split
import collections
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from detectron2.structures import polygons_to_bitmask

from score.data.datasets import FAST_CLASSES, ISAID_CLASSES, SPLITS
from synthetic_world.scenes import (
    CONCEPTS,
    SCENE_TYPES,
    draw_object,
    draw_surround,
    recipe_for,
    render_scene,
    scene_types_of,
    write_split,
    write_synthetic_datasets,
)
from tests.conftest import load_script

REPO = Path(__file__).resolve().parents[2]
SPLIT = {s.name: s for s in SPLITS}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic_datasets(str(root), num_train=3, num_val=2, min_size=128, max_size=192, seed=3)
    return root


def test_layout_and_categories(small_root):
    for split in SPLITS:
        coco = json.loads((small_root / split.json_file).read_text())
        assert [c["name"] for c in coco["categories"]] == list(split.class_names)
        assert [c["id"] for c in coco["categories"]] == list(range(1, len(split.class_names) + 1))
        assert len(coco["images"]) == (3 if split.subset == "train" else 2)
        for image in coco["images"]:
            pixels = cv2.imread(str(small_root / split.image_dir / image["file_name"]))
            assert pixels.shape == (image["height"], image["width"], 3)
            assert 128 <= image["height"] <= 192 and 128 <= image["width"] <= 192


def test_annotations_are_consistent_polygons(small_root):
    coco = json.loads((small_root / SPLIT["sior_train_instance"].json_file).read_text())
    sizes = {im["id"]: (im["height"], im["width"]) for im in coco["images"]}
    per_image = {i: 0 for i in sizes}
    masks: dict[int, list[np.ndarray]] = {i: [] for i in sizes}
    for ann in coco["annotations"]:
        h, w = sizes[ann["image_id"]]
        per_image[ann["image_id"]] += 1
        assert ann["iscrowd"] == 0 and 1 <= ann["category_id"] <= 20
        (polygon,) = ann["segmentation"]
        xy = np.array(polygon).reshape(-1, 2)
        assert (xy >= 0).all() and (xy[:, 0] <= w).all() and (xy[:, 1] <= h).all()
        x, y, bw, bh = ann["bbox"]
        assert np.allclose([x, y, x + bw, y + bh], [*xy.min(0), *xy.max(0)], atol=0.02)
        mask = polygons_to_bitmask(ann["segmentation"], h, w)
        assert mask.shape == (h, w)
        assert ann["area"] == pytest.approx(mask.sum(), rel=0.02)
        masks[ann["image_id"]].append(mask)
    assert min(per_image.values()) >= 1 and max(per_image.values()) >= 2
    for image_masks in masks.values():  # objects never overlap
        assert np.stack(image_masks).sum(0).max() == 1


def test_same_seed_same_bytes_and_subsets_match(tmp_path):
    kwargs = dict(num_train=2, num_val=2, min_size=64, max_size=128, seed=7)
    write_synthetic_datasets(str(tmp_path / "a"), **kwargs)
    write_synthetic_datasets(str(tmp_path / "b"), **kwargs)
    a = _files(tmp_path / "a")
    assert a == _files(tmp_path / "b")
    assert any(k.endswith(".png") for k in a) and len([k for k in a if k.endswith(".json")]) == 7
    write_synthetic_datasets(str(tmp_path / "c"), **kwargs, splits=["nwpu_val_instance"])
    assert all(a[k] == v for k, v in _files(tmp_path / "c").items())
    write_synthetic_datasets(str(tmp_path / "d"), **{**kwargs, "seed": 8}, splits=["nwpu_val_instance"])
    assert _files(tmp_path / "d") != _files(tmp_path / "c")


def test_every_class_appears_when_there_is_room(tmp_path):
    coco = write_split(SPLIT["fast_val_instance"], str(tmp_path), 14, min_size=256, max_size=320)
    assert len(coco["annotations"]) >= 37
    assert {a["category_id"] for a in coco["annotations"]} == set(range(1, 38))


def test_every_object_belongs_to_the_scene_type_of_its_image(tmp_path):
    split = SPLIT["fast_val_instance"]
    coco = write_split(split, str(tmp_path), 14, min_size=256, max_size=320)
    scene_of = {im["id"]: im["scene_type"] for im in coco["images"]}
    assert set(scene_of.values()) <= set(SCENE_TYPES) and len(set(scene_of.values())) >= 3
    for ann in coco["annotations"]:
        name = split.class_names[ann["category_id"] - 1]
        assert scene_of[ann["image_id"]] in scene_types_of(name), name


def test_scene_types_of_names_by_concept_keyword_and_family():
    assert scene_types_of("ship") == scene_types_of("Tugboat") == ("harbour",)
    assert scene_types_of("A330") == scene_types_of("plane") == ("airport",)
    assert scene_types_of("dam") == scene_types_of("windmill") == ("farmland",)
    assert "parking lot" in scene_types_of("Small_Vehicle") and "parking lot" in scene_types_of("Bus")
    assert scene_types_of("storage_tank") == ("storage depot",)
    unknown = scene_types_of("lighthouse keeper")
    assert len(unknown) == 1 and unknown[0] in SCENE_TYPES and unknown == scene_types_of("Lighthouse-Keeper")


def test_scene_types_have_their_own_ground():
    rng = np.random.default_rng(0)
    names = ["ship", "Harbor", "plane", "Small_Vehicle"]

    def water_fraction(scene_type):
        scene = render_scene(rng, 256, 256, collections.deque(), names, scene_type=scene_type)
        assert scene.scene_type == scene_type and scene.objects
        return (np.abs(scene.image.astype(float) - np.array([38, 72, 112])).max(-1) < 25).mean()

    # A harbour's water body covers much of the image (shoreline through its middle fifth or so).
    assert min(water_fraction("harbour") for _ in range(4)) > 0.2
    assert max(water_fraction(t) for t in ("airport", "parking lot") for _ in range(2)) < 0.05
    # A scene type that none of the classes belongs to holds no object.
    empty = render_scene(rng, 128, 128, collections.deque(), ["ship"], scene_type="airport")
    assert empty.objects == [] and empty.scene_type == "airport"


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown splits"):
        write_synthetic_datasets(str(tmp_path), splits=["coco_2017_val"])
    with pytest.raises(ValueError, match="min_size <= max_size"):
        write_split(SPLIT["nwpu_val_instance"], str(tmp_path), 1, min_size=300, max_size=200)
    with pytest.raises(ValueError, match="unknown scene type 'moon base'"):
        render_scene(np.random.default_rng(0), 64, 64, collections.deque(), ["ship"], scene_type="moon base")


def test_names_of_one_meaning_render_alike():
    assert recipe_for("plane") == recipe_for("airplane") == recipe_for("other-airplane") == CONCEPTS["plane"]
    vehicles = {recipe_for(n) for n in ("Small_Vehicle", "vehicle", "small-vehicle", "Small-Car")}
    assert vehicles == {CONCEPTS["small vehicle"]}
    assert recipe_for("ship") == recipe_for("other-ship") == CONCEPTS["ship"]
    assert recipe_for("storage_tank") == recipe_for("storage tank") == recipe_for("storage-tank")
    assert recipe_for("Baseball-Field") == recipe_for("baseball_diamond")


@pytest.mark.parametrize(
    "a, b", [("ship", "small vehicle"), ("tennis court", "basketball court"), ("storage tank", "roundabout")]
)
def test_context_pairs_share_the_object_and_differ_in_surround(a, b):
    ra, rb = CONCEPTS[a], CONCEPTS[b]
    assert (ra.shape, ra.color, ra.length, ra.aspect) == (rb.shape, rb.color, rb.length, rb.aspect)
    assert ra.surround != rb.surround


def test_hashed_recipes_are_deterministic_and_keep_their_family():
    assert recipe_for("Tugboat") == recipe_for("tugboat")
    assert (recipe_for("Tugboat").shape, recipe_for("Tugboat").surround) == ("hull", "water")
    assert (recipe_for("Dump-Truck").shape, recipe_for("Dump-Truck").surround) == ("box", "road")
    assert (recipe_for("A330").shape, recipe_for("Boeing747").surround) == ("aircraft", "apron")
    assert recipe_for("A330").color != recipe_for("A350").color


def test_every_class_is_drawable():
    names = {n for s in SPLITS for n in s.class_names}
    for name in sorted(names):
        recipe = recipe_for(name)
        canvas = np.zeros((160, 160, 3), np.uint8)
        draw_surround(canvas, recipe, (80.0, 80.0), 40.0, 0.3)
        outline = draw_object(canvas, recipe, (80.0, 80.0), 40.0, 0.3)
        mask = polygons_to_bitmask([outline.reshape(-1)], 160, 160)
        assert mask.sum() > 100, name
        assert canvas[mask].any(), name


def _interior_and_ring(mask: np.ndarray, inset: int = 1, ring: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Pixels ``inset`` inside the mask (clear of anti-aliased edges) and a band ``ring`` wide around it."""
    m = mask.astype(np.uint8)
    interior = cv2.erode(m, np.ones((2 * inset + 1,) * 2, np.uint8))
    around = cv2.dilate(m, np.ones((2 * ring + 1,) * 2, np.uint8)) - m
    return interior.astype(bool), around.astype(bool)


def test_ship_and_vehicle_pixels_are_identical_only_the_surround_differs():
    rng = np.random.default_rng(0)
    background = rng.integers(100, 160, size=(200, 200, 3), dtype=np.uint8)
    canvases = []
    for concept in ("ship", "small vehicle"):
        canvas = background.copy()
        draw_surround(canvas, CONCEPTS[concept], (100.0, 100.0), 60.0, 0.7)
        outline = draw_object(canvas, CONCEPTS[concept], (100.0, 100.0), 60.0, 0.7)
        canvases.append(canvas)
    interior, ring = _interior_and_ring(polygons_to_bitmask([outline.reshape(-1)], 200, 200), inset=2)
    assert interior.sum() > 200
    assert np.array_equal(canvases[0][interior], canvases[1][interior])
    ring_gap = np.abs(canvases[0][ring].astype(float).mean(0) - canvases[1][ring].astype(float).mean(0))
    assert ring_gap.max() > 30


def test_generated_ships_and_vehicles_differ_only_by_surround(tmp_path):
    split = SPLIT["isaid_train_instance"]
    coco = write_split(split, str(tmp_path), 24, min_size=256, max_size=320, seed=5)
    ship, vehicle = ISAID_CLASSES.index("ship") + 1, ISAID_CLASSES.index("Small_Vehicle") + 1
    images = {im["id"]: im for im in coco["images"]}
    pixels = {ship: ([], []), vehicle: ([], [])}
    for ann in coco["annotations"]:
        if ann["category_id"] not in pixels:
            continue
        im = images[ann["image_id"]]
        rgb = cv2.cvtColor(cv2.imread(str(tmp_path / split.image_dir / im["file_name"])), cv2.COLOR_BGR2RGB)
        interior, ring = _interior_and_ring(
            polygons_to_bitmask(ann["segmentation"], im["height"], im["width"])
        )
        pixels[ann["category_id"]][0].append(rgb[interior])
        pixels[ann["category_id"]][1].append(rgb[ring])
    assert min(len(pixels[ship][0]), len(pixels[vehicle][0])) >= 3
    # Pooled over instances: the median is the hull's body colour (the cabin is the same in both too).
    inside = [np.median(np.concatenate(pixels[c][0]).astype(float), axis=0) for c in (ship, vehicle)]
    around = [np.concatenate(pixels[c][1]).astype(float).mean(0) for c in (ship, vehicle)]
    assert np.abs(inside[0] - inside[1]).max() <= 4
    assert np.abs(around[0] - around[1]).max() > 20


def test_fast_class_list_is_covered_by_recipes():
    concepts = {recipe_for(n).concept for n in FAST_CLASSES}
    assert len(concepts) == len(FAST_CLASSES)  # fine-grained classes stay distinct


def test_command_line_tool(tmp_path):
    tool = load_script("tools/make_synthetic_datasets.py")
    tool.main(
        ["--root", str(tmp_path), "--splits", "nwpu_val_instance", "--num-val", "2", "--max-size", "300"]
    )
    coco = json.loads((tmp_path / "NWPU/instances_val.json").read_text())
    assert len(coco["images"]) == 2
    assert len(list((tmp_path / "NWPU/image_patches").glob("*.png"))) == 2
    assert not (tmp_path / "iSAID").exists()


# ---------------------------------------------------------------------------
# Land-cover scenes and the semantic splits (synthetic_world/landcover.py).


@pytest.fixture(scope="module")
def semantic_root(tmp_path_factory):
    from synthetic_world.landcover import write_semantic_datasets

    root = tmp_path_factory.mktemp("synthetic_semantic")
    write_semantic_datasets(str(root), num_train=6, num_val=3, min_size=96, max_size=128, seed=3)
    return root


def test_semantic_splits_load_through_the_registered_splits(semantic_root, monkeypatch):
    """Every split in its registered layout; every pixel labelled with a class value or an ignore value."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from score.data.datasets import SEM_SEG_SPLITS
    from score.data.labels import LabelEncoding, read_label

    monkeypatch.setenv("DETECTRON2_DATASETS", str(semantic_root))
    for split in SEM_SEG_SPLITS:
        records = DatasetCatalog.get(split.name)
        assert len(records) == (6 if split.subset == "train" else 3), split.name
        encoding = LabelEncoding.from_metadata(MetadataCatalog.get(split.name))
        seen_values = set()
        for record in records:
            assert record["file_name"].startswith(str(semantic_root / split.image_dir) + "/")
            assert record["file_name"].endswith("." + split.image_ext)
            assert record["sem_seg_file_name"].startswith(str(semantic_root / split.label_dir) + "/")
            label = read_label(record["sem_seg_file_name"])
            assert label.dtype == np.uint8 and label.ndim == 2
            assert label.shape == (record["height"], record["width"])
            assert 96 <= label.shape[0] <= 128 and 96 <= label.shape[1] <= 128
            assert not encoding.unknown_values(label), (split.name, encoding.unknown_values(label))
            seen_values |= set(np.unique(label).tolist())
        # A split with land cover is labelled everywhere with its classes (ignored values
        # like FLAIR's "other" are still painted, never left empty); FAST's background is 255.
        if split.family == "fast":
            assert 255 in seen_values and len(seen_values) > 2
        else:
            assert 255 not in seen_values and len(seen_values) >= 3, (split.name, seen_values)


def test_semantic_split_names_and_ignored_values():
    from score.data.datasets import SEM_SEG_SPLITS
    from synthetic_world.landcover import cover_for, painted_names

    by_family = {s.family: s for s in SEM_SEG_SPLITS}
    assert painted_names(by_family["flair"])[12] == "other"
    assert painted_names(by_family["potsdam"])[5] == "clutter"
    assert painted_names(by_family["floodnet"])[0] == "Background"
    # Land cover is land cover under every spelling; objects are not.
    for name in (
        "bare soil",
        "impervious surface",
        "low vegetation",
        "road-non-flooded",
        "building,buildings",
    ):
        assert cover_for(name) is not None, name
    for name in ("car", "pool", "vehicle", "Small-Car", "plane"):
        assert cover_for(name) is None, name
    assert cover_for("bare soil") == cover_for("bare land")
    assert cover_for("road-non-flooded") == cover_for("road") != cover_for("road-flooded")


def test_land_cover_families_differ_and_vary(tmp_path):
    """Each cover's texture statistics are its own (colour and local contrast), and vary per image."""
    from synthetic_world.landcover import COVERS, paint_cover

    rng = np.random.default_rng(0)
    stats = {}
    for name, cover in COVERS.items():
        patches = [paint_cover(rng, cover, 48, 48) for _ in range(3)]
        means = np.array([p.reshape(-1, 3).mean(0) for p in patches])
        assert np.ptp(means, axis=0).max() > 1.0, name  # within-class variation
        detail = np.mean([np.abs(np.diff(p.mean(-1), axis=1)).mean() for p in patches])
        stats[name] = np.concatenate([means.mean(0), [4 * detail]])
    names = list(stats)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert np.abs(stats[a] - stats[b]).max() > 6.0, (a, b, stats[a], stats[b])


def test_semantic_scenes_follow_their_scene_type_and_seed():
    from score.data.datasets import LANDDISCOVER_CLASSES
    from synthetic_world.landcover import _scene_types, render_semantic_scene

    for seed in range(4):
        a = render_semantic_scene(
            np.random.default_rng(seed), 96, 112, collections.deque(), LANDDISCOVER_CLASSES
        )
        b = render_semantic_scene(
            np.random.default_rng(seed), 96, 112, collections.deque(), LANDDISCOVER_CLASSES
        )
        assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label)
        assert a.image.shape == (96, 112, 3) and a.label.shape == (96, 112)
        for value in np.unique(a.label):
            assert a.scene_type in _scene_types(LANDDISCOVER_CLASSES[value]), (a.scene_type, value)


def test_command_line_tool_semantic(tmp_path):
    module = load_script("tools/make_synthetic_datasets.py")
    module.main(["--root", str(tmp_path), "--semantic", "--splits", "potsdam_val_sem_seg", "--num-val", "2",
                 "--min-size", "64", "--max-size", "80"])  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "PotsdamSplit" / "ann_dir" / "val").iterdir()) == [
        "000001.png",
        "000002.png",
    ]
    with pytest.raises(SystemExit):
        module.main(["--root", str(tmp_path), "--semantic", "--splits", "isaid_val_instance"])
