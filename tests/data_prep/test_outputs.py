"""Outputs are written aside and renamed: an existing dataset is replaced only on request and only by a run
that completes; a run that writes nothing fails and says why."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from dp_helpers import REPO, compose_cfg, hr_rows, to_csv_bytes

import data_prep.dataset
from data_prep.config import SALT_ENV, ConfigError
from data_prep.prepare import NothingWrittenError, run


@pytest.fixture(autouse=True)
def _salt(monkeypatch):
    monkeypatch.setenv(SALT_ENV, "test-salt")


def _prepare(src: Path, out: Path, *overrides: str, log_fn=lambda _: None) -> dict:
    cfg = compose_cfg("data_prep=hr_generic", f"input={src}", f"out_dir={out}", "progress=false", *overrides)
    return run(cfg, log_fn=log_fn)


def _snapshot(root: Path) -> dict[str, bytes]:
    """Every file below root (names and bytes), and root's siblings' names: a failed run leaves no litter."""
    files = {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
    siblings = sorted(p.name for p in root.parent.iterdir() if p.name.startswith(root.name))  # .partial, ...
    return {**files, "<siblings>": "\n".join(siblings).encode()}


def _all_rejected_csv(path: Path) -> Path:
    """12 records, all rejected: 5 x empty title, 4 x unknown attrition, 2 x negative tenure, 1 x a 4th reason."""
    df = hr_rows(12)
    df.loc[0:4, "title"] = ""
    df.loc[5:8, "attrition"] = "maybe"
    df.loc[9:10, "actual_tenure"] = -3.0
    df.loc[11, "department"] = ""
    path.write_bytes(to_csv_bytes(df))
    return path


@pytest.fixture
def previous(tmp_path, hr_csv) -> tuple[Path, dict[str, bytes]]:
    """A complete dataset in tmp_path/out and its bytes."""
    out = tmp_path / "out"
    _prepare(hr_csv, out)
    return out, _snapshot(out)


def test_written_aside_then_renamed_with_the_console_in_its_log(tmp_path, hr_csv):
    out = tmp_path / "out"
    (tmp_path / "out.partial").mkdir()  # left by a killed run: cleared, never mixed in
    (tmp_path / "out.partial" / "stale.jsonl").write_text("x")
    shown = []
    manifest = _prepare(hr_csv, out, log_fn=shown.append)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hr.csv", "out"]
    assert sorted(p.name for p in out.iterdir()) == [
        "manifest.json",
        "prepare.log",
        "rejects.jsonl",
        "test.jsonl",
        "train.jsonl",
        "validation.jsonl",
    ]
    assert (out / "prepare.log").read_text() == "".join(f"{line}\n" for line in shown)
    assert any("400 records -> " in line for line in shown) and any(
        "left by an interrupted run" in line for line in shown
    )
    assert manifest["counts"]["records"] == 400


def test_existing_out_dir_is_refused_unless_overwrite(tmp_path, hr_csv, previous):
    out, before = previous
    with pytest.raises(ConfigError, match="overwrite=true"):
        _prepare(hr_csv, out, "seed=1")
    assert _snapshot(out) == before
    m = _prepare(hr_csv, out, "seed=1", "overwrite=true")
    after = _snapshot(out)
    assert after["test.jsonl"] != before["test.jsonl"]  # the new split, not the old one
    assert m["seed"] == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["hr.csv", "out"]


def test_overwrite_never_replaces_a_folder_data_prep_did_not_write(tmp_path, hr_csv):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="did not write"):
        _prepare(hr_csv, out, "overwrite=true")
    assert (out / "mine.txt").read_text() == "keep me" and [p.name for p in out.iterdir()] == ["mine.txt"]


def test_interrupted_run_leaves_the_previous_dataset_byte_identical(monkeypatch, hr_csv, previous):
    out, before = previous
    real, calls = data_prep.dataset.write_lines, []

    def interrupted(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 2:  # train.jsonl written, validation.jsonl on its way: Ctrl-C
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(data_prep.dataset, "write_lines", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _prepare(hr_csv, out, "seed=1", "overwrite=true")
    assert len(calls) == 2 and calls[0].parent.name == "out.partial"
    assert _snapshot(out) == before


def test_failing_run_leaves_the_previous_dataset_byte_identical(monkeypatch, hr_csv, previous):
    out, before = previous
    real = data_prep.dataset._write_atomic

    def disk_full(path, data):
        if path.name == "manifest.json":
            raise OSError(28, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(data_prep.dataset, "_write_atomic", disk_full)
    with pytest.raises(OSError, match="No space left"):
        _prepare(hr_csv, out, "seed=1", "overwrite=true")
    assert _snapshot(out) == before


def test_nothing_written_is_an_error_naming_the_top_reasons(tmp_path, previous):
    out, before = previous
    src = _all_rejected_csv(tmp_path / "bad.csv")
    with pytest.raises(NothingWrittenError) as e:
        _prepare(src, out, "overwrite=true")
    msg = str(e.value)
    assert "all 12 records were rejected" in msg
    assert "5 x title is empty (title) (first: bad.csv line 2)" in msg, msg
    assert "4 x attrition 'maybe'" in msg and "2 x actual_tenure" in msg, msg
    assert msg.count(" x ") == 3 and "(and 1 more reason)" in msg, msg
    assert _snapshot(out) == before


def test_nothing_written_exits_1_on_the_command_line(tmp_path):
    src = _all_rejected_csv(tmp_path / "bad.csv")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "data_prep",
            "data_prep=hr_generic",
            f"input={src}",
            f"out_dir={tmp_path / 'o'}",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 1
    assert (
        "no examples written: all 12 records were rejected" in r.stderr and "5 x title is empty" in r.stderr
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv"]
