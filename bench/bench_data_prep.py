"""Benchmark: HR CSV -> split chat JSONL (no tokenization), rows/s and peak RSS on one core.

Generates an HR export in the generic mapping's columns (hire and promotion dates, names, ids), then
converts it in a child process pinned to one CPU core (Arrow and BLAS limited to one thread), so the
figures cover reading, validation, labels, duplicates, splits, answers and writing (sha256 included),
and the child's peak RSS is the conversion's own. The wall time is split into user CPU (the
conversion's own work) and system CPU (mostly the kernel taking in about 1.2 KB of JSONL per row and
faulting in fresh memory, which on a virtual machine varies from run to run with what the host has
reclaimed). Target: at least 100,000 rows/s.

``--baseline`` (repeatable) then converts the same file with the code of other checkouts (say, copies
of older commits made with ``git archive <commit> | tar -x -C <dir>``), each in its own child, for a
side-by-side table from one invocation. ``--repeat`` converts each checkout that many times, in turns,
and reports the fastest run of each: on a shared machine the others' load comes and goes.

``bench/bench_fast_paths.py`` times each hand-written fast path of ``data_prep.fast`` against the library
call it replaces, on the same generated rows.

Examples:
    python bench/bench_data_prep.py                 # 1,000,000 rows
    python bench/bench_data_prep.py --rows 200000 --answer-format json
    python bench/bench_data_prep.py --rows 200000 --baseline /tmp/old-checkout
    python bench/bench_data_prep.py --baseline /tmp/base_a --baseline /tmp/base_b --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
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


ONE_THREAD = {v: "1" for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}


def hr_config(csv_path, out_dir, repo: Path = REPO, *overrides: str):
    """The composed data_prep config of the benchmark's HR file (checkout ``repo``'s conf/)."""
    from hydra import compose, initialize_config_dir

    os.environ["DATA_PREP_SALT"] = "bench"  # the salt from the environment, as older checkouts read it too
    with initialize_config_dir(config_dir=str(repo / "conf"), version_base="1.3"):
        return compose(
            "data_prep",
            overrides=[
                "data_prep=hr_generic",
                f"input={csv_path}",
                f"out_dir={out_dir}",
                "progress=false",
                *overrides,
            ],
        )


def convert(csv_path: str, out_dir: str, answer_format: str, repo: Path = REPO) -> dict:
    """Run the conversion in this process (with the code of checkout ``repo``) and return its figures."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    sys.path.insert(0, str(repo))
    import pyarrow as pa

    from data_prep import config as _config  # noqa: F401
    from data_prep.prepare import run

    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    cfg = hr_config(csv_path, out_dir, repo, f"answer_format={answer_format}")
    start = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_SELF)
    manifest = run(cfg, log_fn=lambda _: None)
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "seconds": time.perf_counter() - start,
        "user_seconds": after.ru_utime - before.ru_utime,
        "system_seconds": after.ru_stime - before.ru_stime,
        "records": manifest["counts"]["records"],
        "written": manifest["counts"]["written"],
        "peak_rss_mb": peak_rss_mb(),
    }


def peak_rss_mb() -> float:
    """This process's peak resident memory since it started its program.

    ``VmHWM`` rather than ``ru_maxrss``: Linux carries ``ru_maxrss`` over ``execve``, so a child would
    report the parent's peak (which held the generated DataFrame) if that was higher.
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(csv_path: Path, out_dir: Path, answer_format: str, repo: Path) -> dict:
    """`convert` in a fresh, single-threaded child process; its figures and its output size."""
    child = subprocess.run(
        [
            sys.executable,
            __file__,
            "--convert",
            str(csv_path),
            str(out_dir),
            "--answer-format",
            answer_format,
            "--repo",
            str(repo),
        ],
        capture_output=True,
        text=True,
        cwd=repo,
        env={**os.environ, **ONE_THREAD},
        check=False,
    )
    if child.returncode != 0:
        raise SystemExit(f"conversion with {repo} failed:\n{child.stderr}")
    r = json.loads(child.stdout.strip().splitlines()[-1])
    r["out_mb"] = sum(f.stat().st_size for f in out_dir.iterdir()) / 1e6
    return r


def report(name: str, r: dict, answer_format: str) -> str:
    rate = r["records"] / r["seconds"]
    return (
        f"{name}: converted {r['records']:,} rows ({r['written']:,} written, {r['out_mb']:.0f} MB JSONL, "
        f"{answer_format}) in {r['seconds']:.1f} s wall on one core ({r['user_seconds']:.1f} s user CPU + "
        f"{r['system_seconds']:.1f} s system CPU): {rate:,.0f} rows/s; peak RSS {r['peak_rss_mb']:,.0f} MB "
        f"(target >= 100,000 rows/s: {'met' if rate >= 100_000 else 'NOT met'})"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows in the generated HR CSV")
    ap.add_argument("--answer-format", default="prose", choices=["prose", "json"])
    ap.add_argument("--work", default=None, help="folder for the CSV and outputs (default: a temporary one)")
    ap.add_argument(
        "--baseline", type=Path, action="append", default=[], help="also convert with this checkout's code"
    )
    ap.add_argument("--repeat", type=int, default=1, help="conversions per checkout; the fastest is reported")
    ap.add_argument("--convert", nargs=2, metavar=("CSV", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--repo", type=Path, default=REPO, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.convert:
        print(json.dumps(convert(*args.convert, args.answer_format, args.repo.resolve())))
        return
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        csv_path = Path(tmp) / "hr.csv"
        t = time.perf_counter()
        generate(csv_path, args.rows)
        print(
            f"generated {args.rows:,} rows ({csv_path.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t:.1f} s"
        )
        runs = [("this checkout", REPO)] + [("baseline " + str(b), b) for b in args.baseline]
        best: dict[int, dict] = {}
        for attempt in range(args.repeat):
            for i, (name, repo) in enumerate(runs):
                out = Path(tmp) / f"out-{i}"
                r = run_child(csv_path, out, args.answer_format, repo.resolve())
                if args.repeat > 1:
                    print(f"  run {attempt + 1}: " + report(name, r, args.answer_format), flush=True)
                if i not in best or r["seconds"] < best[i]["seconds"]:
                    best[i] = r
                shutil.rmtree(out)
        for i, (name, _) in enumerate(runs):
            print(report(name, best[i], args.answer_format), flush=True)


if __name__ == "__main__":
    main()
