"""scripts/demo_table.py: one row per target with the numbers of collect_results, unseen classes named."""

import json

from tests.conftest import load_script


def _write(folder, segm):
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"segm": segm}))


def _group(ap, classes):
    return {"AP": ap, "AP50": 0.0, "AP75": 0.0, "classes": classes}


def test_demo_table_rows_are_targets_and_unseen_classes_are_named(tmp_path):
    run = tmp_path / "run"
    _write(run / "inference" / "isaid_val_instance", {"AP": 21.94, "AP50": 32.69, "AP75": 23.87})
    evals = run / "eval_final"
    _write(
        evals / "nwpu" / "inference" / "nwpu_val_instance",
        {"AP": 10.0, "seen": _group(12.0, ["ship", "harbor"]), "unseen": _group(2.0, ["Small_Vehicle"])},
    )
    _write(evals / "sota" / "inference" / "sota_val_instance", {"AP": 20.0, "seen": _group(30.0, ["plane"])})
    collect_results = load_script("tools/collect_results.py")
    markdown = collect_results.collect(str(evals), ["nwpu", "sota"])  # also writes results.csv

    demo_table = load_script("scripts/demo_table.py")
    assert demo_table.targets_of(str(evals)) == ["nwpu", "sota"]
    assert demo_table.in_domain_line(str(run)) == "isaid_val_instance: AP 21.94  AP50 32.69  AP75 23.87"
    table = demo_table.cross_dataset_table(str(evals), ["nwpu", "sota"]).splitlines()
    assert table[1].split() == ["nwpu", "10.00", "12.00", "2.00", "2", "1"]
    assert table[2].split() == ["sota", "20.00", "30.00", "-", "1", "0"]
    assert table[3].split() == ["mean", "15.00", "21.00", "2.00"]  # the means of collect_results' row
    assert "| 15.00 |" in markdown and "| 21.00 | 2.00 |" in markdown
    assert table[-2].split() == ["nwpu", "small", "vehicle"]  # display name, not "Small_Vehicle"
    assert table[-1].split() == ["sota", "none"]
    assert max(len(line) for line in table) <= 100
