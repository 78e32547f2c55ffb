"""SCOREPredictor on the tiny model: outputs, channel order, vocabulary, text-classifier cache, errors."""

import score  # noqa: F401, I001  (first: its shims let detectron2 import without detectron2._C)
import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from pycocotools import mask as mask_util

from score.predict import predictor as predictor_module
from score.predict.predictor import (
    SCOREPredictor,
    check_weights,
    coco_annotations,
    default_cache_dir,
    draw_instances,
)
from score.predict.masks import SceneInstance
from score.vocabulary import display_name, first_synonym, parse_vocabulary
from tests.conftest import tiny_cfg


class CountingEncoder:
    """Wraps a text encoder and counts the prompts it encodes."""

    def __init__(self, encode_fn):
        self.encode_fn = encode_fn
        self.prompts = 0

    def __call__(self, prompts):
        self.prompts += len(prompts)
        return self.encode_fn(prompts)


def count_text_encoding(predictor: SCOREPredictor) -> CountingEncoder:
    bank = predictor.model.text_classifiers
    counter = CountingEncoder(bank.encode_fn)
    bank.encode_fn = counter
    return counter


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    torch.manual_seed(0)
    cache = tmp_path_factory.mktemp("cache")
    return SCOREPredictor(tiny_cfg("MODEL.SCORE.TEXT_CLASSIFIER_CACHE_DIR", str(cache), *SMALL_TEST_SIZE))


# A small test resize keeps each forward of the tiny model short.
SMALL_TEST_SIZE = ("INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "128")


def random_image(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def test_outputs_at_the_original_size(predictor):
    image = random_image(150, 230)
    instances = predictor(image, vocabulary=["ship", "storage tank", "harbor"])
    assert instances.image_size == (150, 230)
    assert instances.pred_masks.dtype == torch.bool and instances.pred_masks.shape[1:] == (150, 230)
    assert len(instances) == len(instances.scores) == len(instances.pred_classes) > 0
    assert int(instances.pred_classes.max()) < 3
    assert instances.scores.device.type == "cpu"
    assert not predictor.model.training


def test_bgr_input_is_flipped_to_the_model_order(predictor):
    image = random_image(120, 140, seed=1)
    bgr = SCOREPredictor(model=predictor.model, min_size_test=96, max_size_test=128, input_format="BGR")
    rgb_out = predictor(image)
    bgr_out = bgr(np.ascontiguousarray(image[:, :, ::-1]))
    torch.testing.assert_close(rgb_out.scores, bgr_out.scores)
    assert torch.equal(rgb_out.pred_masks, bgr_out.pred_masks)
    with pytest.raises(ValueError, match="input_format"):
        SCOREPredictor(model=predictor.model, min_size_test=96, max_size_test=128, input_format="BRG")


def test_bad_images_are_rejected(predictor):
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        predictor(np.zeros((10, 10), dtype=np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        predictor(np.zeros((10, 10, 3), dtype=np.float32))


def test_vocabulary_switch_keeps_the_model_and_builds_one_new_classifier(predictor):
    model_id = id(predictor.model)
    counter = count_text_encoding(predictor)
    image = random_image(100, 100, seed=2)
    predictor.set_vocabulary(["airplane", "ship"])
    first = predictor(image)
    prompts_first = counter.prompts
    templates = len(predictor.model.text_classifiers.templates)
    assert prompts_first == 2 * templates
    second = predictor(image, vocabulary=["vehicle, car", "bridge", "roundabout", "tennis court"])
    assert id(predictor.model) == model_id
    assert predictor.class_names == ["vehicle, car", "bridge", "roundabout", "tennis court"]
    # One new classifier: 5 synonyms in every template.
    assert counter.prompts - prompts_first == 5 * templates
    assert int(first.pred_classes.max()) < 2 and int(second.pred_classes.max()) < 4
    assert set(second.pred_classes.tolist()) - {0, 1}  # classes beyond the first vocabulary's
    # Back to a vocabulary met before: from memory, nothing encoded.
    predictor(image, vocabulary=["airplane", "ship"])
    assert counter.prompts == prompts_first + 5 * templates
    with pytest.raises(ValueError, match="empty"):
        predictor.set_vocabulary([" ", ""])


@pytest.fixture
def clip_weight_files(predictor, tmp_path):
    """The tiny towers' random weights written to files, so that the text classifier may be cached on disk."""
    clip, rsclip = tmp_path / "clip.pt", tmp_path / "rsclip.pt"
    torch.save(predictor.model.backbone.clip_model.state_dict(), clip)
    torch.save(predictor.model.context_encoder.clip_model.state_dict(), rsclip)
    return [
        *SMALL_TEST_SIZE,
        "MODEL.SCORE.RANDOM_INIT_CLIP",
        "False",
        "MODEL.SCORE.CLIP_PRETRAINED_WEIGHTS",
        str(clip),
        "MODEL.SCORE.RSCLIP_PRETRAINED_WEIGHTS",
        str(rsclip),
    ]


def test_disk_cache_is_reused_by_a_second_predictor(clip_weight_files, tmp_path, monkeypatch):
    monkeypatch.setenv("SCORE_CACHE_DIR", str(tmp_path / "score_cache"))
    image = random_image(96, 96, seed=3)
    vocabulary = ["ship", "storage tank"]

    first = SCOREPredictor(tiny_cfg(*clip_weight_files))
    assert first.model.text_classifiers.cache_dir == tmp_path / "score_cache" / "text_classifiers"
    first_counter = count_text_encoding(first)
    first(image, vocabulary)
    assert first_counter.prompts > 0
    cached = list((tmp_path / "score_cache" / "text_classifiers").iterdir())
    assert len(cached) == 1
    mtime = cached[0].stat().st_mtime_ns

    second = SCOREPredictor(tiny_cfg(*clip_weight_files))
    second_counter = count_text_encoding(second)
    second(image, vocabulary)
    assert second_counter.prompts == 0
    assert cached[0].stat().st_mtime_ns == mtime
    # Same classifier as computed (the heads differ: random, but the text towers are the same files).
    torch.testing.assert_close(
        second.model.text_classifiers.get(vocabulary)[0], first.model.text_classifiers.get(vocabulary)[0]
    )


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("SCORE_CACHE_DIR", str(tmp_path))
    assert default_cache_dir() == str(tmp_path / "text_classifiers")
    monkeypatch.delenv("SCORE_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == str(tmp_path / "home" / ".cache" / "score" / "text_classifiers")


def test_missing_checkpoint_names_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "model_final.pth"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        check_weights(str(missing))
    with pytest.raises(FileNotFoundError, match="MODEL.WEIGHTS"):
        SCOREPredictor(tiny_cfg("MODEL.WEIGHTS", str(missing)))
    check_weights("")  # allowed: the tiny model keeps its random weights


def test_checkpoint_is_loaded(predictor, tmp_path):
    model = build_model(tiny_cfg())
    with torch.no_grad():
        model.void_embedding.weight.fill_(0.25)
    torch.save({"model": model.state_dict()}, tmp_path / "model.pth")
    loaded = SCOREPredictor(tiny_cfg("MODEL.WEIGHTS", str(tmp_path / "model.pth")))
    assert torch.all(loaded.model.void_embedding.weight == 0.25)


def test_parse_vocabulary_text_and_file(tmp_path):
    assert parse_vocabulary("ship, storage tank,harbor,") == ["ship", "storage tank", "harbor"]
    vocab_file = tmp_path / "vocab.txt"
    vocab_file.write_text("# my classes\nship , boat\n\nstorage_tank\n  harbor  \n", encoding="utf-8")
    assert parse_vocabulary(file=str(vocab_file)) == ["ship, boat", "storage_tank", "harbor"]
    assert display_name("ship, boat") == "ship"
    assert first_synonym("Ground_Track_Field, gtf") == "Ground_Track_Field"
    assert display_name("Ground_Track_Field, gtf") == "ground track field"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"text": " , ,"}, "empty"),
        ({}, "not both or neither"),
        ({"text": "ship", "file": "x.txt"}, "not both or neither"),
        ({"text": "ship,Ship"}, "more than once"),
        ({"text": "storage_tank,storage tank"}, "more than once"),
        ({"text": "ship,--"}, "letter or digit"),
    ],
)
def test_parse_vocabulary_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        parse_vocabulary(**kwargs)


def test_empty_vocabulary_file(tmp_path):
    vocab_file = tmp_path / "empty.txt"
    vocab_file.write_text("# nothing\n\n", encoding="utf-8")
    with pytest.raises(ValueError, match="empty.*empty.txt"):
        parse_vocabulary(file=str(vocab_file))


def test_coco_annotations_and_overlay():
    mask = np.zeros((4, 6), dtype=bool)
    mask[1:3, 2:5] = True
    inst = SceneInstance(1, 0.8, (10, 20, 16, 24), mask)
    (entry,) = coco_annotations([inst], "a.png", 40, 30, first_id=7)
    assert entry["id"] == 7 and entry["image_id"] == "a.png" and entry["category_id"] == 2
    assert entry["bbox"] == [10.0, 20.0, 6.0, 4.0] and entry["area"] == 6
    decoded = mask_util.decode(dict(entry["segmentation"]))
    assert decoded.shape == (40, 30) and decoded.sum() == 6 and decoded[21:23, 12:15].all()

    image = np.zeros((40, 30, 3), dtype=np.uint8)
    overlay = draw_instances(image, [inst], ["ship", "storage tank, tank"])
    assert overlay.shape == (40, 30, 3) and overlay[21:23, 12:15].any()
    half = draw_instances(np.zeros((20, 15, 3), dtype=np.uint8), [inst], ["a", "b"], scale=0.5)
    assert half.shape == (20, 15, 3)
    assert draw_instances(image, [], ["a"]).shape == (40, 30, 3)


def ragged_instance(height=61, width=47, x0=7, y0=4):
    mask = np.random.default_rng(1).random((height, width)) < 0.3
    mask[0, 0] = mask[-1, -1] = True
    return SceneInstance(0, 0.7, (x0, y0, x0 + width, y0 + height), mask)


@pytest.mark.parametrize("band_pixels", [47, 500, 61 * 47 - 1])
def test_overlay_of_a_large_object_from_its_mask_reduced_band_by_band(band_pixels):
    inst = ragged_instance()
    image = np.full((70, 60, 3), 30, dtype=np.uint8)
    # At full scale the reduced mask is the mask: the same contours, the same picture.
    whole = draw_instances(image, [inst], ["a"])
    assert np.array_equal(draw_instances(image, [inst], ["a"], band_pixels=band_pixels), whole)

    scale = 0.37
    reduced, corner = predictor_module._reduced_mask(inst, scale, band_pixels)
    # Reference: every mask pixel sets the picture pixel its centre falls in.
    rows, cols = np.nonzero(inst.to_full_mask(70, 60))
    expected = np.zeros((26, 23), dtype=bool)
    expected[np.floor((rows + 0.5) * scale).astype(int), np.floor((cols + 0.5) * scale).astype(int)] = True
    x0, y0 = corner
    assert corner == (2, 1) and np.array_equal(
        expected[y0 : y0 + reduced.shape[0], x0 : x0 + reduced.shape[1]], reduced
    )
    assert not expected[:y0].any() and not expected[:, :x0].any()
    small = np.full((26, 23, 3), 30, dtype=np.uint8)
    drawn = draw_instances(small, [inst], ["a"], scale, band_pixels=band_pixels)
    assert (drawn != small).any(axis=2)[expected].mean() > 0.9  # the object is filled where it is
