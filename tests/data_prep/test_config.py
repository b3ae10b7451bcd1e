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
    assert SOURCES == [
        "hr_generic",
        "hr_hrdataset_v14",
        "hr_ibm_attrition",
        "hr_ibm_attrition_history",
        "rubric",
        "tickets",
    ]


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
        ("tickets", "data_prep.date_fail_share=0.1"),
        ("rubric", "++data_prep.profile.Age=Age"),
        ("rubric", "data_prep.tenure_tolerance_years=1"),
        ("hr_generic", "data_prep.languages=[en]"),
        ("hr_ibm_attrition", "data_prep.unescape_newlines=true"),
        ("hr_hrdataset_v14", "data_prep.score_bands=3"),
    ):
        with pytest.raises(ConfigError) as e:
            validate(compose_cfg(f"data_prep={source}", "input=x", option))
        name = option.lstrip("+").split("=")[0].split(".")[1]
        task = "hr" if source.startswith("hr_") else source
        # Reported once, naming the option, the task and what its source reads.
        assert (
            str(e.value).count(f"data_prep.{name} does not apply to task {task}: its source reads only") == 1
        )


def test_every_option_an_hr_mapping_sets_is_read_by_hr():
    # All of HR's own options away from their defaults at once: none is refused as unread.
    validate(
        compose_cfg(
            "data_prep=hr_generic",
            "input=x",
            "++data_prep.profile.Age=Age",
            "data_prep.true_values=[y]",
            "data_prep.false_values=[n]",
            "data_prep.pii_columns=[name]",
            "data_prep.allow_label_columns=[Age]",
            "+data_prep.date_formats.hire_date=%d/%m/%Y",
            "data_prep.date_fail_share=0.1",
            "data_prep.tenure_unit=months",
            "data_prep.tenure_tolerance_years=1",
            "data_prep.tenure_tolerance_share=0.2",
            "data_prep.tenure_min_agree_share=0.6",
            "data_prep.as_of=2020-01-01",
            "data_prep.max_tenure_years=50",
            "data_prep.cohort=[department]",
            "data_prep.min_cohort=5",
            "data_prep.medium_risk_rate=0.3",
        )
    )


def test_hr_tolerance_settings_are_checked():
    cfg = compose_cfg(
        "data_prep=hr_generic",
        "input=x",
        "data_prep.date_fail_share=1.5",
        "data_prep.tenure_tolerance_years=-1",
        "data_prep.tenure_tolerance_share=-0.1",
        "data_prep.tenure_min_agree_share=0",
    )
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    msg = str(e.value)
    for needle in (
        "data_prep.date_fail_share=1.5; use a share between 0 and 1",
        "data_prep.tenure_tolerance_years=-1.0; use a non-negative number of years",
        "data_prep.tenure_tolerance_share=-0.1; use a non-negative share of the dates' tenure",
        "data_prep.tenure_min_agree_share=0.0; use a share above 0, at most 1",
    ):
        assert needle in msg, needle


def test_a_conversion_never_imports_scikit_learn(tmp_path):
    """``python -m data_prep`` leaves scikit-learn alone (a second and 73 MB to import): the leak guard's NMI
    is `data_prep.fast.nmi_min`, and the tasks import their metrics and baselines where those are used."""
    p = tmp_path / "hr.csv"
    p.write_bytes(to_csv_bytes(hr_rows(50)))
    # The CLI's own entry point, then the modules it left loaded.
    code = (
        "import runpy, sys\n"
        "runpy.run_module('data_prep', run_name='__main__')\n"
        "print('loaded:', sorted({m.split('.')[0] for m in sys.modules} & {'sklearn', 'scipy'}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), SALT_ENV: "test-salt"}
    r = subprocess.run(
        [sys.executable, "-c", code, "data_prep=hr_generic", f"input={p}", f"out_dir={tmp_path / 'out'}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "50 records -> 50 written" in r.stdout
    loaded = r.stdout.splitlines()[-1]
    assert loaded.startswith("loaded:") and "sklearn" not in loaded, loaded
