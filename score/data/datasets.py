"""The SCORE splits (DATASETS.md), registered in detectron2's catalogs.

Instance splits (COCO JSON) are in ``SPLITS``; the semantic-segmentation
splits of the paper's appendix A.2 (label PNGs) are in ``SEM_SEG_SPLITS``,
described at that table.

One table (``SPLITS``) lists every split: its registered name, the image folder
and COCO instance JSON relative to the dataset root, its class names in
category-id order (spelled as the authors' registrations spell them) and the
family it belongs to (isaid, sior, nwpu, sota, fast). One loop registers them.

The root is detectron2's convention, the environment variable
``DETECTRON2_DATASETS`` (default ``datasets``). It is read when a split is
*loaded*, so a script or test may set it after ``import score``; the metadata
also exposes ``image_root`` and ``json_file`` computed at registration, and is
refreshed when a load resolves a different root. ``register_all(root)``
re-registers every split under an explicit root.

Metadata of every split: ``thing_classes``, ``evaluator_type`` ("coco"),
``json_file``, ``image_root``, ``dataset_family`` and ``ensemble_exponents``
(training family -> (alpha, beta), the exponents the authors tuned per target
set; DATASETS.md). After a load, ``thing_dataset_id_to_contiguous_id`` too.

Loading uses detectron2's ``load_coco_json`` (polygons and RLE) and then checks
the annotation file's categories against the registered class list after the
normalisation of SCORE.md 7.2: a mismatch is an error that names both lists.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Callable, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json
from PIL import Image

from ..vocabulary import canonical_class_name
from .labels import LabelEncoding

__all__ = [
    "FAST_CLASSES",
    "FAST_SEM_CLASSES",
    "FLAIR_CLASSES",
    "FLOODNET_CLASSES",
    "LANDDISCOVER_CLASSES",
    "POTSDAM_CLASSES",
    "SEM_SEG_ENSEMBLE_EXPONENTS",
    "SEM_SEG_SPLITS",
    "SemSegSplitSpec",
    "load_sem_seg_records",
    "register_sem_seg_dataset",
    "ISAID_CLASSES",
    "NWPU_CLASSES",
    "SIOR_CLASSES",
    "SOTA_CLASSES",
    "ENSEMBLE_EXPONENTS",
    "SPLITS",
    "SplitSpec",
    "dataset_root",
    "ensemble_exponents",
    "load_instance_json",
    "register_all",
    "register_all_sem_seg",
    "register_instance_dataset",
]

logger = logging.getLogger(__name__)

ISAID_CLASSES = (
    "ship", "storage_tank", "baseball_diamond", "tennis_court", "basketball_court",
    "Ground_Track_Field", "Bridge", "Large_Vehicle", "Small_Vehicle", "Helicopter",
    "Swimming_pool", "Roundabout", "Soccer_ball_field", "plane", "Harbor",
)  # fmt: skip
SIOR_CLASSES = (
    "airplane", "airport", "baseball field", "basketball court", "bridge", "chimney",
    "expressway-service-area", "expressway-toll-station", "dam", "golffield", "ground track field",
    "harbor", "overpass", "ship", "stadium", "storage tank", "tennis court", "train station",
    "vehicle", "windmill",
)  # fmt: skip
NWPU_CLASSES = (
    "airplane", "ship", "storage_tank", "baseball_diamond", "tennis_court", "basketball_court",
    "ground_track_field", "harbor", "bridge", "vehicle",
)  # fmt: skip
SOTA_CLASSES = (
    "large-vehicle", "swimming-pool", "helicopter", "bridge", "plane", "ship", "soccer-ball-field",
    "basketball-court", "ground-track-field", "small-vehicle", "baseball-diamond", "tennis-court",
    "roundabout", "storage-tank", "harbor", "container-crane", "airport", "helipad",
)  # fmt: skip
FAST_CLASSES = (
    "A220", "A321", "A330", "A350", "ARJ21", "Baseball-Field", "Basketball-Court", "Boeing737",
    "Boeing747", "Boeing777", "Boeing787", "Bridge", "Bus", "C919", "Cargo-Truck", "Dry-Cargo-Ship",
    "Dump-Truck", "Engineering-Ship", "Excavator", "Fishing-Boat", "Football-Field", "Intersection",
    "Liquid-Cargo-Ship", "Motorboat", "other-airplane", "other-ship", "other-vehicle",
    "Passenger-Ship", "Roundabout", "Small-Car", "Tennis-Court", "Tractor", "Trailer",
    "Truck-Tractor", "Tugboat", "Van", "Warship",
)  # fmt: skip

# Target family -> {training family: (alpha, beta)}: the geometric-ensemble
# exponents (SCORE.md 7.3) the authors tuned per target set (DATASETS.md).
ENSEMBLE_EXPONENTS: dict[str, dict[str, tuple[float, float]]] = {
    "nwpu": {"isaid": (0.4, 0.4), "sior": (0.2, 0.6)},
    "sota": {"isaid": (0.0, 0.4), "sior": (0.0, 0.2)},
    "fast": {"isaid": (0.2, 0.2), "sior": (0.2, 0.4)},
    "sior": {"isaid": (0.4, 0.4)},
    "isaid": {"sior": (0.2, 0.2)},
}

_DATA_HINT = (
    "Get the benchmark data from the Hugging Face dataset HuangShiqi008/SCORE (layout: datasets/README.md) "
    "and point DETECTRON2_DATASETS at its root, or write synthetic data in the same layout with "
    "`python tools/make_synthetic_datasets.py --root DIR` and set DETECTRON2_DATASETS=DIR."
)


@dataclass(frozen=True)
class SplitSpec:
    """One row of the split table; paths are relative to the dataset root."""

    name: str
    family: str
    subset: str  # "train" or "val"
    image_dir: str
    json_file: str
    class_names: tuple[str, ...]


SPLITS: tuple[SplitSpec, ...] = (
    SplitSpec("isaid_train_instance", "isaid", "train", "iSAID/train/images",
              "iSAID/train/instances_train.json", ISAID_CLASSES),
    SplitSpec("isaid_val_instance", "isaid", "val", "iSAID/val/images",
              "iSAID/val/instances_val.json", ISAID_CLASSES),
    SplitSpec("sior_train_instance", "sior", "train", "SIOR/train/images",
              "SIOR/train/instances_train.json", SIOR_CLASSES),
    SplitSpec("sior_val_instance", "sior", "val", "SIOR/val/images",
              "SIOR/val/instances_val.json", SIOR_CLASSES),
    SplitSpec("nwpu_val_instance", "nwpu", "val", "NWPU/image_patches",
              "NWPU/instances_val.json", NWPU_CLASSES),
    SplitSpec("sota_val_instance", "sota", "val", "SOTA/val/images",
              "SOTA/val/instances_val.json", SOTA_CLASSES),
    SplitSpec("fast_val_instance", "fast", "val", "FAST/val/images",
              "FAST/val/instances_val.json", FAST_CLASSES),
)  # fmt: skip


def dataset_root() -> str:
    """The dataset root: ``$DETECTRON2_DATASETS``, default ``datasets``."""
    return os.environ.get("DETECTRON2_DATASETS", "datasets")


def _check_paths(name: str, image_root: str, json_file: str) -> None:
    env = os.environ.get("DETECTRON2_DATASETS")
    env_text = f"DETECTRON2_DATASETS={env!r}" if env else "DETECTRON2_DATASETS unset, default 'datasets'"
    root = os.path.abspath(env or "datasets")
    if not os.path.isdir(root) and os.path.abspath(json_file).startswith(root + os.sep):
        env_text += f", a folder that does not exist (working directory {os.getcwd()})"
    for kind, path, exists in (
        ("annotation file", json_file, os.path.isfile(json_file)),
        ("image folder", image_root, os.path.isdir(image_root)),
    ):
        if not exists:
            raise FileNotFoundError(f"Dataset '{name}': {kind} not found: {path} ({env_text}). {_DATA_HINT}")


def _check_categories(json_file: str, file_classes: Sequence[str], class_names: Sequence[str]) -> None:
    got = [canonical_class_name(c) for c in file_classes]
    want = [canonical_class_name(c) for c in class_names]
    if got == want:
        return
    first = next((i for i, (g, w) in enumerate(zip(got, want)) if g != w), min(len(got), len(want)))
    at_file = file_classes[first] if first < len(file_classes) else "<none>"
    at_reg = class_names[first] if first < len(class_names) else "<none>"
    raise ValueError(
        f"Categories of {json_file} do not match the registered class list.\n"
        f"  file ({len(file_classes)}, id order): {list(file_classes)}\n"
        f"  registered ({len(class_names)}): {list(class_names)}\n"
        f"  first difference at position {first}: file {at_file!r} vs registered {at_reg!r} "
        "(compared after lower-casing and reading '_' and '-' as spaces)"
    )


def load_instance_json(
    name: str, image_root: str, json_file: str, class_names: Sequence[str]
) -> tuple[list[dict], dict[int, int]]:
    """Load a COCO instance JSON and check its categories against ``class_names``.

    Args:
        name: dataset name, used in error messages.
        image_root: folder of the images named in the JSON.
        json_file: COCO instance annotations (polygons or RLE).
        class_names: expected class names in category-id order.

    Returns:
        detectron2 dataset dicts with contiguous ``category_id`` in [0, K), and
        the map from the file's category ids to those contiguous ids.
    """
    _check_paths(name, image_root, json_file)
    # load_coco_json writes the file's class names and id map into the metadata
    # of the name it is given and refuses to overwrite different values there;
    # a scratch entry lets us compare spellings by their normalised form instead.
    scratch = f"__score_file_categories__/{name}"
    MetadataCatalog.pop(scratch, None)
    try:
        # The annotation ids travel along so that the validation
        # (score/data/validation.py) can name bad annotations.
        dicts = load_coco_json(json_file, image_root, dataset_name=scratch, extra_annotation_keys=["id"])
        file_meta = MetadataCatalog.get(scratch)
        file_classes = list(file_meta.thing_classes)
        id_map = dict(file_meta.thing_dataset_id_to_contiguous_id)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"Dataset '{name}': annotation file {json_file} is not valid JSON: {e}") from e
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(
            f"Dataset '{name}': annotation file {json_file} is not COCO instance JSON "
            f"({type(e).__name__}: {e})"
        ) from e
    finally:
        MetadataCatalog.pop(scratch, None)
    _check_categories(json_file, file_classes, class_names)
    return dicts, id_map


def _sync_metadata(name: str, **values) -> None:
    """Set metadata values; an entry holding a different value is replaced, as detectron2 forbids overwriting.

    A value differs when the root read at load time is not the one read at
    registration: the metadata then follows the files actually loaded, so that
    evaluators read the same annotation file.
    """
    meta = MetadataCatalog.get(name)
    stale = {k: v for k, v in values.items() if hasattr(meta, k) and getattr(meta, k) != v}
    if not stale:
        meta.set(**values)
        return
    logger.info("Metadata of %s now follows the files loaded: %s", name, stale)
    merged = {k: v for k, v in meta.as_dict().items() if k != "name"}
    merged.update(values)
    MetadataCatalog.remove(name)
    MetadataCatalog.get(name).set(**merged)


def _register(
    name: str,
    paths: Callable[[], tuple[str, str]],
    class_names: Sequence[str],
    metadata: dict,
) -> None:
    def load() -> list[dict]:
        image_root, json_file = paths()
        dicts, id_map = load_instance_json(name, image_root, json_file, class_names)
        _sync_metadata(
            name, image_root=image_root, json_file=json_file, thing_dataset_id_to_contiguous_id=id_map
        )
        return dicts

    image_root, json_file = paths()
    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(
        thing_classes=list(class_names),
        image_root=image_root,
        json_file=json_file,
        evaluator_type="coco",
        **metadata,
    )


def register_instance_dataset(
    name: str, image_root: str, json_file: str, class_names: Sequence[str], **metadata
) -> None:
    """Register a COCO instance dataset whose categories must match ``class_names``.

    Args:
        name: name in DatasetCatalog / MetadataCatalog; must not be registered yet.
        image_root: folder of the images.
        json_file: COCO instance JSON (polygons or RLE); checked when loaded.
        class_names: class names in category-id order; become ``thing_classes``.
        metadata: extra metadata (e.g. ``dataset_family``, ``ensemble_exponents``).
    """
    paths = (os.fspath(image_root), os.fspath(json_file))
    _register(name, lambda: paths, class_names, metadata)


def _split_paths(split: SplitSpec, root: str | None) -> Callable[[], tuple[str, str]]:
    def paths() -> tuple[str, str]:
        base = dataset_root() if root is None else root
        return os.path.join(base, split.image_dir), os.path.join(base, split.json_file)

    return paths


def register_all(root: str | None = None) -> None:
    """(Re-)register the seven splits of ``SPLITS``.

    Args:
        root: dataset root; None reads ``$DETECTRON2_DATASETS`` at every load.
    """
    for split in SPLITS:
        DatasetCatalog.pop(split.name, None)
        MetadataCatalog.pop(split.name, None)
        _register(
            split.name,
            _split_paths(split, None if root is None else os.fspath(root)),
            split.class_names,
            {
                "dataset_family": split.family,
                "ensemble_exponents": dict(ENSEMBLE_EXPONENTS.get(split.family, {})),
            },
        )


def ensemble_exponents(train_dataset: str, test_dataset: str) -> tuple[float, float]:
    """(alpha, beta) the authors used for a model trained on one split and tested on another.

    Args:
        train_dataset: registered name of the training split (e.g. ``isaid_train_instance``).
        test_dataset: registered name of the test split (e.g. ``nwpu_val_instance``).
    """
    train_meta, test_meta = MetadataCatalog.get(train_dataset), MetadataCatalog.get(test_dataset)
    family = getattr(train_meta, "dataset_family", None)
    table = getattr(test_meta, "ensemble_exponents", None)
    if family is None or table is None or family not in table:
        known = ", ".join(f"{train}->{target}" for target, row in ENSEMBLE_EXPONENTS.items() for train in row)
        raise ValueError(
            f"No ensemble exponents for training on '{train_dataset}' (family {family!r}) and testing on "
            f"'{test_dataset}' (table {table!r}); DATASETS.md gives them for {known}. "
            "Set MODEL.SCORE.GEOMETRIC_ENSEMBLE_ALPHA/BETA explicitly instead."
        )
    alpha, beta = table[family]
    return float(alpha), float(beta)


# ---------------------------------------------------------------------------------------------
# Semantic segmentation (paper appendix A.2, Table A; DATASETS.md "Semantic segmentation
# benchmark"). Class names in label-value order, spelled as GSNet registers them. Target
# names that differ from a training name only in number carry it as a synonym
# ("building,buildings"), so that the seen flags and the text classifier read them as one.
LANDDISCOVER_CLASSES = (
    "background", "bare land", "grass", "pavement", "road", "tree", "water", "agriculture land",
    "buildings", "forest land", "barren land", "urban land", "large-vehicle", "swimming-pool",
    "helicopter", "bridge", "plane", "ship", "soccer-ball-field", "basketball-court",
    "ground-track-field", "small-vehicle", "baseball-diamond", "tennis-court", "roundabout",
    "storage-tank", "harbor", "container-crane", "airport", "helipad", "chimney",
    "expressway service area", "expresswalltoll station", "dam", "golf field", "overpass",
    "stadium", "train station", "vehicle", "windmill",
)  # fmt: skip
FLAIR_CLASSES = (
    "building,buildings", "pervious surface", "impervious surface", "bare soil", "water", "coniferous",
    "deciduous", "brushwood", "vineyard", "herbaceous vegetation", "agricultural land", "plowed land",
)  # fmt: skip
FAST_SEM_CLASSES = FAST_CLASSES
POTSDAM_CLASSES = ("impervious surface", "building,buildings", "low vegetation", "tree", "car")
FLOODNET_CLASSES = (
    "Background", "building-flooded", "building-non-flooded", "road-flooded", "road-non-flooded",
    "water", "tree", "vehicle", "pool", "grass",
)  # fmt: skip

# Target family -> {training family: (alpha, beta)} of the semantic splits. The paper does not
# give them: FC-CLIP's defaults (0.4, 0.8), the same for every target (docs/DESIGN.md).
SEM_SEG_ENSEMBLE_EXPONENTS: dict[str, dict[str, tuple[float, float]]] = {
    family: {"landdiscover50k": (0.4, 0.8)}
    for family in ("landdiscover50k", "flair", "fast", "potsdam", "floodnet")
}

_SEM_SEG_DATA_HINT = (
    "Get LandDiscover50K and the four test sets from the Hugging Face datasets Stev929/LandDiscover50K and "
    "Stev929/OVRSISS_test (layout: datasets/README.md) and point DETECTRON2_DATASETS at their root."
)


@dataclass(frozen=True)
class SemSegSplitSpec:
    """One row of the semantic split table; folders are relative to the dataset root.

    A label file has the image's stem and ``label_ext``; ``label_values`` are the raw
    values of ``class_names`` (default 0..K-1); ``ignore_values`` are the raw values
    never scored nor trained on (255 everywhere, plus the split's own).
    """

    name: str
    family: str
    subset: str  # "train" or "val"
    image_dir: str
    label_dir: str
    image_ext: str
    label_ext: str
    class_names: tuple[str, ...]
    ignore_values: tuple[int, ...] = (255,)
    label_values: tuple[int, ...] | None = None

    @property
    def encoding(self) -> LabelEncoding:
        values = tuple(range(len(self.class_names))) if self.label_values is None else self.label_values
        return LabelEncoding(values, self.ignore_values)


SEM_SEG_SPLITS: tuple[SemSegSplitSpec, ...] = (
    SemSegSplitSpec("landdiscover50k_train_sem_seg", "landdiscover50k", "train", "LandDiscover50K/TR_Image",
                    "LandDiscover50K/GT_ID", "png", "png", LANDDISCOVER_CLASSES),
    SemSegSplitSpec("landdiscover50k_val_sem_seg", "landdiscover50k", "val", "LandDiscover50K/VAL_Image",
                    "LandDiscover50K/VAL_GT_ID", "png", "png", LANDDISCOVER_CLASSES),
    SemSegSplitSpec("flair_val_sem_seg", "flair", "val", "FLAIR/test/image", "FLAIR/test/mask",
                    "png", "png", FLAIR_CLASSES, ignore_values=(12, 255)),
    SemSegSplitSpec("fast_val_sem_seg", "fast", "val", "FAST/val/images", "FAST/val/semlabels/gray",
                    "png", "png", FAST_SEM_CLASSES),
    SemSegSplitSpec("potsdam_val_sem_seg", "potsdam", "val", "PotsdamSplit/img_dir/val",
                    "PotsdamSplit/ann_dir/val", "png", "png", POTSDAM_CLASSES, ignore_values=(5, 255)),
    SemSegSplitSpec("floodnet_val_sem_seg", "floodnet", "val", "FloodNet/val+test/img",
                    "FloodNet/val+test/lbl", "jpg", "png", FLOODNET_CLASSES, ignore_values=(0, 255)),
)  # fmt: skip


def load_sem_seg_records(
    name: str, image_root: str, label_root: str, image_ext: str, label_ext: str
) -> list[dict]:
    """Records of a semantic split: every ``*.image_ext`` of ``image_root`` with the label of the same stem.

    Args:
        name: dataset name, for messages.
        image_root, label_root: folders of the images and of the label images.
        image_ext, label_ext: file extensions without the dot.

    Returns:
        detectron2 dicts (``file_name``, ``sem_seg_file_name``, ``height``, ``width``,
        ``image_id`` = the stem), sorted by file name. Only image headers are read; a
        missing or bad label is the validation's to report (score/data/validation.py).
    """
    env = os.environ.get("DETECTRON2_DATASETS")
    env_text = f"DETECTRON2_DATASETS={env!r}" if env else "DETECTRON2_DATASETS unset, default 'datasets'"
    for kind, folder in (("image folder", image_root), ("label folder", label_root)):
        if not os.path.isdir(folder):
            raise FileNotFoundError(
                f"Dataset '{name}': {kind} not found: {folder} ({env_text}). {_SEM_SEG_DATA_HINT}"
            )
    suffix = "." + image_ext
    stems = sorted(f[: -len(suffix)] for f in os.listdir(image_root) if f.endswith(suffix))
    if not stems:
        raise FileNotFoundError(f"Dataset '{name}': no *{suffix} image in {image_root}")
    records = []
    for stem in stems:
        file_name = os.path.join(image_root, stem + suffix)
        try:
            with Image.open(file_name) as img:
                width, height = img.size
        except (OSError, ValueError):
            width = height = None  # reported by the validation, with the reason
        records.append(
            {
                "file_name": file_name,
                "sem_seg_file_name": os.path.join(label_root, f"{stem}.{label_ext}"),
                "height": height,
                "width": width,
                "image_id": stem,
            }
        )
    return records


def _register_sem_seg(
    name: str,
    paths: Callable[[], tuple[str, str]],
    class_names: Sequence[str],
    encoding: LabelEncoding,
    image_ext: str,
    label_ext: str,
    metadata: dict,
) -> None:
    def load() -> list[dict]:
        image_root, label_root = paths()
        records = load_sem_seg_records(name, image_root, label_root, image_ext, label_ext)
        _sync_metadata(name, image_root=image_root, sem_seg_root=label_root)
        return records

    image_root, label_root = paths()
    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(
        stuff_classes=list(class_names),
        image_root=image_root,
        sem_seg_root=label_root,
        image_ext=image_ext,
        gt_ext=label_ext,
        evaluator_type="sem_seg",
        ignore_label=encoding.ignore_label,
        label_values=list(encoding.label_values),
        ignore_values=list(encoding.ignore_values),
        stuff_dataset_id_to_contiguous_id={v: i for i, v in enumerate(encoding.label_values)},
        **metadata,
    )


def register_sem_seg_dataset(
    name: str,
    image_root: str,
    label_root: str,
    class_names: Sequence[str],
    *,
    image_ext: str = "png",
    label_ext: str = "png",
    label_values: Sequence[int] | None = None,
    ignore_values: Sequence[int] = (255,),
    **metadata,
) -> None:
    """Register a semantic split of images and same-stem label images.

    Args:
        name: name in DatasetCatalog / MetadataCatalog; must not be registered yet.
        image_root, label_root: folders of the images and the labels.
        class_names: the vocabulary, in ``label_values`` order; becomes ``stuff_classes``.
        image_ext, label_ext: file extensions without the dot.
        label_values: raw label value of each class (default 0..K-1).
        ignore_values: raw values never scored nor trained on.
        metadata: extra metadata (e.g. ``dataset_family``, ``ensemble_exponents``).
    """
    values = tuple(range(len(class_names))) if label_values is None else tuple(label_values)
    encoding = LabelEncoding(values, tuple(ignore_values))
    paths = (os.fspath(image_root), os.fspath(label_root))
    _register_sem_seg(name, lambda: paths, class_names, encoding, image_ext, label_ext, metadata)


def _sem_seg_split_paths(split: SemSegSplitSpec, root: str | None) -> Callable[[], tuple[str, str]]:
    def paths() -> tuple[str, str]:
        base = dataset_root() if root is None else root
        return os.path.join(base, split.image_dir), os.path.join(base, split.label_dir)

    return paths


def register_all_sem_seg(root: str | None = None) -> None:
    """(Re-)register the splits of ``SEM_SEG_SPLITS``; ``root`` as in ``register_all``."""
    for split in SEM_SEG_SPLITS:
        DatasetCatalog.pop(split.name, None)
        MetadataCatalog.pop(split.name, None)
        _register_sem_seg(
            split.name,
            _sem_seg_split_paths(split, None if root is None else os.fspath(root)),
            split.class_names,
            split.encoding,
            split.image_ext,
            split.label_ext,
            {
                "dataset_family": split.family,
                "ensemble_exponents": dict(SEM_SEG_ENSEMBLE_EXPONENTS.get(split.family, {})),
            },
        )


register_all()
register_all_sem_seg()
