"""MODEL.SCORE.TRAIN_VOCABULARY against the class lists of DATASETS.TRAIN (score/vocabulary.py)."""

import uuid

import pytest
from detectron2.data import MetadataCatalog

from score.config import get_score_cfg
from score.vocabulary import check_train_vocabulary


def _cfg(vocabulary, *splits):
    """A config whose DATASETS.TRAIN are new splits with the given class lists."""
    cfg = get_score_cfg()
    names = []
    for classes in splits:
        name = f"vocab_check_{uuid.uuid4().hex[:8]}"
        MetadataCatalog.get(name).set(thing_classes=list(classes))
        names.append(name)
    cfg.DATASETS.TRAIN = tuple(names)
    cfg.MODEL.SCORE.TRAIN_VOCABULARY = list(vocabulary)
    return cfg


@pytest.mark.parametrize(
    ("vocabulary", "classes"),
    [
        ([], ["plane", "ship"]),  # not set: the split's classes
        (["plane", "storage tank"], ["plane", "storage tank"]),
        (["Plane", "storage-tank"], ["plane", "storage_tank"]),  # the same after normalisation
    ],
)
def test_a_vocabulary_that_names_the_training_classes_passes(vocabulary, classes):
    check_train_vocabulary(_cfg(vocabulary, classes))


def test_no_training_split_passes():
    check_train_vocabulary(_cfg(["plane"]))


@pytest.mark.parametrize(
    ("vocabulary", "classes", "difference"),
    [
        (["ship", "plane"], ["plane", "ship"], "at position 0 the vocabulary has 'ship', the split 'plane'"),
        (
            ["plane", "ship", "harbor"],
            ["plane", "ship"],
            "position 2 the vocabulary has 'harbor', the split nothing",
        ),
        (
            ["plane"],
            ["plane", "ship"],
            "position 1 the vocabulary has nothing (it ends there), the split 'ship'",
        ),
        (["plane", "boat"], ["plane", "ship"], "position 1 the vocabulary has 'boat', the split 'ship'"),
    ],
)
def test_a_vocabulary_that_differs_names_both_lists_and_the_first_difference(vocabulary, classes, difference):
    cfg = _cfg(vocabulary, classes)
    with pytest.raises(ValueError) as error:
        check_train_vocabulary(cfg)
    message = str(error.value)
    assert str(vocabulary) in message and str(classes) in message and cfg.DATASETS.TRAIN[0] in message
    assert difference in message


def test_every_training_split_is_checked():
    cfg = _cfg(["plane", "ship"], ["plane", "ship"], ["ship", "plane"])
    with pytest.raises(ValueError, match=cfg.DATASETS.TRAIN[1]):
        check_train_vocabulary(cfg)
