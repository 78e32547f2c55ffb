"""Command-line vocabularies: quotes, synonyms and names given twice (score.vocabulary.parse_vocabulary)."""

import pytest

from score.vocabulary import parse_vocabulary


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
