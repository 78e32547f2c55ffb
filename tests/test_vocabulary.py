"""score/vocabulary.py: MODEL.SCORE.TRAIN_VOCABULARY against the class lists of DATASETS.TRAIN, and
command-line vocabularies (quotes, synonyms, names given twice)."""

import uuid

import pytest
from detectron2.data import MetadataCatalog

from score.config import get_score_cfg
from score.vocabulary import check_train_vocabulary, parse_vocabulary


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


def test_quoted_names_are_unquoted():
    assert parse_vocabulary('ship,"storage tank"') == ["ship", "storage tank"]
    assert parse_vocabulary("ship, 'storage tank' ,harbor") == ["ship", "storage tank", "harbor"]
    assert parse_vocabulary('"ship, boat",harbor') == ["ship, boat", "harbor"]  # one class, two synonyms


def test_quoted_synonyms_in_a_file_are_unquoted(tmp_path):
    vocab = tmp_path / "classes.txt"
    vocab.write_text('"ship", "boat"\n# a comment\n\nstorage tank\n', encoding="utf-8")
    assert parse_vocabulary(file=str(vocab)) == ["ship, boat", "storage tank"]


@pytest.mark.parametrize("text", ['ship,"storage tank', 'ship,stor"age tank'])
def test_stray_quotes_are_refused(text):
    with pytest.raises(ValueError, match="quote"):
        parse_vocabulary(text)


def test_a_synonym_shared_by_two_lines_names_both(tmp_path):
    vocab = tmp_path / "classes.txt"
    vocab.write_text("ship, boat\nharbor\nShip\n", encoding="utf-8")
    with pytest.raises(ValueError) as info:
        parse_vocabulary(file=str(vocab))
    assert "line 1 'ship, boat' and line 3 'Ship' both name 'ship'" in str(info.value)
    assert str(vocab) in str(info.value)
    vocab.write_text("ship, boat\nharbor\nboat, vessel\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 1 'ship, boat' and line 3 'boat, vessel' both name 'boat'"):
        parse_vocabulary(file=str(vocab))


def test_a_name_given_twice_on_the_command_line_names_both_entries():
    with pytest.raises(ValueError, match="entry 1 'storage tank' and entry 3 'Storage_Tank' both name"):
        parse_vocabulary("storage tank,ship,Storage_Tank")
    assert parse_vocabulary("ship,harbor") == ["ship", "harbor"]
