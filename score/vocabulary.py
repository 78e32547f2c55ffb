"""Class vocabularies: the one place that says what a class name is and when two names are the same class.

A vocabulary is a list of class entries; an entry is a class name, or several
synonyms separated by commas (``"ship, boat"``). The rules:

* **Normalisation** (SCORE.md 7.2): '_' and '-' become spaces, lower case,
  spaces collapsed, ',' separates synonyms (:func:`normalize_class_name`).
  Dataset class lists are compared, prompts are written and the seen flags
  are decided on normalised names.
* **Templates**: each synonym is written into the 18 remote-sensing prompt
  templates (:data:`RS_TEMPLATES`) of the text classifier.
* **Seen** (SCORE.md 7.3): a test class is seen when one of its normalised
  synonyms is a synonym of a training class (:func:`seen_flags`).
* **Training vocabulary**: ``MODEL.SCORE.TRAIN_VOCABULARY`` when set, else the
  class list of ``DATASETS.TRAIN[0]`` (:func:`train_vocabulary`). It decides
  the seen flags for the model and for the evaluators alike. A training run
  checks that it names the classes of ``DATASETS.TRAIN`` in their order
  (:func:`check_train_vocabulary`).
* **Command line**: ``--vocab "ship,storage tank"`` or a file with one class
  a line, synonyms separated by commas (:func:`parse_vocabulary`); a class
  given twice is an error.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

__all__ = [
    "RS_TEMPLATES",
    "canonical_class_name",
    "check_train_vocabulary",
    "dataset_classes",
    "display_name",
    "first_synonym",
    "normalize_class_name",
    "parse_vocabulary",
    "seen_flags",
    "train_vocabulary",
]

RS_TEMPLATES: Tuple[str, ...] = (
    "satellite imagery of {}.",
    "aerial imagery of {}.",
    "satellite photo of {}.",
    "aerial photo of {}.",
    "satellite view of {}.",
    "aerial view of {}.",
    "satellite imagery of a {}.",
    "aerial imagery of a {}.",
    "satellite photo of a {}.",
    "aerial photo of a {}.",
    "satellite view of a {}.",
    "aerial view of a {}.",
    "satellite imagery of the {}.",
    "aerial imagery of the {}.",
    "satellite photo of the {}.",
    "aerial photo of the {}.",
    "satellite view of the {}.",
    "aerial view of the {}.",
)


def normalize_class_name(name: str) -> List[str]:
    """Synonyms of a class name: '_' and '-' become spaces, lower case, split at ',', spaces collapsed."""
    text = name.replace("_", " ").replace("-", " ").lower()
    synonyms = [" ".join(part.split()) for part in text.split(",")]
    return [s for s in synonyms if s]


def canonical_class_name(name: str) -> str:
    """The normalisation of a class name as one string (``Storage_tank`` -> ``storage tank``).

    Synonyms stay comma-separated.
    """
    return ", ".join(normalize_class_name(name))


def first_synonym(class_name: str) -> str:
    """The first synonym of a vocabulary entry, as written (``"ship, boat"`` -> ``"ship"``)."""
    return class_name.split(",")[0].strip()


def display_name(class_name: str) -> str:
    """How a class is shown in overlays, legends and logs: its first synonym, normalised.

    ``"ship, boat"`` -> ``"ship"``; ``"ground_track_field"`` -> ``"ground track field"``.
    """
    synonyms = normalize_class_name(class_name)
    return synonyms[0] if synonyms else class_name.strip()


def seen_flags(test_names: Sequence[str], train_names: Sequence[str]) -> List[bool]:
    """For each test class, whether one of its normalised synonyms is a training class's synonym."""
    train_synonyms = {s for name in train_names for s in normalize_class_name(name)}
    return [any(s in train_synonyms for s in normalize_class_name(name)) for name in test_names]


def dataset_classes(name: str, key: str) -> List[str]:
    """Class list of the registered dataset ``name`` (found under config key ``key``).

    ``thing_classes`` of an instance split, ``stuff_classes`` of a semantic one.
    """
    from detectron2.data import MetadataCatalog

    metadata = MetadataCatalog.get(name)
    classes = metadata.get("thing_classes", None) or metadata.get("stuff_classes", None)
    if not classes:
        raise KeyError(f"dataset {name!r} ({key}) has no thing_classes or stuff_classes in its metadata")
    return list(classes)


def train_vocabulary(cfg) -> List[str]:
    """The training vocabulary: MODEL.SCORE.TRAIN_VOCABULARY, else the classes of
    DATASETS.TRAIN[0]; empty when neither is set. It decides which test classes are
    seen (SCORE.md 7.3) for the model and for the evaluator alike."""
    if len(cfg.MODEL.SCORE.TRAIN_VOCABULARY):
        return list(cfg.MODEL.SCORE.TRAIN_VOCABULARY)
    if len(cfg.DATASETS.TRAIN):
        return dataset_classes(cfg.DATASETS.TRAIN[0], "DATASETS.TRAIN")
    return []


def check_train_vocabulary(cfg) -> None:
    """Refuse a MODEL.SCORE.TRAIN_VOCABULARY that does not name the classes of DATASETS.TRAIN.

    In training, the vocabulary is the classifier whose rows the annotations'
    class ids index, so it must list each training split's classes in their
    order (compared after :func:`canonical_class_name`). Called before a
    training run builds its model; an empty key (the classes of
    DATASETS.TRAIN[0]) or an empty DATASETS.TRAIN passes.

    Raises:
        ValueError: naming both lists and their first difference.
    """
    vocabulary = list(cfg.MODEL.SCORE.TRAIN_VOCABULARY)
    if not vocabulary:
        return
    expected = [canonical_class_name(n) for n in vocabulary]
    for name in cfg.DATASETS.TRAIN:
        classes = dataset_classes(name, "DATASETS.TRAIN")
        found = [canonical_class_name(n) for n in classes]
        if found == expected:
            continue
        differs = (i for i, (a, b) in enumerate(zip(expected, found)) if a != b)
        i = next(differs, min(len(expected), len(found)))
        vocab_entry = repr(vocabulary[i]) if i < len(vocabulary) else "nothing (it ends there)"
        dataset_entry = repr(classes[i]) if i < len(classes) else "nothing (it ends there)"
        raise ValueError(
            f"MODEL.SCORE.TRAIN_VOCABULARY {vocabulary} ({len(vocabulary)} classes) does not name the "
            f"classes of training split {name!r} (DATASETS.TRAIN) {classes} ({len(classes)} classes) "
            f"in their order: at position {i} the vocabulary has {vocab_entry}, the split {dataset_entry}. "
            "It sets the training classifier, whose rows the annotations' class ids index: leave it "
            "empty (the split's classes) or list the split's classes."
        )


def parse_vocabulary(text: Optional[str] = None, file: Optional[str] = None) -> List[str]:
    """Class names from a command-line string or a file (exactly one of them).

    Args:
        text: classes separated by commas: ``"ship,storage tank,harbor"``.
        file: UTF-8 text, one class per line; a line may list synonyms
            separated by commas (``ship,boat`` is one class). Blank lines and
            lines starting with ``#`` are skipped.

    Returns:
        One entry per class (synonyms still joined by commas, as
        ``SCORE.set_vocabulary`` takes them), surrounding spaces removed.

    Raises:
        ValueError: both or neither given, no class at all, or a class given twice.
    """
    if (text is None) == (file is None):
        raise ValueError("give the vocabulary either as text or as a file, not both or neither")
    if text is not None:
        names = [name.strip() for name in text.split(",")]
        source = f"--vocab {text!r}"
    else:
        with open(file, encoding="utf-8") as f:
            lines = [line.strip() for line in f]
        names = [
            ", ".join(s.strip() for s in line.split(",") if s.strip()) for line in lines if line[:1] != "#"
        ]
        source = f"vocabulary file {file}"
    names = [name for name in names if name]
    if not names:
        raise ValueError(f"the vocabulary is empty ({source}): give at least one class name")
    unusable = [name for name in names if not normalize_class_name(name)]
    if unusable:
        raise ValueError(f"class names without any letter or digit in {source}: {unusable}")
    first_seen = {}
    duplicates = []
    for name in names:
        key = tuple(normalize_class_name(name))
        if key in first_seen:
            duplicates.append((first_seen[key], name))
        first_seen.setdefault(key, name)
    if duplicates:
        raise ValueError(f"classes given more than once in {source}: {duplicates}")
    return names
