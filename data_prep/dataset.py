"""What every source shares: duplicates, seeded grouped-stratified splits, the JSONL files and the manifest.

A source module (hr, tickets, rubric) turns its records into an `ExampleFrame`: one row per example
with the prompt, the answer, the label and meta columns, the source line, a group key (the entity that
must not straddle splits) and a stratum (the label the split is stratified by). This module removes
exact duplicates, assigns splits, writes ``train/validation/test.jsonl`` (each line exactly
``ChatExample.to_json()``), ``rejects.jsonl`` and ``manifest.json``, and checks that the counts add up.
A source with history adds each person's stage-2 conversation (`data_prep.stage2`) on the line after the
stage-1 one, in the same split; the counts stay counts of people (``counts.written``, ``by_split``;
``stage2_by_split`` the stage-2 lines), and ``outputs.<split>.jsonl.examples`` counts the lines.

Output lines are assembled column-wise (`data_prep.fast`, with the figure that buys over a
``json.dumps`` per example) rather than through a ``ChatExample``; ``tests/data_prep/test_dataset.py``
checks the bytes against `ChatExample.to_json` and reads every file back with `read_jsonl`.

Examples:
    python -m data_prep data_prep=tickets input=../shared/data/tickets out_dir=work/data/tickets
"""

from __future__ import annotations

import glob
import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from json.encoder import encode_basestring
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from data_prep.fast import Text, first_rows, hash_strings, json_parts, json_strings, string_array, write_lines
from data_prep.schema import read_jsonl
from data_prep.stage2 import STAGE2_SUFFIX
from data_prep.table import InputError, Reject

SPLITS = ("train", "validation", "test")
# Text columns of a source with history: each person's stage-2 conversation (`data_prep.stage2`), written by
# `example_parts` on the line after the person's stage-1 line: the history turn, the earlier (population-level)
# assistant turn and the personalised answer.
STAGE2_TURN, STAGE2_EARLIER, STAGE2_ANSWER = "stage2_turn", "stage2_earlier", "stage2_answer"
# Output lines read back through the schema validator after writing, per split (all of them in tests).
VALIDATE_LINES = 1000


@dataclass
class SourceRejects:
    """Rejected records of one input file."""

    source: str
    rejects: list[Reject] = field(default_factory=list)
    # How the file was read (`data_prep.table.Table.reading`: format, delimiter, encoding, sheet); in the manifest.
    reading: dict = field(default_factory=dict)


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
        input_strata: Stratum (label) counts of every input record, those rejected included ("unknown"
            where unreadable), when the source counts them; the manifest then checks that the input's
            counts equal the rejects' plus the written ones. The frame may then hold an ``entity``
            column: the key duplicates are found under (`drop_duplicates`).
        rejected_strata: Stratum counts of the records rejected so far.
    """

    frame: pd.DataFrame
    label: dict[str, pd.Series]
    meta: dict[str, pd.Series]
    text: dict[str, Text] = field(default_factory=dict)
    input_strata: dict[str, int] | None = None
    rejected_strata: dict[str, int] = field(default_factory=dict)

    def set_column(self, name: str, values) -> None:
        """Add a column: a `Text` of JSON string literals, or per-row values for ``frame``."""
        if isinstance(values, Text):
            self.text[name] = values
        else:
            self.frame[name] = values


def drop_duplicates(ex: ExampleFrame) -> tuple[ExampleFrame, list[tuple[str, Reject]]]:
    """Remove duplicate records; reject every record of an entity whose records conflict.

    With an ``entity`` column (an employee id, or a key equal only for records equal in every source
    column), a record is a duplicate only of an earlier one of the same entity with the same prompt and
    label; distinct entities with identical examples are separate observations and all kept. An entity
    whose records differ is ambiguous: all its records are rejected, each naming another. Which records
    are written does not depend on the order of the rows. Without an ``entity`` column (tickets, rubric),
    exact duplicates (same prompt and same label) are removed, keeping the first occurrence.

    Returns:
        The remaining examples and a ``(source, Reject)`` per removed one, naming the kept line.

    Examples:
        python -c "import data_prep.dataset as d; help(d.drop_duplicates)"
    """
    f = ex.frame
    if len(f) == 0:
        return ex, []
    if "entity" in f.columns:
        key = pa.array(f["entity"]).dictionary_encode().indices.to_numpy(zero_copy_only=False)
        cand = np.flatnonzero(np.bincount(key)[key] > 1)
    else:
        key = string_literals(ex, "user").row_keys()
        # Only rows whose prompt repeats can be duplicates; labels are compared for those alone.
        cand = np.flatnonzero(np.bincount(key)[key] > 1)
    if len(cand) == 0:
        return ex, []
    sub = _take(ex, np.isin(np.arange(len(f)), cand))
    content = string_literals(sub, "user").row_keys().astype(np.int64)
    label = Text(json_parts(sub.label)).row_keys()
    content, _ = pd.factorize(content * (int(label.max()) + 1) + label)
    entity, _ = pd.factorize(key[cand])
    same, _ = pd.factorize(entity.astype(np.int64) * (int(content.max()) + 1) + content)
    first_same = first_rows(same)[same]  # first row (within cand) with the same entity and example
    first_entity = first_rows(entity)[entity]
    # An entity with more than one distinct example conflicts (without entities, the key is the prompt:
    # the same prompt with other labels is kept).
    per_entity = pd.Series(same).groupby(entity).nunique().to_numpy()
    conflict = (per_entity[entity] > 1) & ("entity" in f.columns)
    later = (first_same != np.arange(len(cand))) & ~conflict
    # The other record a conflicting one is named with: the entity's first, or for that one, the first
    # record that differs from it.
    differs = conflict & (same != same[first_entity])
    other_of_entity = np.full(int(entity.max()) + 1, -1)
    idx = np.flatnonzero(differs)[::-1]
    other_of_entity[entity[idx]] = idx
    other = np.where(same == same[first_entity], other_of_entity[entity], first_entity)
    source, line = f["source"].iloc[cand].tolist(), f["line"].iloc[cand].tolist()
    what = "same entity and example" if "entity" in f.columns else "same profile and label"
    rejects, drop = [], []
    for i in np.flatnonzero(later | conflict).tolist():
        if conflict[i]:
            j = int(other[i])
            reason = (
                f"conflicting records of one entity id: differs from {source[j]} line {int(line[j])}; "
                "both are rejected (fix the export or remove the stale record)"
            )
        else:
            j = int(first_same[i])
            reason = f"exact duplicate of {source[j]} line {int(line[j])} ({what})"
        rejects.append((source[i], Reject(int(line[i]), reason)))
        drop.append(cand[i])
    keep = np.ones(len(f), dtype=bool)
    keep[drop] = False
    out = _take(ex, keep)
    if ex.input_strata is not None:
        out.rejected_strata = dict(
            Counter(ex.rejected_strata) + Counter(_distribution(f["stratum"].iloc[drop]))
        )
    return out, rejects


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
    h = hash_strings(string_array(groups), key)
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


def string_literals(ex: ExampleFrame, name: str) -> Text:
    """JSON string literals of column ``name``: the `Text` a source built, else encoded here."""
    if name in ex.text:
        return ex.text[name]
    values = ex.frame[name]
    if isinstance(values.dtype, pd.ArrowDtype):
        return Text(json_strings(pa.array(values)))
    return Text([pa.array([encode_basestring(x) for x in values], type=pa.string())])


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
    parts = [
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
    if has_stage2(ex):
        # The person's stage-2 conversation, on the next line: same prompt, the earlier turn, the history turn.
        ids = string_array(ex.frame["id"])
        stage2_ids = pc.binary_join_element_wise(
            ids, pa.scalar(STAGE2_SUFFIX, ids.type), pa.scalar("", ids.type)
        )
        stage = pd.Series(np.full(len(ex.frame), 2, dtype=np.int64))
        parts += [
            '{"id": ',
            *json_strings(stage2_ids),
            head,
            *string_literals(ex, "user").parts,
            '}, {"role": "assistant", "content": ',
            *ex.text[STAGE2_EARLIER].parts,
            '}, {"role": "user", "content": ',
            *ex.text[STAGE2_TURN].parts,
            '}, {"role": "assistant", "content": ',
            *ex.text[STAGE2_ANSWER].parts,
            '}], "label": ',
            *json_parts(ex.label),
            ', "meta": ',
            *json_parts({**ex.meta, "stage": stage}),
            "}\n",
        ]
    return Text(parts)


def has_stage2(ex: ExampleFrame) -> bool:
    """True when the examples carry stage-2 conversations (a source with ``data_prep.history``)."""
    return STAGE2_ANSWER in ex.text


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
    per_person = 2 if has_stage2(ex) else 1
    outputs, by_split, dist = {}, {}, {}
    for name in SPLITS:
        rows = np.flatnonzero(np.asarray(ex.frame["split"] == name))
        path = out / f"{name}.jsonl"
        digest = write_lines(path, lines, rows, nbytes[rows])
        # Lines: one per person, two with stage-2 conversations (the counts below are of people).
        outputs[path.name] = {"examples": len(rows) * per_person, "sha256": digest}
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
    reading = {sr.source: sr.reading for sr in rejects}
    manifest = {
        "task": task,
        "inputs": [_file_entry(p, reading) for p in inputs],
        "counts": {
            "records": n_records,
            "written": written,
            "rejected": len(all_rejects),
            "by_split": by_split,
            **({"stage2_by_split": by_split} if per_person == 2 else {}),
            "rejected_by_reason": dict(
                sorted(Counter(_reason_kind(r.reason) for _, r in all_rejects).items(), key=lambda kv: -kv[1])
            ),
        },
        "label_distribution": dist,
        **_label_counts(ex, len(all_rejects)),
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


def _file_entry(path: str, reading: dict[str, dict]) -> dict:
    p = Path(path)
    entry = {"name": p.name, "bytes": p.stat().st_size, "sha256": sha256_file(p)}
    return {**entry, "reading": reading[p.name]} if reading.get(p.name) else entry


def _distribution(s: pd.Series) -> dict:
    if isinstance(s.dtype, pd.CategoricalDtype):
        codes = s.cat.codes.to_numpy()
        counts = np.bincount(codes[codes >= 0], minlength=len(s.cat.categories))
        present = sorted((k, int(v)) for k, v in zip(s.cat.categories, counts, strict=True) if v)
        return {str(k): v for k, v in present}
    return {str(k): int(v) for k, v in s.value_counts().sort_index().items()}


def _label_counts(ex: ExampleFrame, n_rejected: int) -> dict:
    """``label_counts``: the stratum (label) counts of the input, the rejects and the written examples.

    Raises:
        RuntimeError: They do not add up, per label (a bug, like the record counts).
    """
    if ex.input_strata is None:
        return {}
    written = Counter(_distribution(ex.frame["stratum"]))
    rejected = Counter(ex.rejected_strata)
    if Counter(ex.input_strata) != written + rejected or rejected.total() != n_rejected:
        raise RuntimeError(
            f"label counts do not add up: input {ex.input_strata}, rejected {dict(rejected)} "
            f"({n_rejected} rejects), written {dict(written)}"
        )
    return {"label_counts": {"input": ex.input_strata, "rejected": dict(rejected), "written": dict(written)}}


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
        ex.input_strata,
        dict(ex.rejected_strata),
    )


def _take_series(s: pd.Series, rows: np.ndarray) -> pd.Series:
    """``s.iloc[rows]`` with a fresh 0..n-1 index, without building the old index's positions."""
    return pd.Series(s.array.take(rows), name=s.name)


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
