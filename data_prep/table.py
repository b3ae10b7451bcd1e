"""Read a CSV or Parquet export into string columns, keeping every record's source line number.

Every record of the file ends up in exactly one of two places: a row of `Table.frame` (with its line
number in `Table.line`) or `Table.rejects` (line number and reason). A malformed record (wrong number
of fields, invalid UTF-8, a field over ``max_field_chars``, a quoted field cut off by the end of the
file, a blank line) is rejected; it never stops the read.

Clean files take a vectorised path (pandas' C parser, about a second per million rows). A file that
path cannot line up with its source lines (invalid UTF-8, multi-line fields, parser errors) is re-read
record by record with Python's ``csv`` module, which is slower but exact.

Examples:
    python -c "from data_prep.table import read_table; t = read_table('../shared/data/hr/ibm_hr_attrition.csv'); print(len(t.frame), t.rejects[:3])"
"""

from __future__ import annotations

import csv
import io
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

CSV_SUFFIXES = (".csv", ".txt", ".tsv")
PARQUET_SUFFIXES = (".parquet", ".pq")
# Lone surrogates are what `surrogateescape` turns undecodable bytes into.
_INVALID_UTF8 = re.compile("[\udc80-\udcff]")
_PROGRESS_MIN_BYTES = 8 << 20


@dataclass
class Reject:
    """One input record that was not written, and why.

    Attributes:
        line: 1-based line number in the source file where the record starts (the row number for
            Parquet, the record number for a JSON list).
        reason: What is wrong, in words a user can act on.
    """

    line: int
    reason: str


@dataclass
class Table:
    """String columns of the well-formed records, their line numbers, and the rejected records.

    Attributes:
        frame: One column per header name, every value a ``str`` ("" for an empty field).
        line: Source line number of each row of ``frame``.
        rejects: Records that could not be read as a row.
        path: The file read.
    """

    frame: pd.DataFrame
    line: np.ndarray
    rejects: list[Reject] = field(default_factory=list)
    path: str = ""

    @property
    def n_records(self) -> int:
        return len(self.frame) + len(self.rejects)


class InputError(ValueError):
    """An input that cannot be read at all (missing file, unknown format, no header)."""


def read_table(
    path: str | Path, *, max_field_chars: int = 100_000, progress: bool = False, delimiter: str = ","
) -> Table:
    """Read a CSV (UTF-8, with or without BOM, LF or CRLF) or Parquet file into string columns.

    Args:
        path: The file; ``.parquet``/``.pq`` is read as Parquet, anything else as CSV.
        max_field_chars: A record with a longer field is rejected instead of bloating the dataset.
        progress: Show a progress bar on large files.
        delimiter: Field separator of a CSV file.

    Returns:
        The table; ``len(frame) + len(rejects)`` is the number of records in the file.

    Raises:
        InputError: The file is missing, empty, or has no header line.

    Examples:
        python -c "from data_prep.table import read_table; print(read_table('../shared/data/hr/HRDataset_v14.csv').frame.shape)"
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"input file {path} does not exist; pass input=<path to a CSV or Parquet export>")
    if path.suffix.lower() in PARQUET_SUFFIXES:
        return _read_parquet(path)
    raw = path.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    if not raw.strip():
        raise InputError(f"{path} is empty; expected a header line and at least one record")
    table = _read_csv_fast(raw, max_field_chars, progress, delimiter)
    if table is None:
        table = _read_csv_exact(raw, max_field_chars, progress, delimiter)
    table.path = str(path)
    return table


def _read_parquet(path: Path) -> Table:
    try:
        df = pd.read_parquet(path)
    except (OSError, ValueError) as e:
        raise InputError(f"{path} is not a readable Parquet file ({e}); export it again or pass a CSV") from e
    out = {}
    for c in df.columns:
        s = df[c]
        if pd.api.types.is_datetime64_any_dtype(s):
            s = s.dt.strftime("%Y-%m-%d")
        out[str(c)] = s.astype("string").fillna("").astype(object)
    return Table(pd.DataFrame(out), np.arange(1, len(df) + 1, dtype=np.int64), path=str(path))


class _Lines:
    """Where each physical line starts and ends, and how many delimiters and quotes it holds (vectorised)."""

    def __init__(self, raw: bytes, delimiter: str):
        arr = np.frombuffer(raw, dtype=np.uint8)
        newlines = np.flatnonzero(arr == 10)
        self.starts = np.concatenate([[0], newlines + 1])
        if self.starts[-1] >= len(raw):  # the file ends with a line break: no line after it
            self.starts = self.starts[:-1]
        # A line's segment runs to the next line's start, so its own line break (no delimiter) is in it.
        self.ends = np.append(self.starts[1:] - 1, len(raw) if not raw.endswith(b"\n") else len(raw) - 1)
        bounds = np.append(self.starts, len(raw))
        self.delims = np.diff(np.searchsorted(np.flatnonzero(arr == ord(delimiter)), bounds))
        self.quotes = np.diff(np.searchsorted(np.flatnonzero(arr == ord('"')), bounds))
        self.raw = raw

    def __len__(self) -> int:
        return len(self.starts)

    def text(self, i: int) -> bytes:
        return self.raw[self.starts[i] : self.ends[i]]


def _read_csv_fast(raw: bytes, max_field_chars: int, progress: bool, delimiter: str) -> Table | None:
    """The vectorised path, or None when the file needs the exact one."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if raw.count(b"\r") != raw.count(b"\r\n") or len(delimiter) != 1:
        # A lone CR ends a record for the parser but not for line counting.
        return None
    lines = _Lines(raw, delimiter)
    if (lines.quotes % 2).any():
        # A quoted field runs over a line break (or is cut off): line numbers need the exact path.
        return None
    with warnings.catch_warnings():
        return _parse_fast(raw, lines, max_field_chars, progress, delimiter)


def _parse_fast(
    raw: bytes, lines: _Lines, max_field_chars: int, progress: bool, delimiter: str
) -> Table | None:
    try:
        reader = pd.read_csv(
            io.BytesIO(raw),
            dtype=str,
            keep_default_na=False,
            skip_blank_lines=False,
            sep=delimiter,
            index_col=False,  # never promote a first column to the index when row 1 has an extra field
            engine="c",
            chunksize=250_000,
        )
        chunks = []
        # Extra fields are dropped with a warning here; the per-line field count below rejects those rows.
        warnings.simplefilter("ignore", pd.errors.ParserWarning)
        with _bar(len(lines) - 1, progress and len(raw) > _PROGRESS_MIN_BYTES) as bar:
            for chunk in reader:
                chunks.append(chunk)
                bar.update(len(chunk))
    except (pd.errors.ParserError, ValueError):
        return None
    frame = pd.concat(chunks, ignore_index=True) if chunks else None
    if frame is None or len(frame) != len(lines) - 1:
        return None
    frame.columns = [_clean_header(str(c)) for c in frame.columns]
    n_cols = len(frame.columns)
    counts = lines.delims[1:] + 1
    for i in np.flatnonzero(lines.quotes[1:]):
        counts[i] = len(next(csv.reader([lines.text(i + 1).decode("utf-8")], delimiter=delimiter), []))
    lengths = (lines.ends - lines.starts)[1:]
    reasons: dict[int, str] = {}
    for i in np.flatnonzero(lengths > max_field_chars):
        longest = max(len(str(v)) for v in frame.iloc[i])
        if longest > max_field_chars:
            reasons[int(i)] = _too_long(longest, max_field_chars)
    cut_off = not raw.endswith(b"\n")
    for i in np.flatnonzero(counts != n_cols):
        if not lines.text(i + 1).strip():
            reasons[int(i)] = "blank line"
        elif cut_off and i == len(counts) - 1 and counts[i] < n_cols:
            reasons[int(i)] = _truncated(int(counts[i]), n_cols)
        else:
            reasons[int(i)] = _wrong_count(int(counts[i]), n_cols)
    line = np.arange(2, len(frame) + 2, dtype=np.int64)
    if not reasons:
        return Table(frame, line)
    bad = np.zeros(len(frame), dtype=bool)
    bad[list(reasons)] = True
    rejects = [Reject(int(line[i]), reasons[i]) for i in sorted(reasons)]
    return Table(frame[~bad].reset_index(drop=True), line[~bad], rejects)


def _read_csv_exact(raw: bytes, max_field_chars: int, progress: bool, delimiter: str) -> Table:
    text = raw.decode("utf-8", errors="surrogateescape")
    has_invalid = _INVALID_UTF8.search(text) is not None
    old_limit = csv.field_size_limit()
    # One past the limit, so an over-long field is read and rejected by length rather than by the parser.
    csv.field_size_limit(max(max_field_chars + 1, 1))
    try:
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
        header, rows, line, rejects = None, [], [], []
        start = 1
        ends_with_newline = text.endswith(("\n", "\r"))
        last_line = text.count("\n") + 1
        with _bar(text.count("\n"), progress and len(raw) > _PROGRESS_MIN_BYTES) as bar:
            while True:
                try:
                    rec = next(reader)
                    err = None
                except StopIteration:
                    break
                except csv.Error as e:
                    rec, err = None, str(e)
                end = reader.line_num
                bar.update(end - start + 1)
                if header is None:
                    if rec is None or not any(f.strip() for f in rec):
                        raise InputError(f"line {start}: no readable header line ({err or 'blank'})")
                    header = [_clean_header(h) for h in rec]
                    start = end + 1
                    continue
                reason = None
                if err is not None:
                    if "unexpected end of data" in err or (not ends_with_newline and end >= last_line):
                        reason = (
                            "truncated record: the file ends inside a quoted field (was the file cut off?)"
                        )
                    elif "field larger than field limit" in err:
                        reason = _too_long(max_field_chars + 1, max_field_chars)
                    else:
                        reason = f"malformed CSV: {err}"
                elif not rec or (len(rec) == 1 and not rec[0].strip()):
                    reason = "blank line"
                elif has_invalid and _INVALID_UTF8.search("\x1f".join(rec)):
                    reason = "invalid UTF-8 bytes; re-export the file as UTF-8"
                elif len(rec) < len(header) and not ends_with_newline and end >= last_line:
                    reason = _truncated(len(rec), len(header))
                elif len(rec) != len(header):
                    reason = _wrong_count(len(rec), len(header))
                elif max(map(len, rec)) > max_field_chars:
                    reason = _too_long(max(map(len, rec)), max_field_chars)
                if reason is None:
                    rows.append(rec)
                    line.append(start)
                else:
                    rejects.append(Reject(start, reason))
                start = end + 1
    finally:
        csv.field_size_limit(old_limit)
    if header is None:
        raise InputError("no header line; expected the column names on line 1")
    cols = list(zip(*rows, strict=True)) if rows else [()] * len(header)
    frame = pd.DataFrame({h: np.array(c, dtype=object) for h, c in zip(_dedupe(header), cols, strict=True)})
    return Table(frame, np.array(line, dtype=np.int64), rejects)


def _clean_header(h: str) -> str:
    return h.lstrip("\ufeff").strip()


def _dedupe(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        k = seen.get(n, 0)
        out.append(n if k == 0 else f"{n}.{k}")
        seen[n] = k + 1
    return out


def _wrong_count(got: int, want: int) -> str:
    return f"has {got} field(s) where the header has {want} (missing or extra delimiter)"


def _truncated(got: int, want: int) -> str:
    return f"truncated record: the file ends after {got} of {want} fields (was the file cut off?)"


def _too_long(got: int, limit: int) -> str:
    return f"a field has {got} characters, over max_field_chars={limit} (raise it to keep such records)"


def _bar(total: int, enabled: bool) -> tqdm:
    return tqdm(total=total, unit="rows", disable=not enabled, file=sys.stderr, mininterval=1.0, leave=False)
