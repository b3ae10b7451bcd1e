"""What every source shares: duplicates, seeded grouped-stratified splits, the JSONL files and the manifest.

A source module (hr, tickets, rubric) turns its records into an `ExampleFrame`: one row per example
with the prompt, the answer, the label and meta columns, the source line, a group key (the entity that
must not straddle splits) and a stratum (the label the split is stratified by). This module removes
exact duplicates, assigns splits, writes ``train/validation/test.jsonl`` (each line exactly
``ChatExample.to_json()``), ``rejects.jsonl`` and ``manifest.json``, and checks that the counts add up.

Output lines are assembled column-wise (each distinct value encoded once, one join per line) rather
than through a ``ChatExample`` and a ``json.dumps`` per example; ``tests/data_prep/test_dataset.py``
checks the bytes against `ChatExample.to_json` and reads every file back with `read_jsonl`.

Examples:
    python -m data_prep data_prep=tickets input=../shared/data/tickets out_dir=work/data/tickets
"""

from __future__ import annotations

import glob
import hashlib
import itertools
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from json.encoder import encode_basestring
from pathlib import Path

import numpy as np
import pandas as pd

from data_prep.schema import read_jsonl
from data_prep.table import InputError, Reject

SPLITS = ("train", "validation", "test")
# Output lines read back through the schema validator after writing, per split (all of them in tests).
VALIDATE_LINES = 1000


@dataclass
class SourceRejects:
    """Rejected records of one input file."""

    source: str
    rejects: list[Reject] = field(default_factory=list)


@dataclass
class ExampleFrame:
    """Examples as columns, ready to split and write.

    Attributes:
        frame: Columns ``id``, ``user``, ``source``, ``line``, ``group``, ``stratum``, and after
            splitting ``split`` and ``assistant`` (answers may need training-split statistics). A source
            that builds text column-wise may give ``user_json`` / ``assistant_json`` (JSON string
            literals, quotes included) instead of ``user`` / ``assistant``.
        label: Label columns in output key order (values: float, bool, str or None).
        meta: Meta columns in output key order.
    """

    frame: pd.DataFrame
    label: dict[str, pd.Series]
    meta: dict[str, pd.Series]


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
    user = string_literals(ex, "user")
    # Only rows whose prompt repeats can be duplicates; labels are rendered and compared for those alone.
    cand = np.flatnonzero(pd.Series(user).duplicated(keep=False).to_numpy())
    if len(cand) == 0:
        return ex, []
    label = concat(_subset(json_parts(ex.label), cand), len(cand))
    codes, _ = pd.factorize(user[cand] + "\x00" + label)
    first_local = pd.Series(np.arange(len(cand))).groupby(codes).transform("min").to_numpy()
    later = first_local != np.arange(len(cand))
    dup = np.zeros(len(f), dtype=bool)
    dup[cand[later]] = True
    first = np.arange(len(f))
    first[cand] = cand[first_local]
    rejects = [
        (
            src,
            Reject(int(ln), f"exact duplicate of {first_src} line {int(first_ln)} (same profile and label)"),
        )
        for src, ln, first_src, first_ln in zip(
            f["source"].to_numpy()[dup],
            f["line"].to_numpy()[dup],
            f["source"].to_numpy()[first[dup]],
            f["line"].to_numpy()[first[dup]],
            strict=True,
        )
    ]
    keep = ~dup
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
    key = hashlib.sha256(f"data_prep-split-{seed}".encode()).hexdigest()[:16]
    if len(groups) == 0:
        return np.array([], dtype=object)
    # A group is identified by its seeded 64-bit SipHash: numeric from here on, and independent of row order.
    h = pd.util.hash_array(groups.astype(str).to_numpy(dtype=object), hash_key=key)
    g_codes, g_hash = pd.factorize(h)
    # factorize numbers groups in order of first appearance, so a group's first row is where its code
    # first exceeds every earlier code.
    seen = np.maximum.accumulate(np.concatenate([[-1], g_codes[:-1]]))
    first_row = np.flatnonzero(g_codes > seen)
    s_codes, _ = pd.factorize(strata.astype(str).to_numpy(dtype=object)[first_row], sort=True)
    order = np.lexsort((g_hash, s_codes))
    size = np.bincount(s_codes)
    block_start = np.concatenate([[0], np.cumsum(size)[:-1]])
    sorted_strata = s_codes[order]
    rank = np.arange(len(order)) - block_start[sorted_strata]
    n_test = np.round(size[sorted_strata] * fractions["test"])
    n_val = np.round(size[sorted_strata] * fractions["validation"])
    split = np.where(rank < n_test, 2, np.where(rank < n_test + n_val, 1, 0))
    per_group = np.empty(len(order), dtype=np.int64)
    per_group[order] = split
    return np.asarray(SPLITS, dtype=object)[per_group[g_codes]]


def json_column(columns: dict[str, pd.Series]) -> pd.Series:
    """One JSON object per row from columns, byte-identical to ``json.dumps(dict, ensure_ascii=False)``.

    Examples:
        python -c "import pandas as pd; from data_prep.dataset import json_column; print(json_column({'a': pd.Series([1.5, None])}).tolist())"
    """
    if not columns:
        return pd.Series([], dtype=object)
    index = next(iter(columns.values())).index
    return pd.Series(concat(json_parts(columns), len(index)), index=index, dtype=object)


def json_parts(columns: dict[str, pd.Series]) -> list:
    """`json_column` as pieces for `concat`, so a caller can join them into a longer line in one pass."""
    parts: list = []
    for i, (key, s) in enumerate(columns.items()):
        parts.append(("{" if i == 0 else ", ") + encode_basestring(key) + ": ")
        if pd.api.types.is_integer_dtype(s.dtype):
            parts.append(s.astype(str).to_numpy(dtype=object))
        else:
            parts.append(per_unique(s.to_numpy(dtype=object), _json_value))
    return [*parts, "}"] if parts else ["{}"]


def concat(parts: list, n: int) -> np.ndarray:
    """Row-wise concatenation of string columns and literal strings (one join per row).

    Examples:
        python -c "import numpy as np; from data_prep.dataset import concat; print(concat(['<', np.array(['a', 'b'], dtype=object), '>'], 2))"
    """
    merged: list = []
    for p in parts:
        if isinstance(p, str) and merged and isinstance(merged[-1], str):
            merged[-1] += p
        else:
            merged.append(p)
    cols = [itertools.repeat(p, n) if isinstance(p, str) else p for p in merged]
    out = np.empty(n, dtype=object)
    out[:] = ["".join(row) for row in zip(*cols, strict=False)] if n else []
    return out


def per_unique(values, fn) -> np.ndarray:
    """``fn`` applied once per distinct value (None and NaN included), spread back over ``values``.

    Most columns here repeat a few values (departments, rounded tenures, cohort reasons), so this
    turns a million Python calls into a few thousand.

    Examples:
        python -c "from data_prep.dataset import per_unique; print(per_unique(['a', 'b', 'a'], str.upper))"
    """
    codes, uniques = pd.factorize(np.asarray(values, dtype=object), use_na_sentinel=True)
    mapped = np.empty(len(uniques) + 1, dtype=object)
    mapped[:-1] = [fn(v) for v in uniques]
    if (codes < 0).any():
        mapped[-1] = fn(None)
    return mapped[codes]


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


def string_literals(ex: ExampleFrame, name: str) -> np.ndarray:
    """JSON string literals of column ``name``: ``<name>_json`` when a source built them, else encoded here."""
    f = ex.frame
    if name + "_json" in f:
        return f[name + "_json"].to_numpy(dtype=object)
    return np.array([encode_basestring(x) for x in f[name]], dtype=object)


def _subset(parts: list, rows: np.ndarray) -> list:
    return [p if isinstance(p, str) else p[rows] for p in parts]


def example_parts(ex: ExampleFrame, task: str, system_prompt: str) -> list:
    """The pieces of every example's JSONL line (``ChatExample.to_json()``): literal strings and columns.

    ``concat(parts, n)`` over a subset of rows gives their lines; `write_dataset` does that in chunks,
    so a million-row dataset never holds all its lines in memory twice.

    Examples:
        python -c "import data_prep.dataset as d; help(d.example_parts)"
    """
    ids = np.array([encode_basestring(x) for x in ex.frame["id"]], dtype=object)
    head = (
        f', "task": {encode_basestring(task)}, "messages": [{{"role": "system", "content": '
        f'{encode_basestring(system_prompt)}}}, {{"role": "user", "content": '
    )
    return [
        '{"id": ',
        ids,
        head,
        string_literals(ex, "user"),
        '}, {"role": "assistant", "content": ',
        string_literals(ex, "assistant"),
        '}], "label": ',
        *json_parts(ex.label),
        ', "meta": ',
        *json_parts(ex.meta),
        "}",
    ]


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
    parts = example_parts(ex, task, system_prompt)
    split = ex.frame["split"].to_numpy()
    outputs, by_split, dist = {}, {}, {}
    for name in SPLITS:
        rows = np.flatnonzero(split == name)
        path = out / f"{name}.jsonl"
        digest = _write_lines(path, parts, rows)
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
    return {str(k): int(v) for k, v in s.value_counts().sort_index().items()}


def _reason_kind(reason: str) -> str:
    kind = re.sub(r"\d+", "N", reason)
    return re.sub(r" of \S+ line N", " of an earlier line", kind)


def _take(ex: ExampleFrame, keep: np.ndarray) -> ExampleFrame:
    return ExampleFrame(
        ex.frame[keep].reset_index(drop=True),
        {k: v[keep].reset_index(drop=True) for k, v in ex.label.items()},
        {k: v[keep].reset_index(drop=True) for k, v in ex.meta.items()},
    )


def _write_lines(path: Path, parts: list, rows: np.ndarray, chunk: int = 20_000) -> str:
    """Write the lines of ``rows`` through a temporary file; return the file's sha256."""
    tmp = path.with_name(path.name + ".partial")
    h = hashlib.sha256()
    with tmp.open("wb") as f:
        for start in range(0, len(rows), chunk):
            sub = rows[start : start + chunk]
            lines = concat(_subset(parts, sub), len(sub))
            data = ("\n".join(lines.tolist()) + "\n").encode("utf-8")
            h.update(data)
            f.write(data)
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
