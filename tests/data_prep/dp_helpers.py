"""Helpers for the data-prep tests: composed configs, generated HR exports, the real files when present.

A plain module (not conftest) so test files import it by a name no other test folder uses.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from data_prep import config as _config  # noqa: F401  (registers the schema)
from data_prep.config import SALT_ENV
from data_prep.schema import read_jsonl

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "conf"
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()
HR_COLUMNS = [
    "employee_id",
    "name",
    "hire_date",
    "promotion_date",
    "title",
    "department",
    "region",
    "performance_rating",
    "actual_tenure",
    "attrition",
]


def compose_cfg(*overrides: str):
    """The data-prep config as ``python -m data_prep <overrides>`` composes it."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("data_prep", overrides=list(overrides))


def shared(rel: str) -> Path:
    """A file under ../shared/data, or skip the test when it is absent."""
    p = SHARED_DATA / rel
    if not p.exists():
        pytest.skip(f"{p} is absent (reference data lives in ../shared/data beside the repository)")
    return p


def hr_rows(n: int, seed: int = 0) -> pd.DataFrame:
    """A synthetic HR export in the generic mapping's columns, with dates and promotions."""
    rng = np.random.default_rng(seed)
    hire = pd.Timestamp("2012-01-01") + pd.to_timedelta(rng.integers(0, 3000, n), unit="D")
    promo_days = rng.integers(100, 1500, n)
    left = rng.random(n) < 0.3
    tenure = np.round(rng.uniform(0.2, 12.0, n), 2)
    # A promotion only inside the recorded tenure (a later one is rejected as inconsistent).
    promoted = (rng.random(n) < 0.5) & (promo_days < tenure * 365.25 - 1)
    return pd.DataFrame(
        {
            "employee_id": [f"E{i:06d}" for i in range(n)],
            "name": [f"Person {i}" for i in range(n)],
            "hire_date": hire.strftime("%Y-%m-%d"),
            "promotion_date": np.where(
                promoted, (hire + pd.to_timedelta(promo_days, unit="D")).strftime("%Y-%m-%d"), ""
            ),
            "title": rng.choice(["Engineer", "Senior Engineer", "Analyst", "Manager"], n),
            "department": rng.choice(["Engineering", "Sales", "Finance"], n),
            "region": rng.choice(["EMEA", "North America", "APAC"], n),
            "performance_rating": rng.choice(["Meets", "Exceeds", "Below"], n),
            "actual_tenure": tenure,
            "attrition": np.where(left, "True", "False"),
        }
    )


def to_csv_bytes(df: pd.DataFrame, *, bom: bool = False, crlf: bool = False) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n" if crlf else "\n")
    w.writerow(df.columns)
    w.writerows(df.astype(str).itertuples(index=False, name=None))
    data = buf.getvalue().encode("utf-8")
    return (b"\xef\xbb\xbf" if bom else b"") + data


def read_split_files(out_dir: Path) -> dict[str, list]:
    """Every written example per split, read back through the schema validator."""
    return {s: list(read_jsonl(out_dir / f"{s}.jsonl")) for s in ("train", "validation", "test")}


def read_rejects(out_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (out_dir / "rejects.jsonl").read_text(encoding="utf-8").splitlines()]


def prepare(tmp_path: Path, *overrides: str):
    """Run the data-prep pipeline into tmp_path/out; return (manifest, out_dir)."""
    from data_prep.prepare import run

    out = tmp_path / "out"
    cfg = compose_cfg(f"out_dir={out}", "progress=false", *overrides)
    with mock.patch.dict(os.environ, {SALT_ENV: "test-salt"}):
        return run(cfg, log_fn=lambda _: None), out


def hr_export(
    n: int,
    *,
    profiles: int,
    order: str,
    unit: str,
    blank_share: float,
    copies: int,
    seed: int,
    as_of: str = "2024-06-30",
) -> tuple[pd.DataFrame, dict[str, bool]]:
    """A realistic HR export: few distinct profiles (distinct ids share them), dates in ``order``
    (``iso``, ``dmy`` or ``mdy``; one date with day 28 so the order can be read), tenure in ``unit``
    (``years`` or ``months``) agreeing with the dates up to ``as_of``, blank for ``blank_share`` of the
    people still employed, and ``copies`` exact copies of earlier rows (one person exported twice).

    Returns:
        The rows (strings) and ``{employee_id: left}``, the label each person states.
    """
    rng = np.random.default_rng(seed)
    end = pd.Timestamp(as_of)
    hire = end - pd.to_timedelta(rng.integers(30, 6000, n), unit="D")
    hire = hire.where(np.arange(n) != 0, pd.Timestamp("2015-03-28"))
    left = rng.random(n) < 0.35
    term = hire + pd.to_timedelta(rng.integers(1, 4000, n), unit="D")
    left &= term < end
    stop = np.where(left, term, end)
    years = (pd.DatetimeIndex(stop) - hire).days / 365.25
    tenure = np.round(years * (12 if unit == "months" else 1), 2).astype(str)
    blank = ~left & (rng.random(n) < blank_share)
    fmt = {"iso": "%Y-%m-%d", "dmy": "%d/%m/%Y", "mdy": "%m/%d/%Y"}[order]
    profile = rng.integers(0, profiles, n)
    df = pd.DataFrame(
        {
            "employee_id": [f"E{i:05d}" for i in range(n)],
            "hire_date": hire.strftime(fmt),
            "termination_date": np.where(left, pd.DatetimeIndex(term).strftime(fmt), ""),
            "title": np.array(["Analyst", "Engineer", "Manager"])[profile % 3],
            "department": np.array(["Sales", "Eng"])[profile % 2],
            "actual_tenure": np.where(blank, "", tenure),
            "attrition": np.where(left, "yes", "no"),
        }
    )
    labels = dict(zip(df["employee_id"], left.tolist(), strict=True))
    if copies:
        df = pd.concat([df, df.iloc[rng.integers(0, n, copies)]], ignore_index=True)
    return df, labels


HR_EXPORT_COLUMNS = (
    "data_prep=hr_generic",
    "data_prep.columns.name=''",
    "data_prep.columns.promotion_date=''",
    "data_prep.columns.region=''",
    "data_prep.columns.performance_rating=''",
    "data_prep.columns.termination_date=termination_date",
)
