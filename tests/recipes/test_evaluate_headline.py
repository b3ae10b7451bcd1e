"""The score line `python -m recipes.evaluate` (and so `make predict`) prints: the headline metrics with their
intervals and, for a label group, the accuracy of always answering the majority class."""

from __future__ import annotations

import json

from recipes.evaluate import headline_lines, majority_share, run


def test_majority_share_is_the_largest_reference_row_of_the_confusion_matrix():
    # rows are references: 38 high (36 + 2), 26 low (7 + 19) -> 38 / 64
    assert majority_share({"confusion": {"labels": ["high", "low"], "matrix": [[36, 2], [7, 19]]}}) == 38 / 64
    assert majority_share({"mae": 1.0}) is None  # a numeric group has no classes


def test_headline_lines_of_a_real_report(fixture_eval):
    report = json.loads(run(fixture_eval("bootstrap.samples=200"))["report"].read_text())
    lines = headline_lines(report)
    groups = [(task, name) for task, gs in report["tasks"].items() for name in gs]
    assert len(lines) == len(groups)
    for line, (task, name) in zip(lines, groups, strict=True):
        entry = report["tasks"][task][name]
        assert line.startswith(f"  {task} {name}: ")
        for metric, value in entry["headline"].items():
            if value is not None and value == value:  # NaN (undefined on this data) is left out
                assert f"{metric} {value:.3f} (95% CI " in line
        share = majority_share(entry["metrics"])
        assert ("majority class" in line) == (share is not None)
        assert share is None or line.endswith(f", majority class {share:.3f}")
    assert any("majority class" in line for line in lines)  # the fixtures hold a label task
