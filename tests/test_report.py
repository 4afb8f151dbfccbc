"""Aggregation, Welch significance marks, RelaImpr and the paper comparison."""

import math

import pytest
from scipy import stats

from mdr_tf import report


def _rows(model, aucs):
    return [{"model": model, "test_auc": a, "test_logloss": 0.5, "test_wauc": a, "test_mean_auc": a,
             "train_seconds": 1.0, "best_epoch": 1, "test_auc_d0": a, "test_logloss_d0": 0.5} for a in aucs]


def test_significance_relaimpr_and_markdown():
    rows = _rows("dnn", [0.70, 0.71, 0.69]) + _rows("star", [0.72, 0.721, 0.719]) + \
        _rows("mlora", [0.75, 0.751, 0.749])
    summary = report.aggregate(rows, ["dnn", "star", "mlora"], 1)
    report.add_significance(summary, rows, base_model="dnn")
    by = {s["model"]: s for s in summary}
    # mlora (a seed model) is compared to the best non-seed model: star.
    assert by["mlora"]["compared_to"] == "star"
    want_p = stats.ttest_ind([0.75, 0.751, 0.749], [0.72, 0.721, 0.719], equal_var=False).pvalue
    assert by["mlora"]["p_value"] == pytest.approx(want_p)
    assert by["mlora"]["significant"]
    assert by["mlora"]["relaimpr"] == pytest.approx(((0.75 - 0.5) / (0.70 - 0.5) - 1) * 100)
    assert by["dnn"]["relaimpr"] == pytest.approx(0.0)
    assert not by["dnn"]["significant"]  # dnn is worse than star
    md = report.markdown_table(summary, 1)
    assert "| mlora | 3 | 0.7500 ± 0.0010* |" in md
    assert "| dnn | 3 | 0.7000 ± 0.0100 |" in md


def test_single_trial_has_no_p_value():
    rows = _rows("dnn", [0.7]) + _rows("star", [0.8])
    summary = report.aggregate(rows, ["dnn", "star"], 1)
    report.add_significance(summary, rows, base_model="dnn")
    assert all(math.isnan(s["p_value"]) and not s["significant"] for s in summary)


def test_paper_comparison_marks_missing_numbers():
    rows = _rows("dnn", [0.7, 0.72])
    summary = report.aggregate(rows, ["dnn"], 1)
    text = report.paper_comparison(summary, {"metric_columns": ["AUC", "LogLoss"], "source": "T1",
                                             "rows": {"dnn": {"AUC": 0.659, "LogLoss": None},
                                                      "ple": {"AUC": 0.66, "LogLoss": 0.52}}})
    assert "| dnn | 0.6590 | not found | 0.7100 | 0.5000 |" in text
    assert "| ple | 0.6600 | 0.5200 | not run | not run |" in text
