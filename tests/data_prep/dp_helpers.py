"""Helpers for the data-prep tests: composed configs, generated HR exports, the real files when present.

A plain module (not conftest) so test files import it by a name no other test folder uses.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from data_prep import config as _config  # noqa: F401  (registers the schema)
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
    cfg = compose_cfg(f"out_dir={out}", "pii.salt=test-salt", "progress=false", *overrides)
    return run(cfg, log_fn=lambda _: None), out
