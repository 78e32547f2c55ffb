"""tools/collect_results.py and tools/ensemble_exponents.py (what eval_isaid.sh / eval_sior.sh call)."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import load_script

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load_tool(name):
    return load_script(f"tools/{name}.py")


def _write_result(eval_dir, target, dataset, ap, seen=None, unseen=None):
    folder = eval_dir / target / "inference" / dataset
    folder.mkdir(parents=True)
    segm = {"AP": ap, "AP50": None, "AP75": None, "per_class": []}
    if seen is not None:
        segm["seen"] = {"AP": seen, "AP50": 0.0, "AP75": 0.0, "classes": ["ship"]}
    if unseen is not None:
        segm["unseen"] = {"AP": unseen, "AP50": 0.0, "AP75": 0.0, "classes": ["airplane"]}
    (folder / "results.json").write_text(json.dumps({"dataset": dataset, "segm": segm}))


def test_collect_results_builds_the_table_1_row(tmp_path):
    collect_results = _load_tool("collect_results")
    eval_dir = tmp_path / "score_isaid" / "eval_final"
    # SCORE's published iSAID row (DATASETS.md, Table 1): average 38.68.
    _write_result(eval_dir, "nwpu", "nwpu_val_instance", 67.59, seen=70.0, unseen=55.0)
    _write_result(eval_dir, "sota", "sota_val_instance", 42.57, seen=45.125, unseen=30.0)
    _write_result(eval_dir, "fast", "fast_val_instance", 13.67)
    _write_result(eval_dir, "sior", "sior_val_instance", 30.90, seen=33.0)

    markdown = collect_results.collect(str(eval_dir), ["nwpu", "sota", "fast", "sior"])

    assert markdown == (
        "| run | nwpu | sota | fast | sior | average | nwpu seen | nwpu unseen | sota seen | sota unseen "
        "| sior seen | mean seen | mean unseen |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
        "| score_isaid | 67.59 | 42.57 | 13.67 | 30.90 | 38.68 | 70.00 | 55.00 | 45.12 | 30.00 | 33.00 "
        "| 49.38 | 42.50 |\n"
    )
    assert (eval_dir / "results.md").read_text() == markdown
    assert (eval_dir / "results.csv").read_text() == (
        "run,nwpu,sota,fast,sior,average,nwpu seen,nwpu unseen,sota seen,sota unseen,sior seen,"
        "mean seen,mean unseen\n"
        "score_isaid,67.59,42.57,13.67,30.90,38.68,70.00,55.00,45.12,30.00,33.00,49.38,42.50\n"
    )


def test_collect_results_default_order_and_nan(tmp_path):
    collect_results = _load_tool("collect_results")
    eval_dir = tmp_path / "eval_final"
    _write_result(eval_dir, "sota", "sota_val_instance", 10.0)
    _write_result(eval_dir, "nwpu", "nwpu_val_instance", None)  # no detection: null AP
    header, values = collect_results.results_row(
        {t: json.loads(open(collect_results.find_result(str(eval_dir / t))).read()) for t in ("nwpu", "sota")}
    )
    assert header == ["nwpu", "sota", "average"]
    markdown = collect_results.collect(str(eval_dir), name="run")
    assert "| run | nan | 10.00 | nan |" in markdown  # sorted folders; NaN propagates to the average


def test_collect_results_missing_target_is_an_error(tmp_path):
    collect_results = _load_tool("collect_results")
    eval_dir = tmp_path / "eval_final"
    _write_result(eval_dir, "nwpu", "nwpu_val_instance", 60.0)
    (eval_dir / "fast").mkdir()  # an evaluation that wrote nothing
    with pytest.raises(FileNotFoundError, match="fast"):
        collect_results.collect(str(eval_dir), ["nwpu", "fast"])


@pytest.mark.parametrize(
    "train, target, expected",
    [
        ("isaid", "nwpu", "0.4 0.4"),
        ("isaid", "sota", "0.0 0.4"),
        ("isaid", "fast", "0.2 0.2"),
        ("isaid", "sior", "0.4 0.4"),
        ("sior", "nwpu", "0.2 0.6"),
        ("sior", "sota", "0.0 0.2"),
        ("sior", "fast", "0.2 0.4"),
        ("sior", "isaid", "0.2 0.2"),
        ("isaid_train_instance", "nwpu_val_instance", "0.4 0.4"),
    ],
)
def test_ensemble_exponents_prints_the_authors_values(train, target, expected, capsys):
    pytest.importorskip("score.data.datasets")
    _load_tool("ensemble_exponents").main([train, target])
    out = capsys.readouterr().out
    assert out == expected + "\n"
    # The printed values are what eval_isaid.sh passes on: they must merge into the float keys.
    from score.config import get_score_cfg

    alpha, beta = out.split()
    get_score_cfg().merge_from_list(
        ["MODEL.SCORE.GEOMETRIC_ENSEMBLE_ALPHA", alpha, "MODEL.SCORE.GEOMETRIC_ENSEMBLE_BETA", beta]
    )


def test_ensemble_exponents_cli_fails_on_unknown_pair():
    env = dict(os.environ, PYTHONPATH=REPO)
    done = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "ensemble_exponents.py"), "nwpu", "fast"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
    )
    assert done.returncode != 0
    assert "No ensemble exponents" in done.stderr


def test_collect_results_builds_the_table_a_row_from_miou(tmp_path):
    collect = _load_tool("collect_results").collect
    for target, miou, seen, unseen in (("flair", 30.0, 50.0, 28.0), ("floodnet", 40.0, 60.0, 20.0)):
        folder = tmp_path / "eval_final" / target / "inference" / f"{target}_val_sem_seg"
        folder.mkdir(parents=True)
        result = {"sem_seg": {"mIoU": miou, "seen": {"mIoU": seen}, "unseen": {"mIoU": unseen}}}
        (folder / "results.json").write_text(json.dumps(result))
    table = collect(str(tmp_path / "eval_final"), ["flair", "floodnet"], name="run", task="sem_seg")
    header, _, row = table.splitlines()
    assert header.split(" | ")[1:4] == ["flair", "floodnet", "average"]
    assert row.split(" | ")[1:4] == ["30.00", "40.00", "35.00"]
    assert "mean seen" in header and "55.00" in row and "24.00" in row
