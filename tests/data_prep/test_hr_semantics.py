"""HR semantics on real-looking exports: people, dates, units and censored tenure are never changed silently."""

from __future__ import annotations

import math

import pytest
from dp_helpers import HR_EXPORT_COLUMNS, hr_export, prepare, read_rejects, read_split_files, to_csv_bytes

from data_prep.answers import parse_answer, render_answer
from data_prep.metrics import duration_metrics
from data_prep.table import InputError

HEAD = "employee_id,hire_date,termination_date,title,department,actual_tenure,attrition\n"


def _run(tmp_path, text: str, *overrides: str):
    tmp_path.mkdir(parents=True, exist_ok=True)
    p = tmp_path / "hr.csv"
    p.write_text(text, encoding="utf-8")
    manifest, out = prepare(tmp_path, *HR_EXPORT_COLUMNS, f"input={p}", *overrides)
    written = {e.meta["source_line"]: e for s in read_split_files(out).values() for e in s}
    return manifest, written, {r["line"]: r["reason"] for r in read_rejects(out)}


def test_distinct_people_with_one_profile_are_all_kept(tmp_path):
    # 200 ids, one profile, 70 leavers: before, 198 were dropped as "duplicates" and the leaver share moved.
    rows = "".join(
        f"E{i},2015-01-01,{'2016-01-01' if i < 70 else ''},Analyst,Sales,,{'yes' if i < 70 else 'no'}\n"
        for i in range(200)
    )
    manifest, written, rejects = _run(tmp_path, HEAD + rows, "data_prep.as_of=2020-01-01")
    assert len(written) == 200 and not rejects
    assert manifest["label_counts"] == {
        "input": {"left": 70, "stayed": 130},
        "rejected": {},
        "written": {"left": 70, "stayed": 130},
    }


def test_same_id_twice_is_a_duplicate_and_conflicts_reject_both(tmp_path):
    text = (
        HEAD
        + (
            "E1,2015-01-01,,Analyst,Sales,2.0,no\n"
            "E2,2015-01-01,,Analyst,Sales,2.0,no\n"
            "E1,2015-01-01,,Analyst,Sales,2.0,no\n"  # E1 exported twice
            "E3,2015-01-01,,Analyst,Sales,2.0,no\n"
            "E3,2015-01-01,2016-01-01,Analyst,Sales,1.0,yes\n"  # E3 stayed and left: which is true?
        )
    )
    manifest, written, rejects = _run(tmp_path, text)
    assert sorted(written) == [2, 3]
    assert rejects[4] == "exact duplicate of hr.csv line 2 (same entity and example)"
    assert rejects[5].startswith("conflicting records of one entity id: differs from hr.csv line 6;")
    assert rejects[6].startswith("conflicting records of one entity id: differs from hr.csv line 5;")
    assert manifest["label_counts"] == {
        "input": {"left": 1, "stayed": 4},
        "rejected": {"left": 1, "stayed": 2},
        "written": {"stayed": 2},
    }


def test_without_an_id_only_identical_source_rows_are_duplicates(tmp_path):
    text = (
        "note,hire_date,title,department,actual_tenure,attrition\n"
        + (
            "a,2015-01-01,Analyst,Sales,2.0,no\n"
            "b,2015-01-01,Analyst,Sales,2.0,no\n"  # another person: an unshown column differs
            "a,2015-01-01,Analyst,Sales,2.0,no\n"  # the first row again
        )
    )
    manifest, written, rejects = _run(
        tmp_path, text, "data_prep.columns.employee_id=''", "data_prep.columns.termination_date=''"
    )
    assert sorted(written) == [2, 3]
    assert rejects == {4: "exact duplicate of hr.csv line 2 (same entity and example)"}


def test_blank_tenure_comes_from_the_dates_censored_while_employed(tmp_path):
    text = (
        HEAD
        + (
            "E1,2015-01-01,,Analyst,Sales,,no\n"  # still employed: as_of - hire, censored
            "E2,2015-01-01,2017-01-01,Analyst,Sales,,yes\n"  # left: termination - hire
            "E3,2015-01-01,,Analyst,Sales,,yes\n"  # left without a date or tenure
            "E4,2015-01-01,2019-01-01,Analyst,Sales,4.0,yes\n"  # recorded tenure wins
        )
    )
    _, written, rejects = _run(tmp_path, text, "data_prep.as_of=2020-01-01")
    assert written[2].label["tenure_years"] == round(1826 / 365.25, 3) and written[2].label["tenure_censored"]
    assert written[3].label["tenure_years"] == round(731 / 365.25, 3)
    assert not written[3].label["tenure_censored"]
    assert rejects == {4: "left but termination_date is empty"}
    assert written[5].label["tenure_years"] == 4.0


def test_blank_tenure_without_hire_date_is_rejected(tmp_path):
    text = (
        "employee_id,title,department,actual_tenure,attrition\nE1,Analyst,Sales,,no\nE2,Analyst,Sales,3,no\n"
    )
    _, written, rejects = _run(
        tmp_path, text, "data_prep.columns.hire_date=''", "data_prep.columns.termination_date=''"
    )
    assert list(written) == [3]
    assert rejects == {2: "actual_tenure is empty and no hire_date is mapped to compute it from"}


@pytest.mark.parametrize("fmt", ["prose", "json"])
def test_censored_tenure_is_never_stated_as_expected_tenure(tmp_path, fmt):
    text = HEAD + "E1,2015-01-01,,Analyst,Sales,5.0,no\nE2,2015-01-01,2018-01-01,Analyst,Sales,3.0,yes\n"
    _, written, _ = _run(tmp_path, text, f"answer_format={fmt}")
    stayed, left = written[2].answer["content"], written[3].answer["content"]
    if fmt == "prose":
        assert stayed.startswith("1. Expected Tenure: at least 5.0 years (still employed)\n")
        assert left.startswith("1. Expected Tenure: 3.0 years\n")
    else:
        assert stayed.startswith('{"tenure_years": 5.0, "tenure_censored": true, ')
        assert left.startswith('{"tenure_years": 3.0, "tenure_censored": false, ')
    assert parse_answer("hr", stayed)["tenure_censored"] is True
    assert parse_answer("hr", left)["tenure_censored"] is False
    for text in (stayed, left):
        assert render_answer("hr", parse_answer("hr", text), fmt) == text


@pytest.mark.parametrize(
    "line",
    ["Expected Tenure: at least 4 years", "Expected Tenure: 4+ years", "Expected Tenure: >= 4 years"],
)
def test_parser_reads_a_lower_bound(line):
    text = f"1. {line}\n2. Time to Next Promotion: not expected\n3. Attrition Risk: Low (10%)"
    got = parse_answer("hr", text)
    assert got["tenure_years"] == 4.0 and got["tenure_censored"] is True


def test_duration_metrics_score_a_lower_bound_as_one():
    # Labels: left at 2.0; left at 5.0; still employed at 3.0; still employed at 4.0.
    m = duration_metrics(
        [2.0, 5.0, 3.0, 4.0],
        [False, False, True, True],
        [3.0, 6.0, 2.0, 1.0],
        [False, True, True, False],
    )
    # Only the point prediction of an observed tenure is scored: |3 - 2| = 1.
    assert m["uncensored"]["mae"] == 1.0 and m["uncensored"]["predicted_at_least"] == 1
    assert m["uncensored"]["at_least_above_label"] == 1  # "at least 6" for someone who left at 5
    # "at least 2" for someone still there at 3 is true; a point 1.0 below the bound 4.0 is wrong.
    assert m["censored"] == {"n": 2, "predicted_at_least": 1, "below_bound": 1, "below_bound_share": 0.5}


def test_day_first_dates_are_read_day_first(tmp_path):
    text = (
        HEAD
        + (
            "E1,03/04/2015,,Analyst,Sales,,no\n"  # 3 April, not 4 March
            "E2,25/12/2015,28/01/2017,Analyst,Sales,,yes\n"  # each column's order is settled by a day > 12
        )
    )
    manifest, written, rejects = _run(tmp_path, text, "data_prep.as_of=2020-01-01")
    assert not rejects
    assert "- Hire Date: 2015-04-03\n" in written[2].messages[1]["content"]
    assert written[3].label["tenure_years"] == round(400 / 365.25, 3)
    assert manifest["date_formats"]["hire_date"] == {
        "formats": ["%d/%m/%Y"],
        "set_by": "inferred from the values",
    }


def test_both_date_orders_in_one_column_are_refused(tmp_path):
    text = HEAD + "E1,25/12/2015,,Analyst,Sales,,no\nE2,12/25/2015,,Analyst,Sales,,no\n"
    with pytest.raises(InputError) as e:
        _run(tmp_path, text)
    msg = str(e.value)
    assert "hire_date holds dates in both orders" in msg
    assert "hr.csv line 2: '25/12/2015'" in msg and "hr.csv line 3: '12/25/2015'" in msg
    assert "data_prep.date_formats.hire_date=%d/%m/%Y" in msg


def test_an_order_nothing_settles_is_refused_and_the_setting_fixes_it(tmp_path):
    text = HEAD + "E1,03/04/2015,,Analyst,Sales,,no\nE2,05/06/2015,,Analyst,Sales,,no\n"
    with pytest.raises(InputError, match=r"cannot be told.*data_prep.date_formats.hire_date=%d/%m/%Y"):
        _run(tmp_path / "a", text)
    manifest, written, _ = _run(tmp_path / "b", text, "+data_prep.date_formats.hire_date=%d/%m/%Y")
    assert "- Hire Date: 2015-04-03\n" in written[2].messages[1]["content"]
    assert manifest["date_formats"]["hire_date"]["set_by"] == "data_prep.date_formats.hire_date"


def test_a_configured_order_that_fails_for_many_rows_is_refused(tmp_path):
    rows = "".join(f"E{d},{d:02d}/01/2015,,Analyst,Sales,,no\n" for d in range(1, 29))
    with pytest.raises(
        InputError, match=r"16 of 28 dates do not fit data_prep.date_formats.hire_date=%m/%d/%Y"
    ):
        _run(tmp_path, HEAD + rows, "+data_prep.date_formats.hire_date=%m/%d/%Y")


def test_tenure_in_months_read_as_years_is_refused_naming_the_unit(tmp_path):
    df, _ = hr_export(40, profiles=2, order="iso", unit="months", blank_share=0.0, copies=0, seed=3)
    p = tmp_path / "hr.csv"
    p.write_bytes(to_csv_bytes(df))
    with pytest.raises(InputError, match=r"data_prep.tenure_unit=months fits 100%"):
        prepare(tmp_path, *HR_EXPORT_COLUMNS, f"input={p}", "data_prep.as_of=2024-06-30")
    manifest, out = prepare(
        tmp_path,
        *HR_EXPORT_COLUMNS,
        f"input={p}",
        "data_prep.as_of=2024-06-30",
        "data_prep.tenure_unit=months",
    )
    assert manifest["counts"]["written"] == 40 and manifest["tenure_unit_check"]["agree_share"] == 1.0
    labels = [e.label for s in read_split_files(out).values() for e in s]
    assert all(math.isfinite(x["tenure_years"]) and x["tenure_years"] < 17 for x in labels)


def test_date_fail_share_is_a_setting_named_in_the_refusal(tmp_path):
    # 16 of 28 day-first dates fail %m/%d/%Y: 57%, refused at the default share (5%) and named.
    rows = "".join(f"E{d},{d:02d}/01/2015,,Analyst,Sales,,no\n" for d in range(1, 29))
    fmt = "+data_prep.date_formats.hire_date=%m/%d/%Y"
    with pytest.raises(InputError, match=r"more than data_prep.date_fail_share=0.05 allows") as e:
        _run(tmp_path / "a", HEAD + rows, fmt)
    assert "raise data_prep.date_fail_share" in str(e.value)
    # Allowed up to 60%: the run goes on and each failing record is rejected with its value.
    manifest, written, rejects = _run(tmp_path / "b", HEAD + rows, fmt, "data_prep.date_fail_share=0.6")
    assert sorted(written) == list(range(2, 14)) and sorted(rejects) == list(range(14, 30))
    assert rejects[14].startswith("hire_date '13/01/2015' is not a date (read as %m/%d/%Y")
    assert manifest["counts"]["written"] + manifest["counts"]["rejected"] == 28


def _tenure_rows(agree: int, disagree: int) -> str:
    # Leavers hired 2015-01-01 and gone 2016-01-01 (0.999 years by the dates); the recorded tenure is 1.0
    # (agrees) or 1.8 years (0.8 off: beyond 0.5 years + 10% of 0.999).
    return "".join(
        f"E{i},2015-01-01,2016-01-01,Analyst,Sales,{1.0 if i < agree else 1.8},yes\n"
        for i in range(agree + disagree)
    )


def test_tenure_tolerance_is_a_setting_named_in_the_refusal(tmp_path):
    text = HEAD + _tenure_rows(0, 20)
    with pytest.raises(InputError) as e:
        _run(tmp_path / "a", text)
    msg = str(e.value)
    assert "agrees with hire and termination dates in 0% of 20 records" in msg
    for setting in (
        "data_prep.tenure_min_agree_share=0.5",
        "data_prep.tenure_tolerance_years=0.5",
        "data_prep.tenure_tolerance_share=0.1",
    ):
        assert setting in msg, setting
    # Within a year of the dates: every record agrees, the recorded tenure is the label.
    manifest, written, _ = _run(tmp_path / "b", text, "data_prep.tenure_tolerance_years=1.0")
    assert manifest["tenure_unit_check"] == {"unit": "years", "compared": 20, "agree_share": 1.0}
    assert {e.label["tenure_years"] for e in written.values()} == {1.8}
    # 20% of the dates' tenure on top of 0.5 years still leaves 0.8 years off: refused.
    with pytest.raises(InputError, match="in 0% of 20 records"):
        _run(tmp_path / "c", text, "data_prep.tenure_tolerance_share=0.2")


def test_tenure_min_agree_share_is_a_setting(tmp_path):
    text = HEAD + _tenure_rows(8, 12)  # 40% agree
    with pytest.raises(InputError, match=r"in 40% of 20 records with an exact end, fewer than "):
        _run(tmp_path / "a", text)
    manifest, written, _ = _run(tmp_path / "b", text, "data_prep.tenure_min_agree_share=0.4")
    assert manifest["tenure_unit_check"]["agree_share"] == 0.4 and len(written) == 20
