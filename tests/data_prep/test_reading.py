"""Reading real exports: delimiter and encoding detection, .tsv, .xlsx, long fields and NUL bytes.

The property test writes generated records in every delimiter and encoding, feeds the same bytes to
each reader path (Arrow, pandas, exact) and requires the rows, line numbers and rejects that the
records themselves dictate, the same from every path.
"""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data_prep import table
from data_prep.table import NUL_REASON, InputError, read_csv_bytes, read_table

READERS = {"arrow": ("arrow", "pandas", "exact"), "pandas": ("pandas", "exact"), "exact": ("exact",)}
MAX = 50
# Each non-ASCII character is followed by an ASCII one, so a cp1252 file never holds a valid UTF-8
# sequence by chance (that file would be read as damaged UTF-8: see test_utf8_with_damaged_records).
TOKENS = ["a", "7", " ", "Zoë ", "é1", "€5", "Köln", '"q"', ",", ";", "\t", "|", "x\ny", "\x00"]
LONG = ["L" * (MAX + 10), "M" * 140_000 + ",;\t|"]  # the second is over the csv module's own limit


def _read_all(raw: bytes, **kw) -> dict:
    return {name: read_csv_bytes(raw, max_field_chars=MAX, readers=r, **kw) for name, r in READERS.items()}


def _assert_same(a, b):
    pd.testing.assert_frame_equal(a.frame, b.frame)
    assert a.line.tolist() == b.line.tolist()
    assert a.rejects == b.rejects
    assert (a.delimiter, a.encoding) == (b.delimiter, b.encoding)


def _quote(value: str, delimiter: str, always: bool) -> str:
    if always or any(c in value for c in (delimiter, '"', "\n", "\r")):
        return '"' + value.replace('"', '""') + '"'
    return value


fields = st.one_of(
    st.lists(st.sampled_from(TOKENS), max_size=4).map("".join),
    st.lists(st.sampled_from(TOKENS), max_size=4).map("".join),
    st.sampled_from(LONG),
)


@settings(derandomize=True, database=None, max_examples=120, deadline=None)
@given(
    delimiter=st.sampled_from(list(",;\t|")),
    encoding=st.sampled_from(["utf-8", "utf-8-sig", "cp1252"]),
    width=st.integers(2, 4),
    records=st.lists(
        st.tuples(st.lists(fields, min_size=4, max_size=4), st.sampled_from([None, "", "  "]), st.booleans()),
        max_size=8,
    ),
    newline=st.sampled_from(["\n", "\r\n"]),
    final_newline=st.booleans(),
)
def test_every_reader_reads_what_the_records_dictate(
    delimiter, encoding, width, records, newline, final_newline
):
    header = ["id", "name", "city", "note"][:width]
    lines = [delimiter.join(header)]
    kept, kept_lines, rejects = [], [], []
    line_no = 1
    for values, blank_before, quote_all in records:
        if blank_before is not None:
            line_no += 1
            lines.append(blank_before)
            rejects.append(table.Reject(line_no, "blank line"))
        values = values[:width]
        line_no += 1
        text = delimiter.join(_quote(v, delimiter, quote_all) for v in values)
        lines.append(text)
        longest = max(len(v) for v in values)
        if any("\x00" in v for v in values):
            rejects.append(table.Reject(line_no, NUL_REASON))
        elif longest > MAX:
            rejects.append(table.Reject(line_no, table._too_long(longest, MAX)))
        else:
            kept.append(values)
            kept_lines.append(line_no)
        line_no += text.count("\n")
    body = newline.join(lines) + (newline if final_newline or not records else "")
    raw = body.encode(encoding)
    got = _read_all(raw)
    for t in got.values():
        assert t.delimiter == delimiter
        assert t.encoding == ("utf-8" if encoding == "cp1252" and raw.isascii() else encoding)
        assert list(t.frame.columns) == header
        assert t.frame.values.tolist() == kept
        assert t.line.tolist() == kept_lines
        assert t.rejects == rejects
    _assert_same(got["arrow"], got["exact"])
    _assert_same(got["pandas"], got["exact"])


@settings(derandomize=True, database=None, max_examples=100, deadline=None)
@given(
    delimiter=st.sampled_from(list(",;\t|")),
    lines=st.lists(
        st.lists(st.sampled_from(TOKENS + ['"', "\r", "ab\xff"]), max_size=6).map("".join), max_size=8
    ),
    encoding=st.sampled_from(["utf-8", "cp1252"]),
)
def test_every_reader_agrees_on_damaged_bytes(delimiter, lines, encoding):
    raw = "\n".join([delimiter.join(["id", "name", "city"]), *lines]).encode(encoding, errors="replace")
    outcomes = {}
    for name, readers in READERS.items():
        try:
            outcomes[name] = read_csv_bytes(raw, max_field_chars=MAX, readers=readers, delimiter=delimiter)
        except InputError as e:
            outcomes[name] = str(e)
    if isinstance(outcomes["exact"], str):
        assert outcomes["arrow"] == outcomes["pandas"] == outcomes["exact"]
    else:
        _assert_same(outcomes["arrow"], outcomes["exact"])
        _assert_same(outcomes["pandas"], outcomes["exact"])


def _write(tmp_path, data: bytes, name="x.csv"):
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_semicolon_cp1252_export_reads_names_decoded(tmp_path):
    text = "Nom;Prénom;Ville\r\nMüller;José;Zürich\r\nO'Brien;Renée;Köln\r\nDupont;François;Liège\r\n"
    p = _write(tmp_path, text.encode("cp1252"))
    for arrow in (False, True):
        t = read_table(p, arrow=arrow)
        assert t.reading() == {"format": "csv", "delimiter": ";", "encoding": "cp1252"}
        assert list(t.frame.columns) == ["Nom", "Prénom", "Ville"]
        assert t.frame["Prénom"].tolist() == ["José", "Renée", "François"]
        assert t.rejects == []
    assert isinstance(read_table(p, arrow=True).data, pa.Table)  # the fast path read it


def test_utf8_with_damaged_records_stays_utf8_and_names_the_setting(tmp_path):
    data = "a,b\n1,é\n2,".encode() + b"\xe9t\xe9" + b"\n3,ok\n"
    t = read_table(_write(tmp_path, data))
    assert t.encoding == "utf-8"
    assert t.frame["b"].tolist() == ["é", "ok"]
    assert [r.line for r in t.rejects] == [3] and "encoding=cp1252" in t.rejects[0].reason
    forced = read_table(_write(tmp_path, data), encoding="cp1252")
    assert forced.frame["b"].tolist() == ["Ã©", "été", "ok"]  # what the user asked for, reported as such
    assert forced.encoding == "cp1252"


def test_options_override_detection_and_bad_options_name_the_fix(tmp_path):
    p = _write(tmp_path, b"a|b|c;d\n1|2|3;4\n")
    assert read_table(p).frame.columns.tolist() == ["a", "b", "c;d"]  # the wider reading of a tie
    assert read_table(p, delimiter=";").frame.columns.tolist() == ["a|b|c", "d"]
    with pytest.raises(InputError, match="delimiter="):
        read_table(p, delimiter="ab")
    with pytest.raises(InputError, match="unknown encoding"):
        read_table(p, encoding="klingon")
    with pytest.raises(InputError, match="not ASCII-compatible"):
        read_table(p, encoding="utf-16")


def test_ambiguous_delimiter_is_refused_naming_the_setting():
    with pytest.raises(InputError, match="delimiter="):
        table.detect_delimiter("a,b|c\n1|2\n3,4\n")


def test_tsv_is_tab_separated(tmp_path):
    p = _write(tmp_path, b'id\tnote\n1\tsays "hi", then; leaves\n2\t\n', name="x.tsv")
    t = read_table(p)
    assert t.delimiter == "\t"
    assert t.frame["note"].tolist() == ['says "hi", then; leaves', ""]
    assert t.line.tolist() == [2, 3]


def test_xlsx_one_sheet_with_row_numbers(tmp_path):
    p = tmp_path / "x.xlsx"
    with pd.ExcelWriter(p, engine="openpyxl") as w:
        pd.DataFrame({"q": ["z"]}).to_excel(w, sheet_name="Notes", index=False)
        pd.DataFrame(
            {
                "id": [1, 2, None, 4],
                "name": ["Zoë", "x" * (MAX + 1), None, "Ann"],
                "hired": pd.to_datetime(["2020-01-02", "2021-03-04", None, "2019-12-31"]),
            }
        ).to_excel(w, sheet_name="Staff", index=False)
    t = read_table(p, sheet="Staff", max_field_chars=MAX)
    assert t.reading() == {"format": "xlsx", "sheet": "Staff"}
    assert t.frame.values.tolist() == [["1", "Zoë", "2020-01-02"], ["4", "Ann", "2019-12-31"]]
    assert t.line.tolist() == [2, 5]
    assert [(r.line, r.reason.split(",")[0]) for r in t.rejects] == [
        (3, "a field has 51 characters"),
        (4, "blank line"),
    ]
    assert read_table(p).frame.values.tolist() == [["z"]]  # the first sheet by default
    with pytest.raises(InputError, match="Notes"):
        read_table(p, sheet="Missing")


@pytest.mark.parametrize("reader", list(READERS))
def test_200000_character_quoted_field_is_rejected_with_its_line(tmp_path, reader):
    raw = b'id,text\n1,short\n2,"' + b"y" * 200_000 + b', still inside"\n3,ok\n'
    t = read_csv_bytes(raw, max_field_chars=100_000, readers=READERS[reader])
    assert t.line.tolist() == [2, 4]
    assert t.rejects == [table.Reject(3, table._too_long(200_014, 100_000))]
    assert table._read_csv_fast(raw, 100_000, False, ",") is not None  # the vectorised path took it
    p = _write(tmp_path, raw)
    assert read_table(p, max_field_chars=300_000).frame["text"].str.len().tolist() == [5, 200_014, 2]


@pytest.mark.parametrize("reader", list(READERS))
def test_nul_byte_is_rejected_with_its_line(reader):
    raw = b'id,name\nA1,Jo\nA2\x00,Jo\n"A3","J\x00"\nA4,Al\n'
    t = read_csv_bytes(raw, readers=READERS[reader])
    assert t.frame["id"].tolist() == ["A1", "A4"]
    assert t.line.tolist() == [2, 5]
    assert t.rejects == [table.Reject(3, NUL_REASON), table.Reject(4, NUL_REASON)]
    assert table._read_csv_arrow(raw, 100, False, ",") is not None  # Arrow no longer skips the file


def test_nul_in_header_is_refused_by_every_reader():
    for readers in READERS.values():
        with pytest.raises(InputError, match="NUL"):
            read_csv_bytes(b"id,na\x00me\n1,2\n", readers=readers)


def test_manifest_records_how_each_file_was_read(tmp_path):
    """A `;`-separated cp1252 HR export converts like its UTF-8 comma twin, and the manifest says how it was read."""
    from dp_helpers import hr_rows, prepare, read_split_files

    df = hr_rows(60, seed=3)
    df.loc[:, "department"] = df["department"].where(df.index % 3 != 0, "Ventes Île-de-France")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    euro = tmp_path / "a" / "hr.csv"
    euro.write_bytes(df.to_csv(index=False, sep=";").encode("cp1252"))
    plain = tmp_path / "b" / "hr.csv"
    plain.write_bytes(df.to_csv(index=False).encode("utf-8"))
    manifest, out = prepare(tmp_path / "a", "data_prep=hr_generic", f"input={euro}")
    twin, twin_out = prepare(tmp_path / "b", "data_prep=hr_generic", f"input={plain}")
    assert manifest["inputs"][0]["reading"] == {"format": "csv", "delimiter": ";", "encoding": "cp1252"}
    assert twin["inputs"][0]["reading"] == {"format": "csv", "delimiter": ",", "encoding": "utf-8"}
    assert manifest["counts"] == twin["counts"] and manifest["counts"]["rejected"] == 0
    assert read_split_files(out) == read_split_files(twin_out)
