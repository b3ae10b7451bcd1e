"""The leak guard: a prompt column that determines the label on the training split is refused, naming the fix."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from dp_helpers import HR_EXPORT_COLUMNS, compose_cfg, hr_export, prepare, shared, to_csv_bytes
from hypothesis import given
from hypothesis import strategies as st
from sklearn.metrics import normalized_mutual_info_score

from data_prep import hr, tasks
from data_prep.dataset import SPLITS, drop_duplicates, split_codes
from data_prep.fast import Text, nmi_min
from data_prep.inspect import LabelLeakError, label_leaks, leak_levels
from data_prep.tasks.hr import _prompt_columns


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


@st.composite
def _labelings(draw):
    """Two labelings of one length: few or many distinct values, negative ones (blank, pooled), a sparse
    range (codes far apart), a constant one, one copied from the other with noise."""
    n = draw(st.integers(0, 300))
    k = draw(st.integers(1, 6))
    a = np.array(draw(st.lists(st.integers(-2, k), min_size=n, max_size=n)), dtype=np.int64)
    kind = draw(st.sampled_from(["free", "sparse", "constant", "noisy copy"]))
    if kind == "constant":
        b = np.full(n, draw(st.integers(-3, 5)), dtype=np.int64)
    elif kind == "noisy copy":
        noise = np.array(draw(st.lists(st.integers(-1, 40), min_size=n, max_size=n)), dtype=np.int64)
        keep = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool)
        b = np.where(keep, a, noise)
    else:
        top = 10**9 if kind == "sparse" else draw(st.integers(0, 80))
        b = np.array(draw(st.lists(st.integers(-2, top), min_size=n, max_size=n)), dtype=np.int64)
    return a, b


@given(_labelings())
def test_nmi_min_equals_scikit_learn(labelings):
    a, b = labelings
    expected = normalized_mutual_info_score(a, b, average_method="min")
    assert nmi_min(a, b) == pytest.approx(expected, abs=1e-12)
    assert nmi_min(b, a) == pytest.approx(expected, abs=1e-12)


def _guard_inputs(*overrides: str):
    """The leak guard's inputs as `data_prep.prepare` hands them over: the shown columns and the attrition
    label on the training split."""
    cfg = compose_cfg("progress=false", "out_dir=unused", *overrides)
    ex, _, _, _ = tasks.get("hr").source.build(cfg)
    ex, _ = drop_duplicates(ex)
    fractions = {name: float(cfg.splits[name]) for name in SPLITS}
    ex.frame["split"] = pd.Categorical.from_codes(
        split_codes(ex.frame["group"], ex.frame["stratum"], fractions, cfg.seed), categories=SPLITS
    )
    train = np.flatnonzero(np.asarray(ex.frame["split"] == "train"))
    return _prompt_columns(ex, cfg.data_prep, train), ex.label["attrition"].to_numpy(dtype=bool)[train]


@pytest.mark.parametrize(
    ("source", "file", "extra"),
    [
        (
            "hr_hrdataset_v14",
            "hr/HRDataset_v14.csv",
            ("+data_prep.profile.EmploymentStatus=Status", "+data_prep.profile.TermReason=Reason"),
        ),
        ("hr_ibm_attrition", "hr/ibm_hr_attrition.csv", ()),
    ],
)
def test_the_guard_scores_real_files_as_scikit_learn_does(source, file, extra):
    columns, y = _guard_inputs(f"data_prep={source}", f"input={shared(file)}", *extra)
    codes = pd.factorize(y)[0]
    expected = {
        c: normalized_mutual_info_score(codes, leak_levels(v.reset_index(drop=True)), average_method="min")
        for c, v in columns.items()
    }
    assert len(expected) >= 5
    # Every column's NMI the same float; the guard's verdict (and its rounding) follows.
    assert {c: nmi_min(codes, leak_levels(v.reset_index(drop=True))) for c, v in columns.items()} == expected
    assert label_leaks(columns, y, threshold=0.0) == dict(
        sorted(((c, round(v, 3)) for c, v in expected.items()), key=lambda kv: -kv[1])
    )


def test_the_guard_reads_the_training_rows_alike_from_pieces_and_spelt_out_prompts(hr_csv):
    cfg = compose_cfg("data_prep=hr_generic", f"input={hr_csv}", "progress=false", "out_dir=unused")
    ex, _, _, _ = hr.build(cfg)
    rows = np.flatnonzero(np.arange(len(ex.frame)) % 3 != 1)
    every = _prompt_columns(ex, cfg.data_prep)
    assert sorted(every) == ["department", "hire_date", "performance_rating", "region", "title"]
    expected = {c: list(v.iloc[rows]) for c, v in every.items()}
    assert {c: list(v) for c, v in _prompt_columns(ex, cfg.data_prep, rows).items()} == expected
    ex.text["user"] = Text([ex.text["user"].strings()])  # one spelt-out prompt per row: parsed line by line
    assert {c: list(v) for c, v in _prompt_columns(ex, cfg.data_prep, rows).items()} == expected
