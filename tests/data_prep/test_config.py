"""Every shipped data-prep config composes and validates; mistakes fail at compose time or in validate()."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from dp_helpers import CONF, REPO, compose_cfg, hr_rows, to_csv_bytes
from hydra.errors import ConfigCompositionException

from data_prep.config import SALT_ENV, ConfigError, validate

SOURCES = sorted(p.stem for p in (CONF / "data_prep").glob("*.yaml"))


def test_shipped_sources():
    assert SOURCES == ["hr_generic", "hr_hrdataset_v14", "hr_ibm_attrition", "rubric", "tickets"]


@pytest.mark.parametrize("source", SOURCES)
def test_every_source_composes_and_validates(source, monkeypatch):
    monkeypatch.delenv("GPT_OSS_WORK", raising=False)
    cfg = compose_cfg(f"data_prep={source}", "input=x")
    validate(cfg)
    assert cfg.out_dir == f"work/data/{source}"


def test_typos_fail_at_compose_time():
    with pytest.raises(ConfigCompositionException):
        compose_cfg("data_prep=tickets", "input=x", "sead=1")
    with pytest.raises(ConfigCompositionException):
        compose_cfg("data_prep=tickets", "input=x", "seed=one")


def test_validate_lists_every_problem_with_its_fix():
    cfg = compose_cfg(
        "data_prep=hr_generic",
        "input=x",
        "answer_format=yaml",
        "splits.train=0.5",
        "pii.mode=keep",
        "data_prep.columns.title=''",
        "data_prep.cohort=[colour]",
        "+data_prep.profile.name=Name",
    )
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    msg = str(e.value)
    for needle in (
        "answer_format=json",
        "sum to 1",
        "pii.mode",
        "data_prep.columns.title=<column>",
        "data_prep.cohort",
        "personal column(s) ['name']",
    ):
        assert needle in msg, needle


def test_gpt_oss_work_moves_the_default_out_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("GPT_OSS_WORK", str(tmp_path / "w"))
    assert compose_cfg("data_prep=tickets", "input=x").out_dir == f"{tmp_path}/w/data/tickets"


def _cli(*args: str, cwd=REPO, salt: str | None = None) -> subprocess.CompletedProcess:
    """``python -m data_prep <args>`` in a child, with ``DATA_PREP_SALT`` only when ``salt`` is given."""
    env = {k: v for k, v in os.environ.items() if k != SALT_ENV}
    env["PYTHONPATH"] = str(REPO)
    if salt is not None:
        env[SALT_ENV] = salt
    return subprocess.run(
        [sys.executable, "-m", "data_prep", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_end_to_end(tmp_path):
    p = tmp_path / "hr.csv"
    p.write_bytes(to_csv_bytes(hr_rows(50)))
    out = tmp_path / "out"
    r = _cli("data_prep=hr_generic", f"input={p}", f"out_dir={out}")
    assert r.returncode == 0, r.stderr
    assert "50 records -> 50 written" in r.stdout
    assert sorted(x.name for x in out.iterdir()) == [
        "manifest.json",
        "prepare.log",
        "rejects.jsonl",
        "test.jsonl",
        "train.jsonl",
        "validation.jsonl",
    ]
    # The log holds what the console showed; no Hydra config dump anywhere.
    assert (out / "prepare.log").read_text() == r.stdout
    assert "random per run" in r.stdout
    assert not (out / ".hydra").exists() and not (REPO / ".hydra").exists()
    bad = _cli("data_prep=hr_ibm_attrition", f"input={p}", f"out_dir={tmp_path / 'bad'}")
    assert bad.returncode != 0
    assert "not in its header" in bad.stderr and "data_prep.columns" in bad.stderr
    assert not (tmp_path / "bad").exists() and not (tmp_path / "bad.partial").exists()


def test_recode_names_a_mapped_field_or_profile_column_for_every_task():
    # HR: a field or a profile column is accepted (shipped IBM mapping); the column of a field is refused.
    validate(compose_cfg("data_prep=hr_ibm_attrition", "input=x"))
    cases = {
        "hr_ibm_attrition": (
            "JobRole",
            "it is the column of title: recode the field (data_prep.recode.title)",
        ),
        "hr_generic": ("Salary", "names no mapped field and no data_prep.profile column"),
        "tickets": ("customer", "names no mapped field and no data_prep.profile column"),
        "rubric": ("grade", "names no mapped field and no data_prep.profile column"),
    }
    for source, (key, needle) in cases.items():
        with pytest.raises(ConfigError) as e:
            validate(compose_cfg(f"data_prep={source}", "input=x", f"++data_prep.recode.{key}={{a: b}}"))
        assert f"data_prep.recode.{key} " in str(e.value) and needle in str(e.value), source


def test_options_of_another_task_are_refused_by_name():
    for source, option in (
        ("tickets", "data_prep.cohort=[title]"),
        ("rubric", "++data_prep.profile.Age=Age"),
    ):
        with pytest.raises(ConfigError) as e:
            validate(compose_cfg(f"data_prep={source}", "input=x", option))
        name = option.lstrip("+").split("=")[0].split(".")[1]
        assert f"data_prep.{name} does not apply to task {source}" in str(e.value)
