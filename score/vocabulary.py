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
  a line, synonyms separated by commas (:func:`parse_vocabulary`). Quotes
  around a name are removed (CSV style); a name shared by two entries (any
  synonym, after normalisation) is an error naming both.
"""

from __future__ import annotations

import csv
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


def _fields(text: str, where: str) -> List[str]:
    """Comma-separated fields of ``text``, CSV style: double quotes group (commas too) and are removed.

    Matching single quotes around a field are removed too; a double quote left
    inside a field is an error.
    """
    try:
        fields = next(csv.reader([text], skipinitialspace=True, strict=True), [])
    except csv.Error as error:
        raise ValueError(f"{where}: unbalanced quotes in {text!r} ({error})") from None
    out = []
    for field in fields:
        field = field.strip()
        if len(field) >= 2 and field[0] == field[-1] == "'":
            field = field[1:-1].strip()
        if '"' in field:
            raise ValueError(f"{where}: stray double quote in the class name {field!r}")
        out.append(field)
    return out


def parse_vocabulary(text: Optional[str] = None, file: Optional[str] = None) -> List[str]:
    """Class names from a command-line string or a file (exactly one of them).

    Args:
        text: classes separated by commas: ``"ship,storage tank,harbor"``. A
            name may be quoted (``'ship,"storage tank"'``); quotes are removed,
            and a quoted field holding commas is one class with synonyms
            (``'"ship, boat",harbor'``).
        file: UTF-8 text, one class per line; a line may list synonyms
            separated by commas (``ship,boat`` is one class), quoted or not.
            Blank lines and lines starting with ``#`` are skipped.

    Returns:
        One entry per class (synonyms joined by ", ", as
        ``SCORE.set_vocabulary`` takes them), quotes and surrounding spaces removed.

    Raises:
        ValueError: both or neither given, no class at all, unbalanced quotes,
            or a name (any synonym, after normalisation) in two entries; the
            message names both entries (their lines for a file).
    """
    if (text is None) == (file is None):
        raise ValueError("give the vocabulary either as text or as a file, not both or neither")
    entries: List[Tuple[str, str]] = []  # (where, entry)
    if text is not None:
        source = f"--vocab {text!r}"
        for i, field in enumerate(_fields(text, source), start=1):
            entries.append((f"entry {i}", ", ".join(s.strip() for s in field.split(",") if s.strip())))
    else:
        source = f"vocabulary file {file}"
        with open(file, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                line = line.strip()
                if line[:1] == "#":
                    continue
                synonyms = [s for s in _fields(line, f"{source}, line {number}") if s]
                entries.append((f"line {number}", ", ".join(synonyms)))
    entries = [(where, name) for where, name in entries if name]
    if not entries:
        raise ValueError(f"the vocabulary is empty ({source}): give at least one class name")
    unusable = [name for _, name in entries if not normalize_class_name(name)]
    if unusable:
        raise ValueError(f"class names without any letter or digit in {source}: {unusable}")
    owner: dict = {}  # normalised synonym -> (where, entry) that named it first
    clashes = []
    for where, name in entries:
        for synonym in dict.fromkeys(normalize_class_name(name)):
            if synonym in owner:
                first_where, first = owner[synonym]
                clashes.append(f"{first_where} {first!r} and {where} {name!r} both name {synonym!r}")
            else:
                owner[synonym] = (where, name)
    if clashes:
        raise ValueError(f"a class is named more than once in {source}: " + "; ".join(clashes))
    return [name for _, name in entries]
