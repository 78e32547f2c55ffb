"""The scene engine with the instance sink (score/predict/scene.py, instances.py): streamed outputs equal
the in-memory merge, bounded working set, resume."""

import score  # noqa: F401, I001  (first: its shims let detectron2 import without detectron2._C)
import json

import cv2
import numpy as np
import pytest
import torch
from affine import Affine
from detectron2.structures import Instances

from score.predict.geojson import FeatureMaker, instances_to_geojson, write_feature_collection
from score.predict.instances import InstanceSink, instance_from_record, instance_record, write_coco_results
from score.predict.masks import SceneInstance
from score.predict.merge import tiled_inference
from score.predict.scene import SceneEngine, predict_tiles
from score.predict.windows import ArrayReader, row_starts, tile_windows

CLASSES = ["red thing", "green thing"]


def blob_scene(size: int = 200, seed: int = 0) -> np.ndarray:
    """Red and green discs and bars of many sizes on black, many of them cut by tile borders."""
    rng = np.random.default_rng(seed)
    scene = np.zeros((size, size, 3), dtype=np.uint8)
    for _ in range(40):
        colour = (255, 0, 0) if rng.random() < 0.5 else (0, 255, 0)
        x, y = (int(v) for v in rng.integers(0, size, 2))
        if rng.random() < 0.7:
            cv2.circle(scene, (x, y), int(rng.integers(3, 25)), colour, -1)
        else:
            cv2.rectangle(scene, (x, y), (x + int(rng.integers(20, 90)), y + 6), colour, -1)
    return scene


def blob_predictor(tile: np.ndarray) -> Instances:
    """Each 4-connected blob of one colour is an instance (class by colour; score from its size)."""
    masks, classes, scores = [], [], []
    for category, channel in enumerate((0, 1)):
        count, labels = cv2.connectedComponents((tile[:, :, channel] > 0).astype(np.uint8), connectivity=4)
        for label in range(1, count):
            mask = labels == label
            masks.append(mask)
            classes.append(category)
            scores.append(0.3 + (int(mask.sum()) % 70) / 100)
    result = Instances(tile.shape[:2])
    result.pred_masks = torch.as_tensor(np.array(masks, dtype=bool).reshape(-1, *tile.shape[:2]))
    result.pred_classes = torch.as_tensor(classes, dtype=torch.int64)
    result.scores = torch.as_tensor(scores, dtype=torch.float32)
    return result


class Interrupt(Exception):
    pass


def interrupting(predict, after: int):
    calls = [0]

    def wrapped(tile):
        if calls[0] == after:
            raise Interrupt
        calls[0] += 1
        return predict(tile)

    return wrapped


def open_stream(tmp, windows, key=None, features=True, canvas=True, **kwargs):
    """The engine of the blob scene with an instance sink."""
    scene = SCENE
    size = dict(height=scene.shape[0], width=scene.shape[1])
    sink = InstanceSink(
        str(tmp),
        "scene",
        image_id="scene.png",
        **size,
        class_names=CLASSES,
        features=FeatureMaker(CLASSES, transform=Affine.identity(), crs=None) if features else None,
        canvas=(lambda: (scene[::2, ::2].copy(), 0.5)) if canvas else None,
    )
    key = key or {"scene": "blobs", "vocabulary": CLASSES}
    return SceneEngine(
        str(tmp), "scene", sink=sink, image_id="scene.png", **size, windows=windows, key=key, **kwargs
    )


SCENE = blob_scene()
WINDOWS = tile_windows(200, 200, 64, 16)  # 4 x 4 tiles


def lines(path):
    return path.read_text().splitlines()


def coco_of(instances, height, width):
    return sorted(
        (i.category + 1, round(i.score, 6), i.bbox_xywh(), i.to_coco_rle(height, width)["counts"])
        for i in instances
    )


def test_record_round_trip():
    mask = np.random.default_rng(1).random((7, 11)) > 0.5
    inst = SceneInstance(1, 0.123456789, (3, 4, 14, 11), mask, [(0, 0, 64, 64), (48, 0, 112, 64)])
    back = instance_from_record(json.loads(json.dumps(instance_record(inst))))
    assert (back.category, back.score, back.box, back.windows) == (1, inst.score, inst.box, inst.windows)
    assert back.mask.dtype == bool and np.array_equal(back.mask, mask)


@pytest.mark.parametrize("chunk", [1 << 20, 3])
def test_feature_collection_copied_in_blocks(tmp_path, chunk):
    features = [{"type": "Feature", "properties": {"n": i, "text": "a,b\\n"}} for i in range(4)]
    path = tmp_path / "f.geojsonl"
    # The last line was cut by a kill: it is left out.
    path.write_text("".join(json.dumps(f) + "\n" for f in features) + '{"type": "Fea')
    header = {"type": "FeatureCollection", "crs": {"type": "name"}}
    out = tmp_path / "f.geojson"
    assert write_feature_collection(str(path), header, str(out), chunk=chunk) == 4
    assert json.loads(out.read_text()) == {**header, "features": features}
    path.write_text("")
    assert write_feature_collection(str(path), header, str(out), chunk=chunk) == 0
    assert json.loads(out.read_text()) == {**header, "features": []}
    assert write_feature_collection(str(tmp_path / "none"), header, str(out), chunk=chunk) == 0


def test_row_starts():
    assert row_starts(WINDOWS) == [0, 4, 8, 12]
    assert row_starts([(0, 0, 10, 10)]) == [0]


def test_streamed_outputs_equal_the_in_memory_merge(tmp_path):
    expected = tiled_inference(blob_predictor, SCENE, tile_size=64, overlap=16, score_threshold=0.0)
    assert len(expected) > 20
    stream = open_stream(tmp_path, WINDOWS)
    predict_tiles(blob_predictor, ArrayReader(SCENE), stream, progress=False)

    records = [json.loads(line) for line in lines(tmp_path / "scenes" / "scene" / "detections.jsonl")]
    got = sorted((r["category_id"], r["score"], r["bbox"], r["segmentation"]["counts"]) for r in records)
    assert got == coco_of(expected, 200, 200)
    assert stream.sink.detections == len(expected)

    features = [json.loads(line) for line in lines(tmp_path / "geojson" / "scene.geojsonl")]
    collection = json.loads((tmp_path / "geojson" / "scene.geojson").read_text())
    assert collection["features"] == features
    reference = instances_to_geojson(expected, CLASSES, transform=Affine.identity(), crs=None)
    key = lambda f: json.dumps(f, sort_keys=True)  # noqa: E731
    assert sorted(map(key, features)) == sorted(map(key, reference["features"]))

    progress = [json.loads(line) for line in lines(tmp_path / "scenes" / "scene" / "progress.jsonl")]
    assert [p["tile"] for p in progress] == list(range(len(WINDOWS)))
    assert sum(p["detections"] for p in progress) == stream.sink.tile_detections
    manifest = json.loads((tmp_path / "scenes" / "scene" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["rows_done"] == 4
    assert sorted(p.name for p in (tmp_path / "scenes" / "scene").iterdir()) == [
        "detections.jsonl",
        "manifest.json",
        "progress.jsonl",
    ]
    overlay = cv2.imread(str(tmp_path / "visualizations" / "scene.jpg"))
    assert overlay.shape == (100, 100, 3)


def test_only_pieces_reaching_the_current_row_are_held(tmp_path):
    stream = open_stream(tmp_path, WINDOWS, canvas=False)
    reader = ArrayReader(SCENE)
    folder = tmp_path / "scenes" / "scene"
    written = []
    for index, window in enumerate(WINDOWS):
        stream.add(index, stream.sink.tile(window, blob_predictor(reader.read(window))))
        if index in stream.rows[1:]:  # the checkpoint before this row has just been written
            row, top = stream.rows.index(index), window[1]
            held = [json.loads(line)["instance"] for line in lines(folder / f"held.{row}.jsonl")]
            assert held and all(h["box"][3] >= top for h in held)  # each may still join this row
            records = [json.loads(line) for line in lines(folder / "detections.jsonl")]
            assert all(r["bbox"][1] + r["bbox"][3] < top for r in records)  # final: above this row
            assert len(records) == stream.sink.detections
            written.append(len(records))
            assert sorted(p.name for p in folder.glob("held.*")) == [f"held.{row}.jsonl"]
    assert written == sorted(written) and written[-1] > written[0] > 0
    stream.finish()
    assert not list(folder.glob("held.*"))


@pytest.mark.parametrize("after", [1, 5, 9, 15])
def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, after):
    reader = ArrayReader(SCENE)
    predict_tiles(blob_predictor, reader, open_stream(tmp_path / "whole", WINDOWS), progress=False)

    out = tmp_path / "resumed"
    with pytest.raises(Interrupt):
        predict_tiles(interrupting(blob_predictor, after), reader, open_stream(out, WINDOWS), progress=False)
    assert not (out / "geojson" / "scene.geojson").exists()
    # What is on disk is valid: complete lines, each a Feature (a kill leaves at most a cut last line).
    for line in lines(out / "geojson" / "scene.geojsonl"):
        assert json.loads(line)["type"] == "Feature"
    resumed = open_stream(out, WINDOWS)
    rows_done = max(r for r, start in enumerate(resumed.rows) if start <= after)
    assert resumed.resumed and resumed.start_tile == resumed.rows[rows_done] and not resumed.complete
    predict_tiles(blob_predictor, reader, resumed, progress=False)

    for name in ["scenes/scene/detections.jsonl", "scenes/scene/progress.jsonl", "geojson/scene.geojsonl"]:
        whole, again = lines(tmp_path / "whole" / name), lines(out / name)
        if name.endswith("progress.jsonl"):  # the seconds differ
            whole, again = ([{**json.loads(x), "seconds": 0} for x in f] for f in (whole, again))
        assert again == whole, name
    for name in ["geojson/scene.geojson", "visualizations/scene.jpg"]:
        assert (out / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name

    again = open_stream(out, WINDOWS)  # a finished scene is not predicted again
    assert again.complete and again.sink.detections == resumed.sink.detections


def interrupt_after_six_tiles(out):
    """A partial output under ``out``: the blob scene's stream interrupted at its seventh tile."""
    with pytest.raises(Interrupt):
        predict_tiles(
            interrupting(blob_predictor, 6), ArrayReader(SCENE), open_stream(out, WINDOWS), progress=False
        )


def test_partial_output_of_another_run(tmp_path):
    interrupt_after_six_tiles(tmp_path)
    other = {"scene": "blobs", "vocabulary": ["red thing"]}
    with pytest.raises(ValueError, match="vocabulary"):
        open_stream(tmp_path, WINDOWS, key=other, resume="always")
    fresh = open_stream(tmp_path, WINDOWS, key=other)  # auto: starts over
    assert fresh.start_tile == 0 and not fresh.resumed
    assert not (tmp_path / "scenes" / "scene" / "detections.jsonl").read_text()
    assert open_stream(tmp_path, WINDOWS, resume="never").start_tile == 0


def test_tiles_out_of_order_are_refused(tmp_path):
    stream = open_stream(tmp_path, WINDOWS, canvas=False)
    with pytest.raises(ValueError, match="tile 1 given, tile 0 expected"):
        stream.add(1, ([], None))


def test_coco_results_join_numbers_the_annotations(tmp_path):
    files = []
    for name, count in (("a", 2), ("b", 0), ("c", 3)):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"image_id": name, "score": i / 10}) + "\n" for i in range(count)))
        files.append(str(path))
    images = [{"id": n, "height": 1, "width": 1} for n in "abc"]
    assert write_coco_results(str(tmp_path / "p.json"), images, [{"id": 1, "name": "x"}], files) == 5
    result = json.loads((tmp_path / "p.json").read_text())
    assert result["images"] == images and result["categories"] == [{"id": 1, "name": "x"}]
    assert [a["id"] for a in result["annotations"]] == [1, 2, 3, 4, 5]
    assert [a["image_id"] for a in result["annotations"]] == ["a", "a", "c", "c", "c"]


def test_partial_output_of_an_older_manifest_version_is_started_over_with_a_warning(tmp_path, caplog):
    interrupt_after_six_tiles(tmp_path)
    manifest = tmp_path / "scenes" / "scene" / "manifest.json"
    old = {**json.loads(manifest.read_text()), "version": 1}
    manifest.write_text(json.dumps(old))
    with caplog.at_level("WARNING", logger="score.predict.scene"):
        fresh = open_stream(tmp_path, WINDOWS)
    assert fresh.start_tile == 0 and not fresh.resumed
    assert any(str(manifest) in r.getMessage() and "version 1" in r.getMessage() for r in caplog.records)
