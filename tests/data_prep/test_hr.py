"""HR: labels derived as documented, censoring, rejects with line numbers, reasons from training data only."""

from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from dp_helpers import prepare, read_rejects, read_split_files, shared

from data_prep import hr
from data_prep.answers import parse_answer, render_answer
from data_prep.hr import _km_median

HAND = """employee_id,name,hire_date,termination_date,promotion_date,title,department,region,performance_rating,attrition
E1,Ann A,2015-01-01,2017-01-01,2016-01-01,Engineer,Eng,EMEA,High,yes
E2,Bob B,2016-01-01,,,Engineer,Eng,EMEA,Meets,no
E3,Cy C,3/30/2015,,,Analyst,Eng,APAC,Meets,No
E4,Di D,not a date,,,Analyst,Eng,APAC,Meets,no
E5,Ed E,2016-01-01,2015-01-01,,Analyst,Eng,APAC,Meets,yes
E6,Flo F,2016-01-01,,,Analyst,Eng,APAC,Meets,maybe
E7,Gus G,2016-01-01,,,Analyst,Eng,APAC,Meets,yes
E8,Hal H,2016-01-01,,2015-06-01,Analyst,Eng,APAC,Meets,no
E9,Ida I,2016-01-01,,,,Eng,APAC,Meets,no
E10,Bob B,2016-01-01,,,Engineer,Eng,EMEA,Meets,no
"""
DATES = ("data_prep.columns.termination_date=termination_date", "data_prep.columns.actual_tenure=''")


@pytest.fixture
def hand(tmp_path):
    p = tmp_path / "hand.csv"
    p.write_text(HAND, encoding="utf-8")
    manifest, out = prepare(
        tmp_path, "data_prep=hr_generic", f"input={p}", "data_prep.as_of=2020-01-01", *DATES
    )
    examples = [e for split in read_split_files(out).values() for e in split]
    return manifest, {e.meta["source_line"]: e for e in examples}, read_rejects(out)


def test_labels_from_dates_with_censoring(hand):
    manifest, by_line, _ = hand
    assert sorted(by_line) == [2, 3, 4, 11]
    assert by_line[2].label == {
        "tenure_years": round(731 / 365.25, 3),
        "tenure_censored": False,
        "promotion_years": round(365 / 365.25, 3),
        "promotion_censored": False,
        "attrition": True,
    }
    assert by_line[3].label == {
        "tenure_years": round(1461 / 365.25, 3),
        "tenure_censored": True,
        "promotion_years": round(1461 / 365.25, 3),
        "promotion_censored": True,
        "attrition": False,
    }
    # 3/30/2015 (month-first, unpadded) to as_of 2020-01-01 is 1738 days.
    assert by_line[4].label["tenure_years"] == round(1738 / 365.25, 3)
    assert manifest["as_of"] == "2020-01-01"


def test_bad_records_rejected_with_line_and_reason(hand):
    manifest, _, rejects = hand
    got = {r["line"]: r["reason"] for r in rejects}
    assert got[5] == (
        "hire_date 'not a date' is not a date (read as %Y-%m-%d or %m/%d/%Y; "
        "data_prep.date_formats.hire_date=<format>)"
    )
    assert got[6] == "hire_date after the termination date or as_of"
    assert got[7] == "attrition 'maybe' is in neither data_prep.true_values nor false_values"
    assert got[8] == "left but termination_date is empty"
    assert got[9] == "promotion_date before hire_date"
    assert got[10] == "title is empty (title)"
    c = manifest["counts"]
    # E10 has E2's profile: another person, kept.
    assert (c["records"], c["written"], c["rejected"]) == (10, 4, 6)


def test_answers_state_the_labels_and_no_personal_data(hand):
    _, by_line, _ = hand
    for ex in by_line.values():
        got = parse_answer("hr", ex.answer["content"])
        assert got["tenure_years"] == round(ex.label["tenure_years"], 1)
        want_promo = None if ex.label["promotion_censored"] else round(ex.label["promotion_years"], 1)
        assert got["time_to_promotion_years"] == want_promo
        assert (got["attrition_risk"] == "high") == ex.label["attrition"]
        text = ex.to_json()
        assert "Ann A" not in text and "Bob B" not in text and '"E1"' not in text
        assert ex.id.startswith("hr-") and len(ex.id) == 19
    assert "Time to Next Promotion: 1.0 years" in by_line[2].answer["content"]
    assert "Time to Next Promotion: not expected" in by_line[3].answer["content"]
    assert "- Hire Date: 2015-03-30\n" in by_line[4].messages[1]["content"]


def test_reasons_are_training_split_statistics(tmp_path, hr_csv):
    manifest, out = prepare(tmp_path, "data_prep=hr_generic", f"input={hr_csv}", "data_prep.min_cohort=5")
    splits = read_split_files(out)
    train = pd.DataFrame([{**e.label, **e.meta} for e in splits["train"]])
    for name, stats in manifest["cohorts"].items():
        if name == "all employees":
            rows = train
        else:
            parts = name.split(" / ")
            rows = train[train["department"] == parts[0]]
            if len(parts) > 1:
                rows = rows[rows["title"] == parts[1]]
        assert stats["n"] == len(rows), name
        assert stats["left"] == int(rows["attrition"].sum()), name
        km = _km_median(rows["tenure_years"].to_numpy(float), rows["attrition"].to_numpy(bool))
        assert stats["median_tenure_years"] == (None if km is None else round(km, 2)), name
    for e in splits["test"][:20]:
        cohort = f"{e.meta['department']} / {e.meta['title']}"
        s = manifest["cohorts"][cohort]
        assert f"Employees in {cohort} (n={s['n']} in training)" in e.answer["content"]
        assert parse_answer("hr", e.answer["content"])["attrition_probability"] == round(
            s["left"] / s["n"], 2
        )


@pytest.mark.parametrize("fmt", ["prose", "json"])
def test_vectorised_answers_equal_the_reference_renderer(tmp_path, hr_csv, fmt):
    _, out = prepare(tmp_path, "data_prep=hr_generic", f"input={hr_csv}", f"answer_format={fmt}")
    for e in [e for s in read_split_files(out).values() for e in s]:
        text = e.answer["content"]
        assert render_answer("hr", parse_answer("hr", text), fmt) == text


def test_same_seed_same_bytes_other_seed_other_splits(tmp_path, hr_csv):
    m1, _ = prepare(tmp_path / "a", "data_prep=hr_generic", f"input={hr_csv}")
    m2, _ = prepare(tmp_path / "b", "data_prep=hr_generic", f"input={hr_csv}")
    m3, _ = prepare(tmp_path / "c", "data_prep=hr_generic", f"input={hr_csv}", "seed=1")
    assert m1["outputs"] == m2["outputs"]
    assert m1["outputs"]["test.jsonl"]["sha256"] != m3["outputs"]["test.jsonl"]["sha256"]


def test_km_median_by_hand():
    # Times 1..4, all events: survival 0.75, 0.5 -> median 2. With the 2 censored: 0.75, 0.75, 0.375 -> 3.
    assert _km_median(np.array([1.0, 2, 3, 4]), np.array([1, 1, 1, 1], bool)) == 2.0
    assert _km_median(np.array([1.0, 2, 3, 4]), np.array([1, 0, 1, 1], bool)) == 3.0
    assert _km_median(np.array([1.0, 2]), np.array([0, 0], bool)) is None


def test_real_ibm_attrition(tmp_path):
    path = shared("hr/ibm_hr_attrition.csv")
    manifest, out = prepare(tmp_path, "data_prep=hr_ibm_attrition", f"input={path}")
    c = manifest["counts"]
    assert c["records"] == 1470 and c["written"] + c["rejected"] == 1470
    examples = [e for s in read_split_files(out).values() for e in s]
    assert (
        sum(e.label["attrition"] for e in examples) + sum("Yes" in r["reason"] for r in read_rejects(out))
        == 237
    )
    src = pd.read_csv(path, encoding="utf-8-sig")
    years = dict(zip(src.index + 2, src["YearsAtCompany"], strict=True))
    for e in examples:
        assert e.label["tenure_years"] == years[e.meta["source_line"]]
        assert e.label["tenure_censored"] == (not e.label["attrition"])
        assert e.label["promotion_years"] is None
        assert "not expected" in e.answer["content"]
        assert "Years" not in e.messages[1]["content"]
    assert manifest["label_distribution"]["test"]["left"] == pytest.approx(
        manifest["label_distribution"]["train"]["left"] / 8, abs=1
    )


def test_real_hrdataset_v14_mixed_dates_and_names(tmp_path):
    path = shared("hr/HRDataset_v14.csv")
    manifest, out = prepare(tmp_path, "data_prep=hr_hrdataset_v14", f"input={path}", "answer_format=json")
    c = manifest["counts"]
    assert c["records"] == 311 and c["written"] + c["rejected"] == 311
    src = pd.read_csv(path, encoding="utf-8-sig", dtype=str, keep_default_na=False)
    text = "\n".join(
        (out / f"{s}.jsonl").read_text(encoding="utf-8") for s in ("train", "validation", "test")
    )
    for col in ("Employee_Name", "ManagerName"):
        for name in src[col].str.strip().unique():
            assert json.dumps(name)[1:-1] not in text, name
    examples = [e for s in read_split_files(out).values() for e in s]
    left = [e for e in examples if e.label["attrition"]]
    assert len(left) + sum("Termd" in r["reason"] for r in read_rejects(out)) == 104
    assert all(not e.label["tenure_censored"] for e in left)
    assert all(e.label["tenure_years"] > 0 for e in examples)
    dates = pd.concat([src["DateofHire"], src["DateofTermination"]])
    latest = pd.to_datetime(dates[dates != ""], format="%m/%d/%Y").max()
    assert manifest["as_of"] == latest.strftime("%Y-%m-%d")


def test_whitespace_bytes_cover_every_character_strip_removes():
    for c in map(chr, range(sys.maxunicode + 1)):
        if c.isspace():
            b = c.encode("utf-8")
            assert hr._WS_FIRST[b[0]] and hr._WS_LAST[b[-1]], hex(ord(c))
    values = ["E1", " E2", "E3\u00a0", "\u3000E4\t", "", "Zürich ", "\x1cE5", "E\u00e96", "  "]
    got = hr._strip_strings(pa.array(values)).to_pylist()
    assert got == [v.strip() for v in values]


def test_hex_ids_are_the_hashes_in_hex():
    h = np.array([0, 1, 2**64 - 1, 0x0123456789ABCDEF], dtype=np.uint64)
    assert hr._hex_ids("hr-", h).to_pylist() == [f"hr-{int(x):016x}" for x in h]


def _prepare_csv(tmp_path, text: str, unmapped: tuple[str, ...], *overrides: str):
    """Convert a small HR CSV with the generic mapping, ``unmapped`` fields set to ''; (manifest, out)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    p = tmp_path / "in.csv"
    p.write_text(text, encoding="utf-8")
    cols = [f"data_prep.columns.{f}=''" for f in unmapped]
    return prepare(tmp_path, "data_prep=hr_generic", f"input={p}", *cols, *overrides)


def test_ids_strip_and_conflicting_records_of_one_id_are_all_rejected(tmp_path):
    manifest, out = _prepare_csv(
        tmp_path,
        "employee_id,hire_date,title,department,actual_tenure,attrition\n"
        "E7,2015-01-01,Analyst,Sales,1.5,no\n"
        "\u00a0E7 ,2016-01-01,Analyst,Sales,2.5,no\n"
        "E8,2016-01-01,Analyst,Sales,3.5,no\n",
        ("name", "promotion_date", "region", "performance_rating"),
    )
    examples = {e.meta["source_line"]: e for s in read_split_files(out).values() for e in s}
    assert list(examples) == [4] and len(examples[4].id) == 19
    conflict = "conflicting records of one entity id: differs from in.csv line {}; both are rejected"
    assert [(r["line"], r["reason"].split(" (")[0]) for r in read_rejects(out)] == [
        (2, conflict.format(3)),
        (3, conflict.format(2)),
    ]
    assert manifest["label_counts"] == {
        "input": {"stayed": 3},
        "rejected": {"stayed": 2},
        "written": {"stayed": 1},
    }


def test_tenure_that_is_no_date_span_is_rejected_or_kept_without_crashing(tmp_path):
    text = (
        "employee_id,hire_date,promotion_date,title,department,actual_tenure,attrition\n"
        "E1,2015-01-01,2016-01-01,Analyst,Sales,inf,no\n"
        "E2,2015-01-01,,Analyst,Sales,1e300,no\n"
        "E3,2015-01-01,2016-01-01,Analyst,Sales,3,no\n"
        "E4,2015-01-01,,Analyst,Sales,60.5,no\n"
    )
    unmapped = ("name", "region", "performance_rating")
    manifest, out = _prepare_csv(tmp_path / "a", text, unmapped)
    bound = "is more years than data_prep.max_tenure_years (60); fix the record or raise the bound"
    assert [(r["line"], r["reason"]) for r in read_rejects(out)] == [
        (2, "actual_tenure 'inf' is not a non-negative number of years"),
        (3, f"actual_tenure '1e300' {bound}"),
        (5, f"actual_tenure '60.5' {bound}"),
    ]
    c = manifest["counts"]
    assert (c["records"], c["written"], c["rejected"]) == (4, 1, 3)

    # Raised past it, 1e300 years is kept: no end of employment that far out, so no promotion window.
    manifest, out = _prepare_csv(tmp_path / "b", text, unmapped, "data_prep.max_tenure_years=1e301")
    assert [r["line"] for r in read_rejects(out)] == [2]
    labels = {e.meta["source_line"]: e.label for s in read_split_files(out).values() for e in s}
    assert labels[3]["tenure_years"] == 1e300 and labels[3]["promotion_years"] is None
    assert labels[4]["promotion_years"] == round(365 / 365.25, 3) and not labels[4]["promotion_censored"]


def test_tenure_from_dates_longer_than_a_working_life_is_rejected(tmp_path):
    manifest, out = _prepare_csv(
        tmp_path,
        "employee_id,hire_date,termination_date,title,department,attrition\n"
        "E1,1901-05-01,,Analyst,Sales,no\n"
        "E2,2001-05-01,2020-01-01,Analyst,Sales,yes\n"
        "E3,2010-05-01,,Analyst,Sales,no\n",
        ("name", "promotion_date", "region", "performance_rating", "actual_tenure"),
        "data_prep.columns.termination_date=termination_date",
    )
    [reject] = read_rejects(out)
    assert reject["line"] == 2 and "max_tenure_years (60)" in reject["reason"]
    labels = {e.meta["source_line"]: e.label for s in read_split_files(out).values() for e in s}
    assert labels[3]["tenure_years"] == round(
        (pd.Timestamp("2020-01-01") - pd.Timestamp("2001-05-01")).days / 365.25, 3
    )
