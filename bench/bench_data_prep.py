"""Benchmark: HR CSV -> split chat JSONL (no tokenization), rows/s and peak RSS on one core.

Generates an HR export in the generic mapping's columns (hire and promotion dates, names, ids), then
converts it in a child process pinned to one CPU core, so the figures cover reading, validation,
labels, duplicates, splits, answers and writing, and the child's peak RSS is the conversion's own.
Target: at least 100,000 rows/s.

Examples:
    python bench/bench_data_prep.py                 # 1,000,000 rows
    python bench/bench_data_prep.py --rows 200000 --answer-format json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]


def generate(path: Path, rows: int, seed: int = 0) -> None:
    """Write a synthetic HR CSV with the columns of ``conf/data_prep/hr_generic.yaml``."""
    rng = np.random.default_rng(seed)
    hire = pd.Timestamp("2008-01-01") + pd.to_timedelta(rng.integers(0, 5000, rows), unit="D")
    tenure = np.round(rng.uniform(0.1, 15.0, rows), 2)
    promo_days = rng.integers(90, 1500, rows)
    promoted = (rng.random(rows) < 0.4) & (promo_days < tenure * 365.25 - 1)
    promo = hire + pd.to_timedelta(promo_days, unit="D")
    idx = np.arange(rows).astype(str)
    df = pd.DataFrame(
        {
            "employee_id": np.char.add("E", idx),
            "name": np.char.add("Person ", idx),
            "hire_date": hire.strftime("%Y-%m-%d"),
            "promotion_date": np.where(promoted, promo.strftime("%Y-%m-%d"), ""),
            "title": rng.choice(["Engineer", "Senior Engineer", "Analyst", "Manager", "Director"], rows),
            "department": rng.choice(["Engineering", "Sales", "Finance", "Operations"], rows),
            "region": rng.choice(["EMEA", "North America", "APAC", "LATAM"], rows),
            "performance_rating": rng.choice(["Below", "Meets", "Exceeds"], rows),
            "actual_tenure": tenure,
            "attrition": np.where(rng.random(rows) < 0.25, "True", "False"),
        }
    )
    df.to_csv(path, index=False)


def convert(csv_path: str, out_dir: str, answer_format: str) -> dict:
    """Run the conversion in this process and return its figures."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    from hydra import compose, initialize_config_dir

    from data_prep import config as _config  # noqa: F401
    from data_prep.prepare import run

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(
            "data_prep",
            overrides=[
                "data_prep=hr_generic",
                f"input={csv_path}",
                f"out_dir={out_dir}",
                f"answer_format={answer_format}",
                "pii.salt=bench",
                "progress=false",
            ],
        )
    start = time.perf_counter()
    cpu = time.process_time()
    manifest = run(cfg, log_fn=lambda _: None)
    return {
        "seconds": time.perf_counter() - start,
        "cpu_seconds": time.process_time() - cpu,
        "records": manifest["counts"]["records"],
        "written": manifest["counts"]["written"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows in the generated HR CSV")
    ap.add_argument("--answer-format", default="prose", choices=["prose", "json"])
    ap.add_argument("--work", default=None, help="folder for the CSV and outputs (default: a temporary one)")
    ap.add_argument("--convert", nargs=2, metavar=("CSV", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.convert:
        print(json.dumps(convert(*args.convert, args.answer_format)))
        return
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        csv_path = Path(tmp) / "hr.csv"
        t = time.perf_counter()
        generate(csv_path, args.rows)
        print(
            f"generated {args.rows:,} rows ({csv_path.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t:.1f} s"
        )
        child = subprocess.run(
            [
                sys.executable,
                __file__,
                "--convert",
                str(csv_path),
                str(Path(tmp) / "out"),
                "--answer-format",
                args.answer_format,
            ],
            capture_output=True,
            text=True,
            cwd=REPO,
            check=False,
        )
        if child.returncode != 0:
            raise SystemExit(f"conversion failed:\n{child.stderr}")
        r = json.loads(child.stdout.strip().splitlines()[-1])
        out_mb = sum(f.stat().st_size for f in (Path(tmp) / "out").iterdir()) / 1e6
    rate = r["records"] / r["seconds"]
    print(
        f"converted {r['records']:,} rows ({r['written']:,} written, {out_mb:.0f} MB JSONL, {args.answer_format}) "
        f"in {r['seconds']:.1f} s wall / {r['cpu_seconds']:.1f} s CPU on one core: {rate:,.0f} rows/s "
        f"({r['records'] / r['cpu_seconds']:,.0f} rows/s of CPU); peak RSS {r['peak_rss_mb']:,.0f} MB "
        f"(target >= 100,000 rows/s: {'met' if rate >= 100_000 else 'NOT met'})"
    )


if __name__ == "__main__":
    main()
