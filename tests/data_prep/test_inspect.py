"""``python -m data_prep.inspect``: what it finds in awkward and real exports, and its starter YAML used as is."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from dp_helpers import REPO, hr_export, shared

from data_prep.config import SALT_ENV
from data_prep.inspect import inspect, main


def _awkward(tmp_path: Path):
    """A European spreadsheet export: ``;``-separated cp1252, day-first dates, months, blanks for active staff."""
    df, _ = hr_export(300, profiles=6, order="dmy", unit="months", blank_share=0.4, copies=0, seed=5)
    rng = np.random.default_rng(1)
    df = df.rename(columns={"employee_id": "Personalnummer", "termination_date": "Termination Date"})
    df["region"] = rng.choice(["Zürich", "Genève", "Köln"], len(df))
    p = tmp_path / "export.csv"
    p.write_bytes(df.to_csv(sep=";", index=False).encode("cp1252"))
    return p, df


def _run_prepare(conf_dir: Path, name: str, data: Path, out: Path) -> dict:
    """``python -m data_prep --config-dir`` with the starter YAML, as a user runs it; the manifest."""
    env = {**os.environ, SALT_ENV: "inspect-test-salt"}
    cmd = [
        sys.executable,
        "-m",
        "data_prep",
        "--config-dir",
        str(conf_dir),
        f"data_prep={name}",
        f"input={data}",
    ]
    cmd += [f"out_dir={out}", "overwrite=true", "progress=false"]
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads((out / "manifest.json").read_text(encoding="utf-8"))


def test_awkward_export_is_read_and_mapped(tmp_path, capsys):
    p, df = _awkward(tmp_path)
    n = len(df)
    report = inspect(p)
    assert report.reading == {"format": "csv", "delimiter": ";", "encoding": "cp1252"}
    assert report.records == n and not report.rejects
    r = report.roles
    assert (r["employee_id"], r["hire_date"], r["termination_date"]) == (
        "Personalnummer",
        "hire_date",
        "Termination Date",
    )
    assert (r["attrition"], r["actual_tenure"], r["region"]) == ("attrition", "actual_tenure", "region")
    assert report.columns["hire_date"].date_formats == ["%d/%m/%Y"]
    assert report.columns["actual_tenure"].blanks > 0
    assert report.tenure_unit == "months"
    assert report.label_counts == df["attrition"].value_counts().to_dict()
    assert report.leaks == {"Termination Date": 1.0}  # blank exactly for the stayers: used for the label only
    assert report.duplicate_ids == {}

    conf = tmp_path / "conf"
    assert main([str(p), "--yaml", str(conf / "data_prep" / "my_export.yaml")]) == 0
    shown = capsys.readouterr().out
    assert "delimiter ';', encoding 'cp1252'" in shown and "order: %d/%m/%Y" in shown
    manifest = _run_prepare(conf, "my_export", p, tmp_path / "out")
    c = manifest["counts"]
    assert c["records"] == n and c["written"] + c["rejected"] == n and c["written"] >= 0.95 * n
    assert sum(c["by_split"].values()) == c["written"]
    assert manifest["date_formats"]["hire_date"]["formats"] == ["%d/%m/%Y"]


def test_duplicate_ids_and_leaks_are_reported(tmp_path):
    df, _ = hr_export(200, profiles=4, order="iso", unit="years", blank_share=0.0, copies=5, seed=2)
    df["EmploymentStatus"] = np.where(df["attrition"] == "yes", "Voluntarily Terminated", "Active")
    p = tmp_path / "dups.tsv"
    p.write_text(df.to_csv(sep="\t", index=False), encoding="utf-8")
    report = inspect(p)
    assert report.reading["delimiter"] == "\t"
    assert report.roles["employee_id"] == "employee_id"
    assert sum(v - 1 for v in report.duplicate_ids.values()) == 5  # 5 extra copies of earlier rows
    assert report.leaks["EmploymentStatus"] == 1.0
    assert "EmploymentStatus" not in report.profile and report.left_out["EmploymentStatus"] == "likely leak"


@pytest.mark.parametrize("file", ["hr/HRDataset_v14.csv", "hr/ibm_hr_attrition.csv"])
def test_real_files_and_their_starter_yaml(tmp_path, file):
    p = shared(file)
    report = inspect(p)
    expected = {
        "hr/HRDataset_v14.csv": {"employee_id": "EmpID", "attrition": "Termd", "hire_date": "DateofHire"},
        "hr/ibm_hr_attrition.csv": {"employee_id": "EmployeeNumber", "attrition": "Attrition"},
    }[file]
    assert {k: report.roles[k] for k in expected} == expected
    if file == "hr/HRDataset_v14.csv":
        assert {"EmploymentStatus", "TermReason"} <= set(report.leaks)
        assert report.columns["DateofHire"].date_formats == ["%m/%d/%Y"]
    conf = tmp_path / "conf"
    assert main([str(p), "--yaml", str(conf / "data_prep" / "starter.yaml")]) == 0
    manifest = _run_prepare(conf, "starter", p, tmp_path / "out")
    c = manifest["counts"]
    assert c["written"] + c["rejected"] == c["records"] == report.records and c["written"] > 0
