"""Splits, duplicates, the written bytes and the manifest, on generated data."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pyarrow as pa
from dp_helpers import hr_rows, prepare, read_rejects, read_split_files, to_csv_bytes
from hypothesis import example, given, settings
from hypothesis import strategies as st

from data_prep import fast
from data_prep.dataset import SPLITS, assign_splits
from data_prep.fast import Coded, Text, first_rows, hash_strings
from data_prep.schema import ChatExample


def test_grouped_stratified_split_by_hand():
    strata = pd.Series(["a"] * 50 + ["b"] * 30)
    groups = pd.Series([f"g{i // 2}" for i in range(80)])  # 40 groups of 2 rows: 25 in a, 15 in b
    split = assign_splits(groups, strata, {"train": 0.6, "validation": 0.2, "test": 0.2}, seed=3)
    df = pd.DataFrame({"g": groups, "s": strata, "split": split})
    assert (df.groupby("g")["split"].nunique() == 1).all()
    per = df.drop_duplicates("g").groupby(["s", "split"]).size()
    assert per["a"].to_dict() == {"test": 5, "train": 15, "validation": 5}
    assert per["b"].to_dict() == {"test": 3, "train": 9, "validation": 3}
    # Row order does not matter: the same groups land in the same splits.
    order = np.random.default_rng(0).permutation(80)
    again = assign_splits(
        groups[order].reset_index(drop=True),
        strata[order].reset_index(drop=True),
        {"train": 0.6, "validation": 0.2, "test": 0.2},
        seed=3,
    )
    assert dict(zip(groups[order], again, strict=True)) == dict(zip(groups, split, strict=False))


def test_written_files_are_the_schema_bytes_and_the_manifest_adds_up(tmp_path):
    df = hr_rows(600, seed=1)
    df.loc[10:19, "employee_id"] = "E-SAME"  # one id on ten different records: all rejected, none guessed
    df.loc[100] = df.loc[99]  # an exact duplicate
    p = tmp_path / "hr.csv"
    p.write_bytes(to_csv_bytes(df))
    manifest, out = prepare(tmp_path, "data_prep=hr_generic", f"input={p}", "answer_format=json")
    splits = read_split_files(out)
    for name in SPLITS:
        lines = (out / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
        for line in lines:
            assert ChatExample.from_dict(json.loads(line)).to_json() == line
        data = (out / f"{name}.jsonl").read_bytes()
        assert manifest["outputs"][f"{name}.jsonl"] == {
            "examples": len(lines),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
    assert manifest["inputs"][0]["sha256"] == hashlib.sha256(p.read_bytes()).hexdigest()
    rejects = read_rejects(out)
    conflicting = [
        r["line"] for r in rejects if r["reason"].startswith("conflicting records of one entity id")
    ]
    assert conflicting == list(range(12, 22))
    assert [(r["line"], r["reason"]) for r in rejects if r["line"] not in conflicting] == [
        (102, "exact duplicate of hr.csv line 101 (same entity and example)")
    ]
    c = manifest["counts"]
    assert c["records"] == 600 and c["written"] == 589 and c["rejected"] == 11
    assert sum(c["by_split"].values()) == c["written"]
    ids = [e.id for s in splits.values() for e in s]
    assert len(ids) == len(set(ids))
    for s in SPLITS:
        left = sum(e.label["attrition"] for e in splits[s])
        assert manifest["label_distribution"][s].get("left", 0) == left


def test_stratification_holds_on_every_split(tmp_path, hr_csv):
    manifest, _ = prepare(tmp_path, "data_prep=hr_generic", f"input={hr_csv}")
    dist = manifest["label_distribution"]
    for stratum in ("left", "stayed"):
        total = sum(dist[s].get(stratum, 0) for s in SPLITS)
        for s, frac in (("validation", 0.1), ("test", 0.1)):
            assert abs(dist[s].get(stratum, 0) - total * frac) <= 0.5 + 1e-9


@settings(max_examples=500, deadline=None)
@given(values=st.lists(st.text(st.characters(exclude_categories=("Cs",)), max_size=40), max_size=50))
# The case that broke CI with categorize=True: pandas' string table stops at NUL, so "" and "\x00" collided.
@example(values=["", "\x00"])
def test_hash_strings_is_pandas_hash_array(values):
    key = "0123456789abcdef"
    # categorize=False: with its default (categorize=True) pandas hashes a string only up to its first
    # NUL ("a\x00b", "a\x00c" and "a" hash alike); ours is the SipHash of all of each value's bytes.
    values = [*values, "a\x00b", "a\x00c"]
    want = pd.util.hash_array(np.array(values, dtype=object), hash_key=key, categorize=False)
    got = hash_strings(pa.array(values, type=pa.string()), key)
    assert got.tolist() == want.tolist()
    # A slice (a non-zero offset into the buffers) hashes the same as a fresh array.
    if len(values) > 2:
        assert hash_strings(pa.array(values).slice(1), key).tolist() == want[1:].tolist()


def _coded(texts, codes):
    return Coded(np.asarray(codes, dtype=np.int16), pa.array(texts, type=pa.large_string()))


def test_fused_text_spells_the_same_rows_and_keys_follow_the_strings():
    text = Text(
        [
            "<",
            _coded(["a", "ab", "x"], [0, 1, 2, 0, 1, 2, 2, 0, 1, 1]),
            "|",
            _coded(["bc", "c", "c"], [1, 1, 0, 0, 2, 2, 1, 0, 0, 1]),
            pa.array([str(i) for i in range(10)]),
            ">",
        ]
    )
    spelt = [
        "<a|c0>",
        "<ab|c1>",
        "<x|bc2>",
        "<a|bc3>",
        "<ab|c4>",
        "<x|c5>",
        "<x|c6>",
        "<a|bc7>",
        "<ab|bc8>",
        "<ab|c9>",
    ]
    assert text.strings().to_pylist() == spelt
    fused = text.fused()
    assert fused.strings().to_pylist() == spelt
    # The two coded columns and the literals around them became one column of 3 x 3 texts.
    assert [type(p).__name__ for p in fused.parts] == ["Coded", "StringArray", "str"]
    assert len(fused.parts[0].texts) == 9
    assert text.nbytes().tolist() == [len(s) for s in spelt]
    assert text.take(np.array([4, 0])).strings().to_pylist() == [spelt[4], spelt[0]]

    # Distinct code combinations can spell one string: "ab" + "c" == "a" + "bc".
    prompts = Text(
        ['"', _coded(["ab", "a", "q"], [0, 1, 0, 2, 1]), _coded(["c", "bc"], [0, 1, 0, 0, 1]), '"']
    )
    assert prompts.strings().to_pylist() == ['"abc"', '"abc"', '"abc"', '"qc"', '"abc"']
    assert prompts.row_keys().tolist() == [0, 0, 0, 1, 0]


def test_first_rows_of_codes_numbered_by_first_appearance():
    codes, _ = pd.factorize(np.array(["b", "a", "b", "c", "a", "c", "d"], dtype=object))
    assert first_rows(codes).tolist() == [0, 1, 3, 6]
    assert first_rows(np.zeros(0, dtype=np.int64)).tolist() == []


def test_small_write_blocks_give_the_same_bytes(tmp_path, monkeypatch, hr_csv):
    big, out_big = prepare(tmp_path / "a", "data_prep=hr_generic", f"input={hr_csv}")
    monkeypatch.setattr(fast, "WRITE_BLOCK_BYTES", 4096)
    monkeypatch.setattr(fast, "KEEP_CACHED_BYTES", 8192)
    small, out_small = prepare(tmp_path / "b", "data_prep=hr_generic", f"input={hr_csv}")
    assert small["outputs"] == big["outputs"]
    for name in SPLITS:
        assert (out_small / f"{name}.jsonl").read_bytes() == (out_big / f"{name}.jsonl").read_bytes()
    assert (out_small / "train.jsonl").stat().st_size > 8 * 8192  # many blocks, most dropped from the cache
