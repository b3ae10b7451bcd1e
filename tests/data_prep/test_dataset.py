"""Splits, duplicates, the written bytes and the manifest, on generated data."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
from dp_helpers import hr_rows, prepare, read_rejects, read_split_files, to_csv_bytes

from data_prep.dataset import SPLITS, assign_splits
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
    df.loc[10:19, "employee_id"] = "E-SAME"  # one employee with ten records
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
    assert [(r["line"], r["reason"]) for r in rejects] == [
        (102, "exact duplicate of hr.csv line 101 (same profile and label)")
    ]
    c = manifest["counts"]
    assert c["records"] == 600 and c["written"] == 599 and c["rejected"] == 1
    assert sum(c["by_split"].values()) == c["written"]
    ids = [e.id for s in splits.values() for e in s]
    assert len(ids) == len(set(ids))
    same = {s for s, exs in splits.items() for e in exs if 12 <= e.meta["source_line"] <= 21}
    assert len(same) == 1
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
