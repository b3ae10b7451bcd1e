"""Reading CSV exports: every record is a row or a reject with the right line number."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pytest
from dp_helpers import hr_rows, shared, to_csv_bytes
from hypothesis import given, settings
from hypothesis import strategies as st

from data_prep import table
from data_prep.table import InputError, read_table


def _write(tmp_path, data: bytes, name="x.csv"):
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_bom_crlf_and_header_whitespace(tmp_path):
    t = read_table(_write(tmp_path, b"\xef\xbb\xbf a ,b\r\n1,2\r\n3,4\r\n"))
    assert list(t.frame.columns) == ["a", "b"]
    assert t.frame["b"].tolist() == ["2", "4"]
    assert t.line.tolist() == [2, 3]
    assert t.rejects == []


def test_quoted_newlines_keep_source_line_numbers(tmp_path):
    data = b'a,b\n1,"x\ny\nz"\n2,ok\n3,"p\r\nq"\n'
    t = read_table(_write(tmp_path, data))
    assert t.frame["a"].tolist() == ["1", "2", "3"]
    assert t.line.tolist() == [2, 5, 6]
    assert t.frame["b"][0] == "x\ny\nz"


@pytest.mark.parametrize("quoted", [False, True])
def test_wrong_field_counts_blank_lines_and_cut_off_end(tmp_path, quoted):
    q = '"' if quoted else ""
    data = f"a,b,c\n1,2,3\n4,5\n\n6,7,8,9\n{q}1{q},2,3\n10,1".encode()
    t = read_table(_write(tmp_path, data))
    assert t.line.tolist() == [2, 6]
    got = {r.line: r.reason for r in t.rejects}
    assert set(got) == {3, 4, 5, 7}
    assert "has 2 field(s)" in got[3]
    assert got[4] == "blank line"
    assert "has 4 field(s)" in got[5]
    assert got[7].startswith("truncated record")
    assert t.n_records == 6


def test_invalid_utf8_rejects_only_that_record(tmp_path):
    data = "a,b\n1,é\n2,".encode() + b"\xff\xfe" + b"\n3,ok\n"
    t = read_table(_write(tmp_path, data))
    assert t.frame["a"].tolist() == ["1", "3"]
    assert [(r.line, "UTF-8" in r.reason) for r in t.rejects] == [(3, True)]


@pytest.mark.parametrize("multiline", [False, True])
def test_huge_field_is_rejected_not_read(tmp_path, multiline):
    big = "x" * 5000
    nl = '"z\nz"' if multiline else "z"
    data = f"a,b\n1,{big}\n2,{nl}\n".encode()
    t = read_table(_write(tmp_path, data), max_field_chars=1000)
    assert t.frame["a"].tolist() == ["2"]
    assert len(t.rejects) == 1 and t.rejects[0].line == 2 and "max_field_chars=1000" in t.rejects[0].reason


def test_fast_and_exact_paths_agree(tmp_path):
    df = hr_rows(300)
    df.loc[5, "name"] = 'Doe, "Jay"'
    raw = to_csv_bytes(df, crlf=True)
    fast = table._read_csv_fast(raw, 100_000, False, ",")
    arrow = table._read_csv_arrow(raw, 100_000, False, ",")
    exact = table._read_csv_exact(raw, 100_000, False, ",")
    assert fast is not None and arrow is not None
    pd.testing.assert_frame_equal(fast.frame, exact.frame)
    pd.testing.assert_frame_equal(arrow.frame, exact.frame)
    assert fast.line.tolist() == arrow.line.tolist() == exact.line.tolist() == list(range(2, 302))


def _pandas_or_exact(raw: bytes, max_field_chars: int):
    return table._read_csv_fast(raw, max_field_chars, False, ",") or table._read_csv_exact(
        raw, max_field_chars, False, ","
    )


def _assert_same(a, b):
    pd.testing.assert_frame_equal(a.frame, b.frame)
    assert a.line.tolist() == b.line.tolist()
    assert a.rejects == b.rejects


def test_arrow_path_reads_what_pandas_reads(tmp_path):
    data = (
        "a,b,c\n"
        "1,2,3\n"
        "\n"  # blank line 3
        "4,5\n"  # too few fields, line 4
        '6,"x, ""y""",' + "z" * 40 + "\n"  # quoted field; an over-long field on line 5
        "   \n"  # whitespace only, line 6
        "7,8,9\n"
        "10,11"  # cut off, line 8
    ).encode()
    arrow = table._read_csv_arrow(data, 30, False, ",")
    assert arrow is not None and isinstance(arrow.data, pa.Table)
    _assert_same(arrow, _pandas_or_exact(data, 30))
    assert arrow.line.tolist() == [2, 7]
    assert [r.line for r in arrow.rejects] == [3, 4, 5, 6, 8]
    assert arrow.rejects[2].reason.startswith("a field has 40 characters")
    assert arrow.rejects[4].reason.startswith("truncated record")


@pytest.mark.parametrize(
    "data",
    [
        b"a,b\n1,2,3\n",  # extra fields: pandas skips the record, so the exact path reads the file
        b'a,b\n1,"x\ny"\n',  # a quoted line break
        b"a,b\n1,\xff\n",  # invalid UTF-8
        b"a,a\n1,2\n",  # repeated header names
        b'a,b\n1,"x"y\n',  # a quote the csv module rejects
    ],
)
def test_arrow_path_leaves_other_files_to_the_other_paths(data):
    assert table._read_csv_arrow(data, 100, False, ",") is None


clean_fields = st.sampled_from(
    [b"", b"a", b"12", b" ", b"\t", b'""', b'"x,y"', b'"q""q"', b"\xc3\xa9", b"\xe2\x80\x83", b"\xc2\xa0"]
    + [b'ab""c', b"aaaaaaa"]
)
# Mostly three fields (the headers' count), now and then fewer or none (a blank line).
csv_lines = st.one_of(
    *[st.lists(clean_fields, min_size=3, max_size=3)] * 8, st.lists(clean_fields, max_size=3)
).map(b",".join)
# Bytes that send a file to another path (or not, if they land in a quoted field).
broken = st.sampled_from([b'"\n"', b"\xff", b"\x00", b'"ab"c', b"\r", b'"', b",x"])


@settings(max_examples=300, deadline=None)
@given(
    header=st.sampled_from([b"a,b,c", b'"a","b,c",d', b" a , b ,c", b"x"]),
    lines=st.lists(csv_lines, max_size=12),
    newline=st.sampled_from([b"\n", b"\r\n"]),
    cut_off=st.booleans(),
    damage=st.none() | st.tuples(st.integers(0, 400), broken),
    max_field_chars=st.sampled_from([3, 100]),
)
def test_arrow_and_pandas_paths_agree_on_any_bytes(header, lines, newline, cut_off, damage, max_field_chars):
    raw = newline.join([header, *lines]) + (b"" if cut_off else newline)
    if damage:
        at = len(header) + damage[0] % max(1, len(raw) - len(header))
        raw = raw[:at] + damage[1] + raw[at:]
    arrow = table._read_csv_arrow(raw, max_field_chars, False, ",")
    if arrow is not None:
        _assert_same(arrow, _pandas_or_exact(raw, max_field_chars))


def test_arrow_and_pandas_paths_agree_on_real_files():
    for name in ("hr/HRDataset_v14.csv", "hr/ibm_hr_attrition.csv"):
        path = shared(name)
        arrow = read_table(path, arrow=True)
        assert isinstance(arrow.data, pa.Table)
        _assert_same(arrow, read_table(path))


def test_parquet_rows_numbered_from_one(tmp_path):
    p = tmp_path / "x.parquet"
    pd.DataFrame({"a": [1, None], "d": pd.to_datetime(["2020-01-02", None])}).to_parquet(p)
    t = read_table(p)
    assert t.frame["a"].tolist() == ["1.0", ""]
    assert t.frame["d"].tolist() == ["2020-01-02", ""]
    assert t.line.tolist() == [1, 2]


def test_unreadable_inputs_say_what_to_pass(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_table(tmp_path / "missing.csv")
    with pytest.raises(InputError, match="empty"):
        read_table(_write(tmp_path, b"\n\n"))


@pytest.mark.parametrize(
    ("name", "n_rows", "line"),
    [
        ("tickets/dataset-tickets-multi-lang3-4k.TRUNCATED.csv", 1167, 21568),
        ("tickets/aa_dataset-tickets-multi-lang-5-2-50-version.TRUNCATED.csv", 1872, 1874),
    ],
)
def test_real_ticket_files_reject_the_cut_off_last_row(name, n_rows, line):
    t = read_table(shared(name))
    assert len(t.frame) == n_rows
    assert [r.line for r in t.rejects] == [line]
    assert t.rejects[0].reason.startswith("truncated record")
    assert t.line[-1] < line
