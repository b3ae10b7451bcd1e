"""Property tests: malformed rows never crash a run and every row is written or rejected at its line."""

from __future__ import annotations

import copy
import csv
import functools
import io
import os
from collections import Counter
from datetime import date
from unittest import mock

from dp_helpers import (
    HR_COLUMNS,
    HR_EXPORT_COLUMNS,
    compose_cfg,
    hr_export,
    prepare,
    read_rejects,
    read_split_files,
    to_csv_bytes,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from data_prep.config import SALT_ENV
from data_prep.prepare import NothingWrittenError, run
from data_prep.table import InputError, read_table

HEADER = HR_COLUMNS
MAX_FIELD = 300
CORRUPTIONS = [
    "none",
    "missing_column",
    "extra_column",
    "bad_date",
    "empty_title",
    "invalid_utf8",
    "huge_field",
]

free_text = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters="\r\x00"), max_size=30
)
row = st.fixed_dictionaries(
    {
        "name": free_text,
        "hire_date": st.dates(date(1970, 1, 1), date(2030, 12, 31)).map(lambda d: d.strftime("%Y-%m-%d")),
        "title": st.sampled_from(["Engineer", "Analyst", "Engineer, Senior", 'The "Boss"']),
        "department": st.sampled_from(["Eng", "Sales"]),
        "performance_rating": st.sampled_from(["", "Meets", "Exceeds"]),
        "actual_tenure": st.floats(0, 40).map(lambda x: f"{x:.2f}"),
        "attrition": st.sampled_from(["yes", "No", "TRUE", "0"]),
        "corruption": st.sampled_from(CORRUPTIONS),
    }
)


@functools.cache
def _base_cfg():
    return compose_cfg(
        "data_prep=hr_generic",
        "input=unset",
        "progress=false",
        f"max_field_chars={MAX_FIELD}",
        "data_prep.min_cohort=1",
    )


def _encode(rows, crlf: bool, bom: bool) -> tuple[bytes, list[int]]:
    """The CSV bytes and the line each row starts on."""
    end = "\r\n" if crlf else "\n"
    out, starts, line = [(",".join(HEADER) + end).encode()], [], 2
    for i, r in enumerate(rows):
        values = {
            **r,
            "employee_id": f"E{i}",
            "promotion_date": "",
            "region": "EMEA",
        }
        c = r["corruption"]
        if c == "bad_date":
            values["hire_date"] = "2015-13-45"
        elif c == "empty_title":
            values["title"] = ""
        elif c == "huge_field":
            values["title"] = "x" * (MAX_FIELD + 1)
        fields = [str(values[h]) for h in HEADER]
        if c == "missing_column":
            fields = fields[:-1]
        elif c == "extra_column":
            fields = [*fields, "surplus"]
        buf = io.StringIO()
        csv.writer(buf, lineterminator=end).writerow(fields)
        text = buf.getvalue()
        data = text.encode()
        if c == "invalid_utf8":
            data = data.replace(b"E", b"E\xff\xfe", 1)
        out.append(data)
        starts.append(line)
        line += text.count("\n")
    return (b"\xef\xbb\xbf" if bom else b"") + b"".join(out), starts


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(row, min_size=1, max_size=25),
    crlf=st.booleans(),
    bom=st.booleans(),
    fmt=st.sampled_from(["prose", "json"]),
)
def test_malformed_hr_rows_are_all_accounted_for(tmp_path_factory, rows, crlf, bom, fmt):
    tmp = tmp_path_factory.mktemp("prop")
    data, starts = _encode(rows, crlf, bom)
    (tmp / "hr.csv").write_bytes(data)
    cfg = copy.deepcopy(_base_cfg())
    cfg.input, cfg.out_dir, cfg.answer_format = str(tmp / "hr.csv"), str(tmp / "out"), fmt
    # A UTF-8 export with corrupted bytes: declared, since an ASCII file whose only other bytes are invalid UTF-8
    # is detected as cp1252 (test_reading.py covers detection).
    cfg.encoding = "utf-8"
    with mock.patch.dict(os.environ, {SALT_ENV: "s"}):
        try:
            manifest = run(cfg, log_fn=lambda _: None)
        except NothingWrittenError:
            # Every row corrupted: the run refuses to write an empty dataset (a "none" row is never rejected
            # unless an equal one is written).
            assert all(r["corruption"] != "none" for r in rows)
            return
    written = {e.meta["source_line"] for s in read_split_files(tmp / "out").values() for e in s}
    rejected = {r["line"]: r["reason"] for r in read_rejects(tmp / "out")}
    assert manifest["counts"]["records"] == len(rows)
    assert len(written) + len(rejected) == len(rows)
    assert written.isdisjoint(rejected)
    assert written | set(rejected) == set(starts)
    for r, line in zip(rows, starts, strict=True):
        if r["corruption"] != "none":
            assert line in rejected, (r["corruption"], line)
        elif line in rejected:
            assert rejected[line].startswith("exact duplicate"), rejected[line]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=400), bom=st.booleans())
def test_arbitrary_bytes_never_crash_the_reader(tmp_path_factory, body, bom):
    p = tmp_path_factory.mktemp("bytes") / "x.csv"
    p.write_bytes((b"\xef\xbb\xbf" if bom else b"") + b"a,b,c\n" + body)
    try:
        t = read_table(p, max_field_chars=50)
    except InputError:
        return
    assert len(t.frame) == len(t.line)
    lines = list(t.line) + [r.line for r in t.rejects]
    assert len(set(lines)) == len(lines)
    assert all(2 <= x <= body.count(b"\n") + body.count(b"\r") + 2 for x in lines)
    assert all(isinstance(v, str) and len(v) <= 50 for col in t.frame for v in t.frame[col])


def test_cfg_is_plain_omegaconf():
    cfg = compose_cfg("data_prep=hr_generic", "input=x.csv")
    assert OmegaConf.select(cfg, "data_prep.columns.hire_date") == "hire_date"


@settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    n=st.integers(1, 40),
    profiles=st.integers(1, 4),
    order=st.sampled_from(["iso", "dmy", "mdy"]),
    unit=st.sampled_from(["years", "months"]),
    blank_share=st.sampled_from([0.0, 0.5, 1.0]),
    copies=st.integers(0, 3),
    seed=st.integers(0, 2**16),
)
def test_generated_hr_exports_keep_people_labels_and_counts(
    tmp_path_factory, n, profiles, order, unit, blank_share, copies, seed
):
    df, labels = hr_export(
        n, profiles=profiles, order=order, unit=unit, blank_share=blank_share, copies=copies, seed=seed
    )
    runs = {}
    for name, rows in (("as_is", df), ("shuffled", df.sample(frac=1.0, random_state=seed))):
        tmp = tmp_path_factory.mktemp(name)
        (tmp / "hr.csv").write_bytes(to_csv_bytes(rows))
        manifest, out = prepare(
            tmp,
            *HR_EXPORT_COLUMNS,
            f"input={tmp / 'hr.csv'}",
            f"data_prep.tenure_unit={unit}",
            "data_prep.as_of=2024-06-30",
        )
        written = [e for s in read_split_files(out).values() for e in s]
        c = manifest["counts"]
        assert (
            c["records"] == len(rows) == c["written"] + c["rejected"] == len(written) + len(read_rejects(out))
        )
        # Every person is written once: distinct ids with identical profiles are kept, copies dropped.
        assert len(written) == len(labels) and c["rejected"] == copies
        stated = Counter("left" if v == "yes" else "stayed" for v in rows["attrition"])
        rejected = Counter(manifest["label_counts"]["rejected"])
        got = Counter("left" if e.label["attrition"] else "stayed" for e in written)
        assert got == stated - rejected and rejected.total() == c["rejected"]
        assert got == Counter("left" if v else "stayed" for v in labels.values())
        for e in written:
            assert e.label["tenure_censored"] == (not e.label["attrition"])
            assert ("at least" in e.answer["content"]) == e.label["tenure_censored"]
        runs[name] = {e.id: (e.label, e.answer["content"]) for e in written}
    assert runs["as_is"] == runs["shuffled"]
