"""tools/digits_metric.py --record: the scores of a run become a row of the record, with the
run's provenance and the classifier's hash, and results_table renders it."""

import json
import os
import sys

from conftest import ROOT, load_script, tiny_args

sys.path.insert(0, os.path.join(ROOT, "tools"))

import digits_metric  # noqa: E402
import results_table  # noqa: E402


def test_record_writes_a_row_with_its_provenance(in_tmp, monkeypatch):
    m = load_script("dcgan")
    m.main([*tiny_args(m), "--steps", "2", "--out", "run"])
    record = in_tmp / "results.json"
    record.write_text(json.dumps({"measurements": []}))
    monkeypatch.setattr(results_table, "RECORD", str(record))
    digits_metric.main(
        [
            "run",
            "--num-samples",
            "100",
            "--record",
            "off-bench",
            "--key",
            "tiny",
            "--note",
            "python dcgan.py (tiny)",
        ]
    )
    (row,) = json.loads(record.read_text())["measurements"]
    assert row["table"] == "off-bench" and row["key"] == "tiny" and row["steps"] == 2
    assert row["script"] == "dcgan" and row["dataset"] == "digits" and len(row["classifier"]) == 12
    assert row["command"].startswith("python tools/digits_metric.py run ")
    assert {"fd", "recall", "within_class_spread", "coverage", "commit", "date", "cpu"} <= set(row)
    table = results_table.render("off-bench", json.loads(record.read_text()))
    assert "| tiny | 2 |" in table
