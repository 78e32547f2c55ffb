"""Text classifier of SCORE.md 7.2: name normalisation, seen flags, prompt ensembling, caches."""

from __future__ import annotations

import hashlib

import pytest
import torch
import torch.nn.functional as F

from score.modeling.text_classifier import TextClassifierBank, classifier_cache_key
from score.vocabulary import RS_TEMPLATES, normalize_class_name, seen_flags

ISAID = [
    "ship", "storage_tank", "baseball_diamond", "tennis_court", "basketball_court", "Ground_Track_Field",
    "Bridge", "Large_Vehicle", "Small_Vehicle", "Helicopter", "Swimming_pool", "Roundabout",
    "Soccer_ball_field", "plane", "Harbor",
]  # fmt: skip
NWPU = [
    "airplane", "ship", "storage_tank", "baseball_diamond", "tennis_court", "basketball_court",
    "ground_track_field", "harbor", "bridge", "vehicle",
]  # fmt: skip
D = 8


class FakeEncoder:
    """Deterministic prompt -> (D,) embedding (not normalised); counts calls and prompts."""

    def __init__(self, dtype=torch.float32):
        self.calls, self.batches, self.dtype = 0, [], dtype

    def embed(self, prompt: str) -> torch.Tensor:
        seed = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:4], "little")
        return torch.randn(D, generator=torch.Generator().manual_seed(seed)) * 3.0

    def __call__(self, prompts):
        self.calls += 1
        self.batches.append(len(prompts))
        return torch.stack([self.embed(p) for p in prompts]).to(self.dtype)


def make_bank(encoder=None, **kwargs) -> TextClassifierBank:
    kwargs = {"cache_key": classifier_cache_key("m", "w"), **kwargs}
    return TextClassifierBank(encoder or FakeEncoder(), **kwargs)


def test_normalize_class_name():
    assert normalize_class_name("Ground_Track_Field") == ["ground track field"]
    assert normalize_class_name("expressway-service-area") == ["expressway service area"]
    assert normalize_class_name("plane, Air_plane ,") == ["plane", "air plane"]
    assert normalize_class_name("  Large   Vehicle ") == ["large vehicle"]


def test_seen_flags_isaid_to_nwpu():
    assert seen_flags(NWPU, ISAID) == [False, True, True, True, True, True, True, True, True, False]
    # A synonym is enough to make a class seen.
    assert seen_flags(["airplane, plane", "vehicle"], ISAID) == [True, False]


def test_templates_are_the_18_of_the_spec_in_order():
    assert len(RS_TEMPLATES) == 18
    kinds = [
        "satellite imagery", "aerial imagery", "satellite photo",
        "aerial photo", "satellite view", "aerial view",
    ]  # fmt: skip
    expected = [f"{k} of {article}{{}}." for article in ("", "a ", "the ") for k in kinds]
    assert list(RS_TEMPLATES) == expected
    assert RS_TEMPLATES[0] == "satellite imagery of {}." and RS_TEMPLATES[17] == "aerial view of the {}."


def test_classifier_equation_against_direct_computation():
    encoder = FakeEncoder(dtype=torch.float16)
    bank = make_bank(encoder, batch_size=7)
    classifier, num_synonyms = bank.get(["Storage_Tank", "plane, airplane", "harbor"])
    assert num_synonyms == [1, 2, 1]
    assert classifier.shape == (4, D) and classifier.dtype == torch.float32
    rows = []
    for synonym in ["storage tank", "plane", "airplane", "harbor"]:
        per_template = torch.stack([encoder.embed(t.format(synonym)).half().float() for t in RS_TEMPLATES])
        rows.append(F.normalize(F.normalize(per_template, dim=-1).mean(0), dim=0))
    torch.testing.assert_close(classifier, torch.stack(rows))
    torch.testing.assert_close(classifier.norm(dim=-1), torch.ones(4))
    # 4 synonyms x 18 templates = 72 prompts in batches of at most 7.
    assert sum(encoder.batches) == 72 and max(encoder.batches) == 7 and encoder.calls == 11


def test_memory_cache_per_vocabulary():
    encoder = FakeEncoder()
    bank = make_bank(encoder)
    first, _ = bank.get(NWPU)
    calls = encoder.calls
    again, _ = bank.get(NWPU)
    assert encoder.calls == calls and torch.equal(first, again)
    bank.get(ISAID)
    assert encoder.calls > calls
    calls = encoder.calls
    # Same classes spelled differently normalise to the same vocabulary.
    bank.get([name.upper().replace("_", "-") for name in NWPU])
    assert encoder.calls == calls


def test_disk_cache_reused_across_instances(tmp_path):
    first_encoder, second_encoder = FakeEncoder(), FakeEncoder()
    first = make_bank(first_encoder, cache_dir=str(tmp_path))
    expected, num_synonyms = first.get(NWPU)
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].name.startswith("text_classifier_") and files[0].suffix == ".pt"

    second = make_bank(second_encoder, cache_dir=str(tmp_path))
    got, got_synonyms = second.get(NWPU)
    assert second_encoder.calls == 0
    torch.testing.assert_close(got, expected)
    assert got_synonyms == num_synonyms


def test_no_disk_cache_for_random_weights(tmp_path):
    assert classifier_cache_key("m", "") == ""
    bank = make_bank(cache_key=classifier_cache_key("m", ""), cache_dir=str(tmp_path))
    bank.get(NWPU)
    assert list(tmp_path.iterdir()) == []


def test_cache_key_depends_on_templates_model_and_weights(tmp_path):
    vocabulary = [normalize_class_name(n) for n in NWPU]
    keys = {
        make_bank().cache_key(vocabulary),
        make_bank(templates=["a photo of {}."]).cache_key(vocabulary),
        make_bank(cache_key=classifier_cache_key("m2", "w")).cache_key(vocabulary),
        make_bank(cache_key=classifier_cache_key("m", "w2")).cache_key(vocabulary),
        make_bank().cache_key(vocabulary[:-1]),
    }
    assert len(keys) == 5

    # A bank with other templates does not reuse the first bank's file.
    make_bank(cache_dir=str(tmp_path)).get(NWPU)
    encoder = FakeEncoder()
    make_bank(encoder, templates=["a photo of {}."], cache_dir=str(tmp_path)).get(NWPU)
    assert encoder.calls == 1 and len(list(tmp_path.iterdir())) == 2


def test_damaged_cache_file_is_recomputed(tmp_path, caplog):
    bank = make_bank(cache_dir=str(tmp_path))
    expected, _ = bank.get(NWPU)
    (path,) = tmp_path.iterdir()
    path.write_bytes(b"garbage")
    encoder = FakeEncoder()
    got, _ = make_bank(encoder, cache_dir=str(tmp_path)).get(NWPU)
    assert encoder.calls == 1 and "unreadable text-classifier cache" in caplog.text
    torch.testing.assert_close(got, expected)


def test_bad_inputs():
    with pytest.raises(ValueError, match="exactly one"):
        make_bank(templates=["no slot"])
    with pytest.raises(ValueError, match="without any synonym"):
        make_bank().get(["ship", " , "])
