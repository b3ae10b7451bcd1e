"""Hand-written fast paths of data_prep, each with the figure it buys over the library it replaces.

Every figure comes from one run of ``python bench/bench_fast_paths.py`` (1,000,000 generated HR rows,
999,929 examples, one core, best of 3, both sides timed in the same run on the same inputs, and every
piece gave the same output as the library; 2026-12-02, on a shared 2-core machine; the ratios of an
earlier run of the same code follow in brackets). A piece that stops buying 1.5x goes back to the
library call named here.

- `hash_strings`: SipHash-2-4 vectorised over Arrow's UTF-8 bytes, value for value
  ``pd.util.hash_array(values, hash_key=key, categorize=False)``; it decides the splits and the
  pseudonymous ids. 0.14 s against 0.25 s for pandas on the same ids as Python strings: 1.8x (2.4x).
- `Text.row_keys`: codes of the prompts for exact-duplicate detection through a polynomial hash of
  code combinations, without spelling a million prompts out. 0.21 s against 1.51 s for Arrow's
  ``dictionary_encode`` of the spelt-out prompts, 7.2x (6.5x), and 1.83 s for ``pd.factorize``,
  8.7x (7.6x).
- The column-wise JSONL builder (`Coded`, `Text`, `json_parts`, `json_strings`, `coded`,
  `write_lines`): the lines of ``ChatExample.to_json()``, byte for byte, built and written (sha256
  included) in 3.33 s against 31.03 s for ``json.dumps`` of each row's dict: 9.3x (11.6x). Within it,
  `Text.fused` (fewer, longer pieces to join) buys 1.9x (2.2x) over joining the unfused pieces, and
  the page-cache hint of `write_lines` (``POSIX_FADV_DONTNEED`` behind the writer) 1.8x (2.4x) over a
  plain write. ``pandas.DataFrame.to_json`` gives other bytes (it escapes ``/``, spells floats its own
  way) and pyarrow has no JSON writer, so ``json.dumps`` is the library side.
- The CSV reader stays in `data_prep.table`, because it is the library parsers themselves (Arrow's,
  then pandas' C parser) plus the checks that line each row up with its source line:
  ``read_table(arrow=True)`` reads the CSV in 0.51 s against 14.81 s for Python's ``csv`` module
  record by record, 29.0x (35.4x), the same rows and rejects.
- `nmi_min`: the leak guard's normalised mutual information (``average_method="min"``) from one
  ``np.bincount`` of code pairs and scikit-learn's formulas, the same float to the last bit. On the guard's
  own inputs (5 profile columns' leak levels against attrition on the training split, about 800,000 of the
  same 1,000,000 generated rows; the script's ``nmi`` piece alone, best of 3, 2026-12-02) 0.045 s against
  0.746 s for ``sklearn.metrics.normalized_mutual_info_score``: 16.7x. It also keeps scikit-learn out of
  ``python -m data_prep``: importing ``sklearn.metrics`` alone costs 0.9-1.2 s of CPU and 73 MB (three
  runs on one core, numpy, pandas, pyarrow and hydra already imported).

Examples:
    python bench/bench_fast_paths.py --rows 1000000
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from json.encoder import encode_basestring
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

# Bytes of output lines built and written at a time: bounds the memory a block of lines takes.
WRITE_BLOCK_BYTES = 16 << 20
# Bytes of a JSONL file being written that stay in the page cache behind the writer (`write_lines`).
KEEP_CACHED_BYTES = 64 << 20
# Most combinations of neighbouring pieces' texts `Text.fused` spells out.
FUSE_TEXTS = 1 << 14


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


def first_rows(codes: np.ndarray) -> np.ndarray:
    """The row where each code first appears, for codes numbered in order of first appearance (as
    ``pd.factorize`` numbers them): where a code first exceeds every earlier one."""
    seen = np.maximum.accumulate(np.concatenate([[-1], codes[:-1]])) if len(codes) else codes
    return np.flatnonzero(codes > seen)


_SIP_INIT = (0x736F6D6570736575, 0x646F72616E646F6D, 0x6C7967656E657261, 0x7465646279746573)


def hash_strings(values: pa.Array, key: str, chunk: int = 1 << 15) -> np.ndarray:
    """pandas' ``hash_array(values, hash_key=key)`` of strings, computed on Arrow's UTF-8 bytes.

    SipHash-2-4 keyed by the 16 bytes of ``key``, then pandas' final bit mix, vectorised over rows
    (in chunks that stay in cache), so a million ids hash without a million Python strings.

    Examples:
        python -c "import pyarrow as pa; from data_prep.fast import hash_strings; print(hash_strings(pa.array(['E1']), '0123456789abcdef'))"
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


def string_array(values) -> pa.Array:
    """A column as an Arrow string array (``str()`` of each value, as ``Series.astype(str)``)."""
    if isinstance(values, pa.ChunkedArray):
        return values.combine_chunks()
    if isinstance(values, pa.Array):
        return values
    if isinstance(values, pd.Series) and isinstance(values.dtype, pd.ArrowDtype):
        return pa.array(values)
    return pa.array(pd.Series(values).astype(str).to_numpy(dtype=object), type=pa.string())


def json_parts(columns: dict[str, pd.Series]) -> list:
    """One JSON object per row from columns, as `Text` pieces a caller joins into a longer line.

    Each object is byte-identical to ``json.dumps(dict, ensure_ascii=False)``.

    Examples:
        python -c "import pandas as pd; from data_prep.fast import Text, json_parts; print(Text(json_parts({'a': pd.Series([1.5, None])})).strings().to_pylist())"
    """
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
    values = string_array(values)
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
        python -c "from data_prep.fast import coded; print(coded(['a', 'b', 'a'], str.upper).strings())"
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


def nmi_min(a: np.ndarray, b: np.ndarray) -> float:
    """``sklearn.metrics.normalized_mutual_info_score(a, b, average_method="min")`` of two integer labelings.

    The contingency table is one ``np.bincount`` of the code pairs; mutual information and entropies then
    follow scikit-learn's formulas term for term, over the non-zero cells in the same (row-major) order,
    so the result is the same float. Values may be any integers (negative ones included, e.g. a blank or
    pooled level).

    Examples:
        python -c "import numpy as np; from data_prep.fast import nmi_min; print(nmi_min(np.array([0, 0, 1, 1]), np.array([5, 5, 7, -1])))"
    """
    a, b = _dense_codes(np.asarray(a)), _dense_codes(np.asarray(b))
    if len(a) != len(b):
        raise ValueError(f"labelings of {len(a)} and {len(b)} rows")
    ka, kb = (int(x.max()) + 1 if len(x) else 0 for x in (a, b))
    if ka == kb <= 1:
        return 1.0  # both constant (or empty): scikit-learn's perfect match
    table = np.bincount(a * kb + b, minlength=ka * kb).reshape(ka, kb)
    rows, cols = np.nonzero(table)
    cell = table[rows, cols].astype(np.float64)
    pi = table.sum(axis=1).astype(np.float64)
    pj = table.sum(axis=0).astype(np.float64)
    if ka == 1 or kb == 1:
        return 0.0
    total = cell.sum()
    share = cell / total
    outer = pi[rows].astype(np.int64) * pj[cols].astype(np.int64)
    # Scalars through math.log, arrays through np.log, as scikit-learn does: the same float to the last bit.
    log_outer = -np.log(outer) + math.log(pi.sum()) + math.log(pj.sum())
    mi = share * (np.log(cell) - math.log(total)) + share * log_outer
    mi = np.where(np.abs(mi) < np.finfo(mi.dtype).eps, 0.0, mi)
    mi = float(np.clip(mi.sum(), 0.0, None))
    if mi == 0:
        return 0.0
    return mi / min(_entropy(pi), _entropy(pj))


def _dense_codes(x: np.ndarray) -> np.ndarray:
    """Integer codes ``0..k-1`` in the order of the values (as ``np.unique(x, return_inverse=True)``), k of
    them all used."""
    if x.dtype.kind not in "biu":
        raise TypeError(f"nmi_min takes integer codes, got {x.dtype}")
    if not len(x):
        return x.astype(np.int64)
    x = x.astype(np.int64) - int(x.min())
    top = int(x.max())
    if top >= 4 * len(x):  # a sparse range: a lookup table would dwarf the rows
        return np.unique(x, return_inverse=True)[1].astype(np.int64)
    used = np.bincount(x, minlength=top + 1) > 0
    rank = np.cumsum(used) - 1
    return rank[x]


def _entropy(counts: np.ndarray) -> float:
    """scikit-learn's entropy of a labeling from its (non-zero) class counts."""
    if counts.size == 1:
        return 0.0
    total = counts.sum()
    return float(-np.sum((counts / total) * (np.log(counts) - math.log(total))))


def write_lines(path: Path, lines: Text, rows: np.ndarray, nbytes: np.ndarray) -> str:
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
