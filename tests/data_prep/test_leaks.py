"""The leak guard: a prompt column that determines the label on the training split is refused, naming the fix."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from dp_helpers import HR_EXPORT_COLUMNS, hr_export, prepare, shared, to_csv_bytes

from data_prep.inspect import LabelLeakError, label_leaks, leak_levels


def _leaky_export(tmp_path, n: int = 400):
    df, labels = hr_export(n, profiles=6, order="iso", unit="years", blank_share=0.0, copies=0, seed=3)
    left = df["attrition"] == "yes"
    rng = np.random.default_rng(0)
    # An HR system's employment status: it states the outcome in other words.
    df["EmploymentStatus"] = np.where(
        left, np.where(rng.random(len(df)) < 0.8, "Voluntarily Terminated", "Terminated for Cause"), "Active"
    )
    df["Shift"] = rng.choice(["Day", "Night"], len(df))  # unrelated to the outcome
    p = tmp_path / "leaky.csv"
    p.write_bytes(to_csv_bytes(df))
    return p


def _args(p):
    return (
        *HR_EXPORT_COLUMNS,
        f"input={p}",
        "+data_prep.profile.EmploymentStatus=Status",
        "+data_prep.profile.Shift=Shift",
    )


def test_leaking_profile_column_is_refused_with_column_nmi_and_override(tmp_path):
    p = _leaky_export(tmp_path)
    with pytest.raises(LabelLeakError) as e:
        prepare(tmp_path, *_args(p))
    msg = str(e.value)
    assert "'EmploymentStatus' (NMI 1.000)" in msg
    assert "data_prep.allow_label_columns=[EmploymentStatus]" in msg
    assert "Shift" not in msg
    assert not (tmp_path / "out").exists()


def test_override_accepts_the_column(tmp_path):
    p = _leaky_export(tmp_path)
    manifest, out = prepare(tmp_path, *_args(p), "data_prep.allow_label_columns=[EmploymentStatus]")
    assert manifest["counts"]["written"] == 400
    first = (out / "train.jsonl").read_text(encoding="utf-8").splitlines()[0]
    assert "- Status: " in first


def test_nmi_rule_on_hand_made_columns():
    y = np.array([True] * 30 + [False] * 70)
    status = pd.Series(["Quit"] * 20 + ["Fired"] * 10 + ["Active"] * 70)
    noisy = status.copy()
    noisy[:12] = "Active"  # 12 of 30 leavers look like stayers: no longer determined
    ids = pd.Series([f"E{i}" for i in range(100)])  # unique per row: pooled as rare, no leak by chance
    income = pd.Series(np.where(y, 1000.0, 5000.0) + np.arange(100))  # numeric: quantile bins still separate
    found = label_leaks({"status": status, "noisy": noisy, "ids": ids, "income": income}, y)
    assert set(found) == {"status", "income"} and found["status"] == 1.0
    assert len(np.unique(leak_levels(income))) == 10
    assert label_leaks({"status": status}, [True] * 100) == {}  # one class: nothing to leak
    # 12 rows: 12 distinct dates, each "determining" its row's label, are too few to leak (one bin).
    dates = pd.Series([f"2020-01-{d:02d}" for d in range(1, 13)])
    assert label_leaks({"hire": dates}, [True, False] * 6) == {}


@pytest.mark.parametrize(
    ("source", "file"),
    [("hr_hrdataset_v14", "hr/HRDataset_v14.csv"), ("hr_ibm_attrition", "hr/ibm_hr_attrition.csv")],
)
def test_real_files_pass_the_guard_and_their_status_columns_would_not(tmp_path, source, file):
    p = shared(file)
    manifest, _ = prepare(tmp_path, f"data_prep={source}", f"input={p}")
    assert manifest["counts"]["written"] + manifest["counts"]["rejected"] == manifest["counts"]["records"]
    if source == "hr_hrdataset_v14":  # its EmploymentStatus and TermReason state the outcome
        with pytest.raises(LabelLeakError, match=r"'EmploymentStatus' \(NMI 1.000\), 'TermReason'"):
            prepare(
                tmp_path,
                f"data_prep={source}",
                f"input={p}",
                "+data_prep.profile.EmploymentStatus=Status",
                "+data_prep.profile.TermReason=Reason",
                "overwrite=true",
            )
