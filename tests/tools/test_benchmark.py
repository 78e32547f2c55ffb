"""tools/bench/benchmark.py on the tiny model: one repeat at a tiny size (smoke test, no timing asserts)."""

import os

import pytest

from tests.conftest import load_script

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def benchmark():
    return load_script("tools/bench/benchmark.py")


@pytest.fixture(scope="module")
def model_rows(benchmark):
    rows = []
    for variant in benchmark.VARIANTS:
        rows += benchmark.benchmark_variant(
            "tiny",
            variant,
            device="cpu",
            sizes=[(64, 96)],
            batch_sizes=[1],
            repeats=1,
            train_repeats=1,
            skip_train=False,
            compare_no_grad=True,
        )
    return rows


def test_model_rows_side_by_side(benchmark, model_rows):
    table = benchmark.side_by_side(model_rows)
    assert [(r["task"], r["HxW"], r["batch"]) for r in table] == [
        ("inference", "64x96", 1),
        ("inference (no_grad)", "64x96", 1),
        ("train step", "64x96", 1),
    ]
    for row in table:
        assert row["arch"] == "tiny (random init)"
        for column in (
            "SCORE ms",
            "FC-CLIP ms",
            "ms ratio",
            "SCORE img/s",
            "SCORE peak MB",
            "FC-CLIP peak MB",
        ):
            assert row[column] > 0, column
    inference = table[0]
    assert inference["SCORE GFLOPs"] > 0 and inference["FC-CLIP GFLOPs"] > 0
    # SCORE adds RAI, GCA and the context tower to the baseline: more flops, never fewer.
    assert inference["GFLOPs ratio"] > 1
    assert table[2]["SCORE GFLOPs"] is None  # flops are counted on the inference forward only


def test_baseline_has_fewer_parameters(model_rows):
    params = {row["variant"]: row["params_m"] for row in model_rows}
    assert params["SCORE"] > params["FC-CLIP"] > 0


def test_text_classifier_rows(benchmark, tmp_path):
    rows = benchmark.benchmark_text_classifier(
        "tiny", device="cpu", vocabularies=["NWPU", "ISAID"], cache_dir=str(tmp_path)
    )
    assert [r["vocabulary"] for r in rows] == ["NWPU", "ISAID"]
    assert rows[0]["classes"] == 10 and rows[0]["prompts"] == 10 * 18
    for row in rows:
        assert row["cold_ms"] > 0 and row["memory_ms"] > 0 and row["disk_ms"] > 0
    assert len(list(tmp_path.glob("text_classifier_*.pt"))) == 2  # the disk rows read real cache files


def test_evaluation_rows_and_render(benchmark, model_rows):
    rows = benchmark.benchmark_evaluation(images=2, dets=20, size=64, backends=["pycocotools"])
    assert len(rows) == 3 and all(r["seconds"] > 0 for r in rows)
    report = {
        "machine": benchmark.machine_info("cpu"),
        "command": "test",
        "models": model_rows,
        "text": [],
        "evaluation": rows,
    }
    text = benchmark.render(report)
    assert "| tiny (random init) | inference " in text and "SCORE ms" in text and "COCO eval" in text


def test_profile_has_every_stage_and_renders(benchmark):
    """--profile: each labelled stage of inference and of a training step appears with its calls."""
    rows = benchmark.profile_variant("tiny", device="cpu", size=(64, 96), tasks=["inference", "train step"])
    by_task = {}
    for row in rows:
        by_task.setdefault(row["task"], {})[row["stage"]] = row
    stages = dict(benchmark.PROFILE_STAGES)
    inference, train = by_task["inference"], by_task["train step"]
    for label in (
        "score.backbone",
        "score.context_tower",
        "score.pixel_decoder",
        "score.transformer_decoder",
    ):
        assert stages[label] in inference and stages[label] in train
    assert inference[stages["score.postprocessing"]]["calls"] == 1
    assert stages["score.losses"] not in inference and stages["score.backward"] in train
    # RAI runs once per prediction in training, DEC_LAYERS (10) times per step, and for the
    # last prediction only at inference.
    assert inference[stages["score.rai"]]["calls"] == 1
    assert train[stages["score.rai"]]["calls"] == 10
    assert inference[stages["score.decoder_layers"]]["calls"] == 3 * 9
    total = inference["total (profiled)"]["ms"]
    top = [r["ms"] for s, r in inference.items() if s in stages.values() and not s.startswith("of which")]
    assert 0 < sum(top) <= total
    text = benchmark.render_profile(
        {"machine": {"device": "cpu"}, "command": "test", "profile": rows, "profile_size": (64, 96)}
    )
    assert "tiny inference ms" in text and "tiny train step ms" in text
