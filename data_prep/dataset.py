"""What every source shares: duplicates, seeded grouped-stratified splits, the JSONL files and the manifest.

A source module (hr, tickets, rubric) turns its records into an `ExampleFrame`: one row per example
with the prompt, the answer, the label and meta columns, the source line, a group key (the entity that
must not straddle splits) and a stratum (the label the split is stratified by). This module removes
exact duplicates, assigns splits, writes ``train/validation/test.jsonl`` (each line exactly
``ChatExample.to_json()``), ``rejects.jsonl`` and ``manifest.json``, and checks that the counts add up.

Output lines are assembled column-wise rather than through a ``ChatExample`` and a ``json.dumps`` per
example: each column is a `Coded` one (codes into its few distinct texts, each encoded once) or one
Arrow string per row, and Arrow joins the pieces of a block of lines into one buffer that is written
as it is. ``tests/data_prep/test_dataset.py`` checks the bytes against `ChatExample.to_json` and reads
every file back with `read_jsonl`.

Examples:
    python -m data_prep data_prep=tickets input=../shared/data/tickets out_dir=work/data/tickets
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from json.encoder import encode_basestring
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from data_prep.schema import read_jsonl
from data_prep.table import InputError, Reject

SPLITS = ("train", "validation", "test")
# Output lines read back through the schema validator after writing, per split (all of them in tests).
VALIDATE_LINES = 1000
# Bytes of output lines built and written at a time: bounds the memory a block of lines takes.
WRITE_BLOCK_BYTES = 16 << 20
# Bytes of a JSONL file being written that stay in the page cache behind the writer (`_write_lines`).
KEEP_CACHED_BYTES = 64 << 20
# Most combinations of neighbouring pieces' texts `Text.fused` spells out.
FUSE_TEXTS = 1 << 14


@dataclass
class SourceRejects:
    """Rejected records of one input file."""

    source: str
    rejects: list[Reject] = field(default_factory=list)


@dataclass
class Coded:
    """A string column as codes into its distinct texts: row ``i`` is ``texts[codes[i]]`` (every code
    an index into ``texts``).

    Most columns repeat a few values (departments, rounded tenures, cohort reasons), so each text is
    built once and the rows are spelt out only when a block of lines is written.
    """

    codes: np.ndarray
    texts: pa.Array

    def take(self, rows: np.ndarray) -> Coded:
        return Coded(self.codes[rows], self.texts)

    def strings(self) -> pa.Array:
        return self.texts.take(pa.array(self.codes))

    def nbytes(self) -> np.ndarray:
        return pc.binary_length(self.texts).to_numpy().astype(np.int64)[self.codes]


def _large(p) -> pa.Array:
    arr = p.strings() if isinstance(p, Coded) else p
    return arr if arr.type == pa.large_string() else arr.cast(pa.large_string())


@dataclass
class Text:
    """A string column as pieces joined row-wise: literal strings, `Coded` columns and Arrow string arrays.

    A source builds its prompts and answers this way (JSON string literals, quotes included), so a
    million prompts are a few codes each until they are written.
    """

    parts: list

    def take(self, rows: np.ndarray) -> Text:
        return Text([p if isinstance(p, str) else p.take(rows) for p in self.parts])

    def strings(self) -> pa.Array:
        """Every row spelt out (``large_string``, so a block of long lines cannot overflow its offsets)."""
        if all(isinstance(p, str) for p in self.parts):
            raise ValueError("a Text needs at least one column to know its length")
        args = [
            pa.scalar(p, pa.large_string()) if isinstance(p, str) else _large(p)
            for p in _merge_literals(self.parts)
        ]
        if len(args) == 1:
            return args[0]
        return pc.binary_join_element_wise(*args, pa.scalar("", pa.large_string()))

    def nbytes(self) -> np.ndarray:
        """UTF-8 bytes of every row."""
        total = sum(len(p.encode("utf-8")) for p in self.parts if isinstance(p, str))
        for p in self.parts:
            if isinstance(p, Coded):
                total = total + p.nbytes()
            elif not isinstance(p, str):
                total = total + pc.binary_length(p).to_numpy().astype(np.int64)
        return total

    def __len__(self) -> int:
        """Rows: the length of its columns (0 for literals alone)."""
        columns = (
            len(p.codes) if isinstance(p, Coded) else len(p) for p in self.parts if not isinstance(p, str)
        )
        return next(columns, 0)

    def fused(self, max_texts: int = FUSE_TEXTS) -> Text:
        """The same strings in fewer pieces: neighbouring `Coded` columns (and the literals between them)
        become one whose texts are every combination, while there are at most ``max_texts`` of them.

        Joining a row costs about the same per piece whatever its length, so a line of forty short
        pieces is written several times faster as a dozen.
        """
        # More combinations than rows would spell texts no row uses.
        max_texts = min(max_texts, len(self))
        out: list = []
        texts: list[str] | None = None  # the open run's texts (spelt out in Python), or None
        codes = None

        def close() -> None:
            if texts is not None:
                out.append(Coded(narrow_codes(codes, len(texts)), pa.array(texts, type=pa.large_string())))

        for p in _merge_literals(self.parts):
            if isinstance(p, str) and texts is not None:
                texts = [t + p for t in texts]
            elif isinstance(p, Coded) and len(p.texts) <= max_texts:
                new = p.texts.to_pylist()
                if texts is not None and len(texts) * len(new) <= max_texts:
                    codes = codes.astype(np.int64) * len(new) + p.codes
                    texts = [a + b for a in texts for b in new]
                    continue
                close()
                if out and isinstance(out[-1], str):
                    head = out.pop()
                    new = [head + t for t in new]
                texts, codes = new, p.codes
            else:
                close()
                texts = None
                out.append(p)
        close()
        return Text(out)

    def row_keys(self) -> np.ndarray:
        """One code per distinct string, numbered by first appearance, mostly without spelling rows out.

        Rows with the same code in every piece spell the same string. Distinct code combinations could
        still spell one string (a value that holds the next piece's text), so each combination's string
        gets a hash that composes over pieces (a polynomial over its bytes, modulo two primes); only
        combinations whose hashes meet are spelt out and compared.
        """
        text = self.fused()
        columns = [p for p in text.parts if not isinstance(p, str)]
        if not all(isinstance(p, Coded) and len(p.texts) <= FUSE_TEXTS for p in columns):
            return _dictionary_codes(text.strings())  # a column of (nearly) one text per row
        combined = np.zeros(len(self), dtype=np.int64)
        for c in columns:
            combined, _ = pd.factorize(combined * len(c.texts) + c.codes)
        first = first_rows(combined)
        hashes = _poly_hash(text, first)
        meet = np.flatnonzero(pd.Series(hashes).duplicated(keep=False).to_numpy())
        if len(meet):
            same = _dictionary_codes(text.take(first[meet]).strings())
            first_of = first_rows(same)
            merged = np.arange(len(first))
            merged[meet] = meet[first_of[same]]
            combined, _ = pd.factorize(merged[combined])
        return combined


# Two primes below 2**30: a hash is kept modulo each, so products stay within 64 bits.
_HASH_PRIMES = (1_000_000_007, 998_244_353)


def _poly_hash(text: Text, rows: np.ndarray) -> np.ndarray:
    """A hash of each row's bytes, ``sum(b[i] * 256**(n-1-i))`` modulo two primes, built piece by piece."""
    hashes = [np.zeros(len(rows), dtype=np.uint64) for _ in _HASH_PRIMES]
    for p in text.parts:
        data = [v.encode("utf-8") for v in ([p] if isinstance(p, str) else p.texts.to_pylist())]
        numbers = [int.from_bytes(b, "big") for b in data]
        at = slice(None) if isinstance(p, str) else p.codes[rows]
        for i, prime in enumerate(_HASH_PRIMES):
            value = np.array([x % prime for x in numbers], dtype=np.uint64)[at]
            shift = np.array([pow(256, len(b), prime) for b in data], dtype=np.uint64)[at]
            hashes[i] = (hashes[i] * shift + value) % np.uint64(prime)
    return hashes[0] * np.uint64(1 << 30) + hashes[1]


@dataclass
class ExampleFrame:
    """Examples as columns, ready to split and write.

    Attributes:
        frame: Columns ``id``, ``user``, ``source``, ``line``, ``group``, ``stratum``, and after
            splitting ``split`` and ``assistant`` (answers may need training-split statistics).
        label: Label columns in output key order (values: float, bool, str or None).
        meta: Meta columns in output key order.
        text: Prompts or answers a source built as JSON string literals (`Text`, quotes included),
            under ``user`` / ``assistant``; they take the place of those frame columns.
    """

    frame: pd.DataFrame
    label: dict[str, pd.Series]
    meta: dict[str, pd.Series]
    text: dict[str, Text] = field(default_factory=dict)

    def set_column(self, name: str, values) -> None:
        """Add a column: a `Text` of JSON string literals, or per-row values for ``frame``."""
        if isinstance(values, Text):
            self.text[name] = values
        else:
            self.frame[name] = values


def drop_duplicates(ex: ExampleFrame) -> tuple[ExampleFrame, list[tuple[str, Reject]]]:
    """Remove exact duplicates (same prompt and same label), keeping the first occurrence.

    Returns:
        The remaining examples and a ``(source, Reject)`` per removed one, naming the kept line.

    Examples:
        python -c "import data_prep.dataset as d; help(d.drop_duplicates)"
    """
    f = ex.frame
    if len(f) == 0:
        return ex, []
    user = string_literals(ex, "user").row_keys()
    # Only rows whose prompt repeats can be duplicates; labels are compared for those alone.
    cand = np.flatnonzero(np.bincount(user)[user] > 1)
    if len(cand) == 0:
        return ex, []
    label = Text(json_parts(ex.label)).take(cand).row_keys()
    codes, _ = pd.factorize(user[cand].astype(np.int64) * (int(label.max()) + 1) + label)
    first_of_code = first_rows(codes)
    first_local = first_of_code[codes]
    later = first_local != np.arange(len(cand))
    dup_rows, kept_rows = cand[later], cand[first_local[later]]
    source, line = f["source"], f["line"]
    rejects = [
        (
            src,
            Reject(int(ln), f"exact duplicate of {first_src} line {int(first_ln)} (same profile and label)"),
        )
        for src, ln, first_src, first_ln in zip(
            source.iloc[dup_rows].tolist(),
            line.iloc[dup_rows].tolist(),
            source.iloc[kept_rows].tolist(),
            line.iloc[kept_rows].tolist(),
            strict=True,
        )
    ]
    keep = np.ones(len(f), dtype=bool)
    keep[dup_rows] = False
    return _take(ex, keep), rejects


def assign_splits(groups: pd.Series, strata: pd.Series, fractions: dict[str, float], seed: int) -> np.ndarray:
    """Assign every row to train, validation or test: seeded, grouped and stratified.

    All rows of a group (an entity such as an employee) land in one split. Groups are stratified by
    the stratum of their first row: within each stratum, groups are ordered by a seeded hash of the
    group key and the first ``round(n * test)`` go to test, the next ``round(n * validation)`` to
    validation, the rest to train. The same seed and the same records give the same splits, whatever
    the row order.

    Args:
        groups: Group key per row (strings).
        strata: Stratum per row (strings).
        fractions: ``{"train": .8, "validation": .1, "test": .1}``; must sum to 1.
        seed: Split seed.

    Returns:
        Split name per row.

    Examples:
        python -c "import pandas as pd; from data_prep.dataset import assign_splits; print(assign_splits(pd.Series(list('abcdefghij')), pd.Series(['x'] * 10), {'train': .8, 'validation': .1, 'test': .1}, 0))"
    """
    if len(groups) == 0:
        return np.array([], dtype=object)
    return np.asarray(SPLITS, dtype=object)[split_codes(groups, strata, fractions, seed)]


def split_codes(groups: pd.Series, strata: pd.Series, fractions: dict[str, float], seed: int) -> np.ndarray:
    """`assign_splits` as indices into `SPLITS` (0 train, 1 validation, 2 test)."""
    key = hashlib.sha256(f"data_prep-split-{seed}".encode()).hexdigest()[:16]
    if len(groups) == 0:
        return np.zeros(0, dtype=np.int8)
    # A group is identified by its seeded 64-bit SipHash: numeric from here on, and independent of row order.
    h = hash_strings(_string_array(groups), key)
    g_codes, g_hash = pd.factorize(h)
    first_row = first_rows(g_codes)
    s_codes = _sorted_codes(strata, first_row)
    order = np.lexsort((g_hash, s_codes))
    size = np.bincount(s_codes)
    block_start = np.concatenate([[0], np.cumsum(size)[:-1]])
    sorted_strata = s_codes[order]
    rank = np.arange(len(order)) - block_start[sorted_strata]
    n_test = np.round(size[sorted_strata] * fractions["test"])
    n_val = np.round(size[sorted_strata] * fractions["validation"])
    split = np.where(rank < n_test, 2, np.where(rank < n_test + n_val, 1, 0)).astype(np.int8)
    per_group = np.empty(len(order), dtype=np.int8)
    per_group[order] = split
    return per_group[g_codes]


def first_rows(codes: np.ndarray) -> np.ndarray:
    """The row where each code first appears, for codes numbered in order of first appearance (as
    ``pd.factorize`` numbers them): where a code first exceeds every earlier one."""
    seen = np.maximum.accumulate(np.concatenate([[-1], codes[:-1]])) if len(codes) else codes
    return np.flatnonzero(codes > seen)


def _sorted_codes(values: pd.Series, rows: np.ndarray) -> np.ndarray:
    """Codes of ``values[rows]`` as strings, numbered in sorted order of the distinct strings present."""
    if isinstance(values.dtype, pd.CategoricalDtype) and (values.cat.codes >= 0).all():
        names = np.array([str(c) for c in values.cat.categories], dtype=object)
        codes = values.cat.codes.to_numpy()[rows]
        present = np.unique(codes)
        if len(set(names[present])) == len(present):  # else two categories print alike: compare strings
            rank = np.empty(len(names), dtype=np.int64)
            rank[present[np.argsort(names[present], kind="stable")]] = np.arange(len(present))
            return rank[codes]
    codes, _ = pd.factorize(values.astype(str).to_numpy(dtype=object)[rows], sort=True)
    return codes


_SIP_INIT = (0x736F6D6570736575, 0x646F72616E646F6D, 0x6C7967656E657261, 0x7465646279746573)


def hash_strings(values: pa.Array, key: str, chunk: int = 1 << 15) -> np.ndarray:
    """pandas' ``hash_array(values, hash_key=key)`` of strings, computed on Arrow's UTF-8 bytes.

    SipHash-2-4 keyed by the 16 bytes of ``key``, then pandas' final bit mix, vectorised over rows
    (in chunks that stay in cache), so a million ids hash without a million Python strings.

    Examples:
        python -c "import pyarrow as pa; from data_prep.dataset import hash_strings; print(hash_strings(pa.array(['E1']), '0123456789abcdef'))"
    """
    n = len(values)
    k = key.encode("utf-8")
    if len(k) != 16:
        raise ValueError(f"hash key must be 16 bytes, got {len(k)}")
    k0, k1 = int.from_bytes(k[:8], "little"), int.from_bytes(k[8:], "little")
    values = values.cast(pa.large_string())
    buffers = values.buffers()
    offsets = np.frombuffer(buffers[1], dtype=np.int64, count=n + 1, offset=values.offset * 8)
    data = np.frombuffer(buffers[2], dtype=np.uint8) if buffers[2] is not None else np.zeros(0, np.uint8)
    data = np.concatenate([data[offsets[0] : offsets[-1]], np.zeros(8, dtype=np.uint8)])
    offsets = offsets - offsets[0]
    # Every byte position read as a little-endian 64-bit word (unaligned), for one gather per block.
    words = np.ndarray(shape=(len(data) - 7,), dtype="<u8", buffer=data, strides=(1,))
    out = np.empty(n, dtype=np.uint64)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        start, length = offsets[s:e], offsets[s + 1 : e + 1] - offsets[s:e]
        v = [
            np.full(e - s, init ^ kk, dtype=np.uint64)
            for init, kk in zip(_SIP_INIT, (k0, k1, k0, k1), strict=True)
        ]
        tmp = np.empty(e - s, dtype=np.uint64)
        full = length // 8
        for j in range(int(full.max())):
            rows = np.flatnonzero(full > j)
            sub = [x[rows] for x in v]
            _sip_block(sub, words[start[rows] + 8 * j], np.empty(len(rows), dtype=np.uint64))
            for x, y in zip(v, sub, strict=True):
                x[rows] = y
        tail = (length % 8).astype(np.uint64) * np.uint64(8)
        last = words[start + 8 * full] & ((np.uint64(1) << tail) - np.uint64(1))
        last |= length.astype(np.uint64) << np.uint64(56)
        _sip_block(v, last, tmp)
        v[2] ^= np.uint64(0xFF)
        _sip_rounds(v, tmp, 4)
        out[s:e] = v[0] ^ v[1] ^ v[2] ^ v[3]
    out ^= out >> np.uint64(30)
    out *= np.uint64(0xBF58476D1CE4E5B9)
    out ^= out >> np.uint64(27)
    out *= np.uint64(0x94D049BB133111EB)
    out ^= out >> np.uint64(31)
    return out


def _sip_block(v: list[np.ndarray], m: np.ndarray, tmp: np.ndarray) -> None:
    v[3] ^= m
    _sip_rounds(v, tmp, 2)
    v[0] ^= m


def _sip_rounds(v: list[np.ndarray], tmp: np.ndarray, n: int) -> None:
    v0, v1, v2, v3 = v
    for _ in range(n):
        v0 += v1
        _rotl(v1, 13, tmp)
        v1 ^= v0
        _rotl(v0, 32, tmp)
        v2 += v3
        _rotl(v3, 16, tmp)
        v3 ^= v2
        v0 += v3
        _rotl(v3, 21, tmp)
        v3 ^= v0
        v2 += v1
        _rotl(v1, 17, tmp)
        v1 ^= v2
        _rotl(v2, 32, tmp)


def _rotl(x: np.ndarray, bits: int, tmp: np.ndarray) -> None:
    np.right_shift(x, np.uint64(64 - bits), out=tmp)
    np.left_shift(x, np.uint64(bits), out=x)
    np.bitwise_or(x, tmp, out=x)


def _string_array(values) -> pa.Array:
    """A column as an Arrow string array (``str()`` of each value, as ``Series.astype(str)``)."""
    if isinstance(values, pa.ChunkedArray):
        return values.combine_chunks()
    if isinstance(values, pa.Array):
        return values
    if isinstance(values, pd.Series) and isinstance(values.dtype, pd.ArrowDtype):
        return pa.array(values)
    return pa.array(pd.Series(values).astype(str).to_numpy(dtype=object), type=pa.string())


def json_column(columns: dict[str, pd.Series]) -> pd.Series:
    """One JSON object per row from columns, byte-identical to ``json.dumps(dict, ensure_ascii=False)``.

    Examples:
        python -c "import pandas as pd; from data_prep.dataset import json_column; print(json_column({'a': pd.Series([1.5, None])}).tolist())"
    """
    if not columns:
        return pd.Series([], dtype=object)
    index = next(iter(columns.values())).index
    text = Text(json_parts(columns)).strings().to_numpy(zero_copy_only=False)
    return pd.Series(text, index=index, dtype=object)


def json_parts(columns: dict[str, pd.Series]) -> list:
    """`json_column` as `Text` pieces, so a caller can join them into a longer line in one pass."""
    parts: list = []
    for i, (key, s) in enumerate(columns.items()):
        parts.append(("{" if i == 0 else ", ") + encode_basestring(key) + ": ")
        if pd.api.types.is_integer_dtype(s.dtype):
            parts.append(pc.cast(pa.array(s.to_numpy()), pa.string()))  # one value per row (line numbers)
        else:
            parts.append(coded(s, _json_value))
    return [*parts, "}"] if parts else ["{}"]


def json_strings(values: pa.Array) -> list:
    """`Text` pieces of the JSON string literal of each value (``json.dumps(v, ensure_ascii=False)``)."""
    values = _string_array(values)
    data = values.buffers()[2]
    raw = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
    if not ((raw < 0x20) | (raw == ord('"')) | (raw == ord("\\"))).any():
        return ['"', values, '"']
    return [pa.array([encode_basestring(v) for v in values.to_pylist()], type=pa.string())]


def factorize(values) -> tuple[np.ndarray, list]:
    """Codes (-1 for None and NaN) and the distinct values they index.

    A Categorical gives its own codes and categories, booleans their own value (False, True); numbers
    are factorised as numbers (0.0 and -0.0 are one value, as they are among Python floats).
    """
    if isinstance(values, pd.Series) and isinstance(values.dtype, pd.CategoricalDtype):
        return values.cat.codes.to_numpy(), list(values.cat.categories)
    if isinstance(values, pd.Categorical):
        return values.codes, list(values.categories)
    arr = values.to_numpy() if isinstance(values, pd.Series) else np.asarray(values)
    if arr.dtype == bool:
        return arr.view(np.int8), [False, True]
    if arr.dtype.kind not in "biuf":
        arr = arr.astype(object)
    codes, uniques = pd.factorize(arr, use_na_sentinel=True)
    return codes, list(uniques)


def coded(values, fn) -> Coded:
    """``fn`` applied once per distinct value (None and NaN included), as a `Coded` column of its texts.

    Examples:
        python -c "from data_prep.dataset import coded; print(coded(['a', 'b', 'a'], str.upper).strings())"
    """
    codes, uniques = factorize(values)
    texts = [fn(v) for v in uniques]
    if (codes < 0).any():
        codes = np.where(codes < 0, len(texts), codes)
        texts.append(fn(None))
    return Coded(narrow_codes(codes, len(texts)), pa.array(texts, type=pa.large_string()))


def narrow_codes(codes: np.ndarray, n: int) -> np.ndarray:
    """Codes in the smallest integer type that holds ``n`` values (a million rows, many columns)."""
    dtype = np.int8 if n <= 127 else np.int16 if n <= 32767 else np.int32
    return codes.astype(dtype, copy=False)


def _json_value(v) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "null"
    if isinstance(v, (bool, np.bool_)):
        return "true" if v else "false"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return repr(float(v))
    return encode_basestring(str(v))


def string_literals(ex: ExampleFrame, name: str) -> Text:
    """JSON string literals of column ``name``: the `Text` a source built, else encoded here."""
    if name in ex.text:
        return ex.text[name]
    values = ex.frame[name]
    if isinstance(values.dtype, pd.ArrowDtype):
        return Text(json_strings(pa.array(values)))
    return Text([pa.array([encode_basestring(x) for x in values], type=pa.string())])


def _merge_literals(parts: list) -> list:
    merged: list = []
    for p in parts:
        if isinstance(p, str) and merged and isinstance(merged[-1], str):
            merged[-1] += p
        elif not (isinstance(p, str) and not p):
            merged.append(p)
    return merged


def _dictionary_codes(values: pa.Array) -> np.ndarray:
    """One code per distinct string, numbered by first appearance."""
    return values.dictionary_encode().indices.to_numpy()


def example_parts(ex: ExampleFrame, task: str, system_prompt: str) -> Text:
    """Every example's JSONL line (``ChatExample.to_json()``) as `Text` pieces.

    ``example_parts(...).take(rows).strings()`` gives the lines of ``rows``; `write_dataset` does that
    in blocks, so a million-row dataset never holds all its lines in memory.

    Examples:
        python -c "import data_prep.dataset as d; help(d.example_parts)"
    """
    head = (
        f', "task": {encode_basestring(task)}, "messages": [{{"role": "system", "content": '
        f'{encode_basestring(system_prompt)}}}, {{"role": "user", "content": '
    )
    return Text(
        [
            '{"id": ',
            *string_literals(ex, "id").parts,
            head,
            *string_literals(ex, "user").parts,
            '}, {"role": "assistant", "content": ',
            *string_literals(ex, "assistant").parts,
            '}], "label": ',
            *json_parts(ex.label),
            ', "meta": ',
            *json_parts(ex.meta),
            "}\n",
        ]
    )


def write_dataset(
    out_dir: str | Path,
    ex: ExampleFrame,
    *,
    task: str,
    system_prompt: str,
    rejects: list[SourceRejects],
    inputs: list[str],
    n_records: int,
    manifest_extra: dict | None = None,
) -> dict:
    """Write the split files, the rejects and the manifest; return the manifest.

    Raises:
        RuntimeError: The counts do not add up (a bug: every record must be written or rejected).

    Examples:
        python -m data_prep data_prep=hr_ibm_attrition input=../shared/data/hr/ibm_hr_attrition.csv
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = example_parts(ex, task, system_prompt).fused()
    nbytes = lines.nbytes()
    outputs, by_split, dist = {}, {}, {}
    for name in SPLITS:
        rows = np.flatnonzero(np.asarray(ex.frame["split"] == name))
        path = out / f"{name}.jsonl"
        digest = _write_lines(path, lines, rows, nbytes[rows])
        outputs[path.name] = {"examples": len(rows), "sha256": digest}
        by_split[name] = len(rows)
        dist[name] = _distribution(ex.frame["stratum"].iloc[rows])
        for _ in zip(range(VALIDATE_LINES), read_jsonl(path), strict=False):
            pass
    all_rejects = sorted(
        ((sr.source, r) for sr in rejects for r in sr.rejects), key=lambda t: (t[0], t[1].line)
    )
    rej_data = "".join(
        json.dumps({"source": s, "line": r.line, "reason": r.reason}, ensure_ascii=False) + "\n"
        for s, r in all_rejects
    ).encode("utf-8")
    _write_atomic(out / "rejects.jsonl", rej_data)
    outputs["rejects.jsonl"] = {"records": len(all_rejects), "sha256": hashlib.sha256(rej_data).hexdigest()}
    written = sum(by_split.values())
    if written + len(all_rejects) != n_records:
        raise RuntimeError(
            f"counts do not add up: {n_records} records read, {written} written + {len(all_rejects)} rejected"
        )
    manifest = {
        "task": task,
        "inputs": [_file_entry(p) for p in inputs],
        "counts": {
            "records": n_records,
            "written": written,
            "rejected": len(all_rejects),
            "by_split": by_split,
            "rejected_by_reason": dict(
                sorted(Counter(_reason_kind(r.reason) for _, r in all_rejects).items(), key=lambda kv: -kv[1])
            ),
        },
        "label_distribution": dist,
        "outputs": outputs,
        **(manifest_extra or {}),
    }
    _write_atomic(out / "manifest.json", (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode())
    return manifest


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _file_entry(path: str) -> dict:
    p = Path(path)
    return {"name": p.name, "bytes": p.stat().st_size, "sha256": sha256_file(p)}


def _distribution(s: pd.Series) -> dict:
    if isinstance(s.dtype, pd.CategoricalDtype):
        codes = s.cat.codes.to_numpy()
        counts = np.bincount(codes[codes >= 0], minlength=len(s.cat.categories))
        present = sorted((k, int(v)) for k, v in zip(s.cat.categories, counts, strict=True) if v)
        return {str(k): v for k, v in present}
    return {str(k): int(v) for k, v in s.value_counts().sort_index().items()}


def _reason_kind(reason: str) -> str:
    kind = re.sub(r"\d+", "N", reason)
    return re.sub(r" of \S+ line N", " of an earlier line", kind)


def _take(ex: ExampleFrame, keep: np.ndarray) -> ExampleFrame:
    rows = np.flatnonzero(keep)
    return ExampleFrame(
        pd.DataFrame({c: _take_series(ex.frame[c], rows) for c in ex.frame.columns}),
        {k: _take_series(v, rows) for k, v in ex.label.items()},
        {k: _take_series(v, rows) for k, v in ex.meta.items()},
        {k: v.take(rows) for k, v in ex.text.items()},
    )


def _take_series(s: pd.Series, rows: np.ndarray) -> pd.Series:
    """``s.iloc[rows]`` with a fresh 0..n-1 index, without building the old index's positions."""
    return pd.Series(s.array.take(rows), name=s.name)


def _write_lines(path: Path, lines: Text, rows: np.ndarray, nbytes: np.ndarray) -> str:
    """Write the lines of ``rows`` (``nbytes`` each) through a temporary file; return the file's sha256.

    Each block of about `WRITE_BLOCK_BYTES` is joined by Arrow into one buffer, hashed and written as is.
    What lies more than `KEEP_CACHED_BYTES` behind the end is handed to the disk and dropped from the
    page cache (``POSIX_FADV_DONTNEED``; dirty pages are never lost, only written back sooner): a
    million rows are about 1.2 GB, read once later by the tokenizer, and holding them all would take
    as much fresh memory, which on a virtual machine costs more to fault in than the disk costs to
    write (5 s against 0.6 s for 1.2 GB), and would push other programs' files out of the cache.
    """
    tmp = path.with_name(path.name + ".partial")
    h = hashlib.sha256()
    end = np.cumsum(nbytes)
    n_blocks = int(end[-1] // WRITE_BLOCK_BYTES) + 1 if len(rows) else 0
    cuts = np.searchsorted(end, np.arange(1, n_blocks) * WRITE_BLOCK_BYTES, side="right")
    bounds = np.unique(np.concatenate([[0], cuts, [len(rows)]]))
    with tmp.open("wb") as f:
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            block = lines.take(rows[a:b]).strings()
            offsets = np.frombuffer(
                block.buffers()[1], dtype=np.int64, count=len(block) + 1, offset=block.offset * 8
            )
            data = memoryview(block.buffers()[2])[offsets[0] : offsets[-1]]
            h.update(data)
            f.write(data)
            if hasattr(os, "posix_fadvise") and f.tell() > KEEP_CACHED_BYTES:
                os.posix_fadvise(f.fileno(), 0, f.tell() - KEEP_CACHED_BYTES, os.POSIX_FADV_DONTNEED)
    tmp.replace(path)
    return h.hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_bytes(data)
    tmp.replace(path)


def input_files(spec: str, suffixes: tuple[str, ...]) -> list[str]:
    """The files an ``input=`` value names: one file, every matching file in a folder, or a glob.

    Raises:
        InputError: Nothing matches; the message says what was expected.

    Examples:
        python -c "from data_prep.dataset import input_files; print(input_files('../shared/data/tickets', ('.csv',)))"
    """
    p = Path(spec)
    if p.is_file():
        return [str(p)]
    if p.is_dir():
        files = sorted(str(f) for f in p.iterdir() if f.is_file() and f.name.lower().endswith(suffixes))
    else:
        files = sorted(f for f in glob.glob(spec) if Path(f).is_file())
    if not files:
        raise InputError(
            f"input={spec!r} names no {'/'.join(suffixes)} file; pass a file, a folder holding them, or a glob"
        )
    return files
