"""Benchmark: each hand-written fast path of data_prep against the library call it replaces, side by side.

Generates the HR export of ``bench_data_prep.py``, runs the HR conversion up to its output lines on
one core (Arrow and BLAS limited to one thread), and on those very inputs times, best of ``--repeat``:

- ``hash_strings`` (vectorised SipHash-2-4 on Arrow's bytes) against ``pd.util.hash_array(...,
  categorize=False)`` on the same ids as Python strings (the conversion from Arrow counted, since the
  library needs it), the group keys the splits and the pseudonymous ids hash;
- ``Text.row_keys`` (codes of the prompts, numbered by first appearance, through a polynomial hash of
  code combinations) against Arrow's ``dictionary_encode`` and ``pd.factorize`` of the spelt-out prompts;
- the column-wise JSONL builder (``example_parts(...).fused()`` written by ``write_lines``) against
  ``json.dumps`` of each row's dict (the prompts and answers given as Python strings, decoded outside
  the timing), both writing one file and hashing it;
- the fused pieces (``Text.fused``) against joining the unfused pieces, and the page-cache hint in
  ``write_lines`` against a plain write;
- ``read_table(arrow=True)`` (Arrow's parser plus the checks that line it up with source lines) against
  the record-by-record ``csv`` path that gives the same table;
- ``nmi_min`` (the leak guard's normalised mutual information from one ``np.bincount`` of code pairs)
  against ``sklearn.metrics.normalized_mutual_info_score(average_method="min")``, on the leak levels of
  the HR task's profile columns and the attrition label of the training split (the guard's own inputs).

Each row says whether both produced the same output (hash values, codes, bytes, rows and rejects).

Examples:
    python bench/bench_fast_paths.py                 # 1,000,000 rows
    python bench/bench_fast_paths.py --rows 200000 --repeat 1
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.update({v: "1" for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")})
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402
from bench_data_prep import generate, hr_config  # noqa: E402


def best(fn, repeat: int):
    """The result of ``fn()`` and its best wall time over ``repeat`` calls."""
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return out, min(times)


def hr_example_frame(csv_path: Path, out_dir: Path):
    """The HR conversion up to its output lines: the example frame as `write_dataset` gets it."""
    from data_prep import config as _config  # noqa: F401
    from data_prep import hr
    from data_prep.dataset import SPLITS, drop_duplicates, split_codes

    cfg = hr_config(csv_path, out_dir)
    ex, _, _, _ = hr.build(cfg)
    ex, _ = drop_duplicates(ex)
    fractions = {name: float(cfg.splits[name]) for name in SPLITS}
    codes = split_codes(ex.frame["group"], ex.frame["stratum"], fractions, cfg.seed)
    ex.frame["split"] = pd.Categorical.from_codes(codes, categories=SPLITS)
    for name, values in hr.answers(ex, cfg)[0].items():
        ex.set_column(name, values)
    return ex, hr.system_prompt(ex, cfg)


def bench_hash(ex, repeat: int) -> list:
    from data_prep.fast import hash_strings

    key = "0123456789abcdef"
    ids = pa.array(ex.frame["group"])

    def library():
        return pd.util.hash_array(ids.to_numpy(zero_copy_only=False), hash_key=key, categorize=False)

    ours, t_ours = best(lambda: hash_strings(ids, key), repeat)
    lib, t_lib = best(library, repeat)
    with_nul = ["a\x00b", "a\x00c", "a", ""]
    nul_ok = (
        hash_strings(pa.array(with_nul), key).tolist()
        == pd.util.hash_array(np.array(with_nul, dtype=object), hash_key=key, categorize=False).tolist()
    )
    return [
        (
            "SipHash of ids: hash_strings vs pd.util.hash_array(categorize=False)",
            t_ours,
            t_lib,
            np.array_equal(ours, lib) and nul_ok,
        )
    ]


def bench_row_keys(ex, repeat: int) -> list:
    from data_prep.dataset import string_literals

    user = string_literals(ex, "user")

    def arrow():
        return user.strings().dictionary_encode().indices.to_numpy()

    def pandas():
        return pd.factorize(user.strings().to_numpy(zero_copy_only=False))[0]

    ours, t_ours = best(user.row_keys, repeat)
    a, t_a = best(arrow, repeat)
    p, t_p = best(pandas, repeat)
    return [
        (
            "duplicate keys of prompts: Text.row_keys vs pyarrow dictionary_encode",
            t_ours,
            t_a,
            (ours == a).all(),
        ),
        ("duplicate keys of prompts: Text.row_keys vs pd.factorize", t_ours, t_p, (ours == p).all()),
    ]


def _plain(v):
    """A label or meta value as `json.dumps` should see it (NaN is null, numpy scalars as Python's)."""
    if v is None or (isinstance(v, float) and v != v):
        return None
    return v.item() if isinstance(v, np.generic) else v


def bench_jsonl(ex, system_prompt: str, work: Path, repeat: int) -> list:
    from data_prep import fast
    from data_prep.dataset import example_parts, string_literals

    n = len(ex.frame)
    rows = np.arange(n)
    # The library path would get plain strings from its source: decode the literals outside the timing.
    user = [json.loads(s) for s in string_literals(ex, "user").strings().to_pylist()]
    answer = [json.loads(s) for s in string_literals(ex, "assistant").strings().to_pylist()]

    def ours(fuse=True):
        lines = example_parts(ex, "hr", system_prompt)
        lines = lines.fused() if fuse else lines
        return fast.write_lines(work / "ours.jsonl", lines, rows, lines.nbytes())

    def library():
        ids = ex.frame["id"].astype(str).tolist()
        label = {k: [_plain(v) for v in s.astype(object).tolist()] for k, s in ex.label.items()}
        meta = {k: [_plain(v) for v in s.astype(object).tolist()] for k, s in ex.meta.items()}
        h = hashlib.sha256()
        with (work / "library.jsonl").open("wb") as f:
            for a in range(0, n, 10_000):
                block = "".join(
                    json.dumps(
                        {
                            "id": ids[i],
                            "task": "hr",
                            "messages": [
                                {"role": "system", "content": system_prompt},
                                {"role": "user", "content": user[i]},
                                {"role": "assistant", "content": answer[i]},
                            ],
                            "label": {k: v[i] for k, v in label.items()},
                            "meta": {k: v[i] for k, v in meta.items()},
                        },
                        ensure_ascii=False,
                    )
                    + "\n"
                    for i in range(a, min(n, a + 10_000))
                ).encode("utf-8")
                h.update(block)
                f.write(block)
        return h.hexdigest()

    def no_cache_hint():
        keep = fast.KEEP_CACHED_BYTES
        fast.KEEP_CACHED_BYTES = 1 << 62
        try:
            return ours()
        finally:
            fast.KEEP_CACHED_BYTES = keep

    d_ours, t_ours = best(ours, repeat)
    d_lib, t_lib = best(library, repeat)
    d_unfused, t_unfused = best(lambda: ours(fuse=False), repeat)
    d_plain, t_plain = best(no_cache_hint, repeat)
    return [
        ("JSONL lines: column-wise builder vs json.dumps per row", t_ours, t_lib, d_ours == d_lib),
        ("JSONL lines: Text.fused vs joining unfused pieces", t_ours, t_unfused, d_ours == d_unfused),
        ("JSONL write: posix_fadvise(DONTNEED) vs plain write", t_ours, t_plain, d_ours == d_plain),
    ]


def bench_csv(csv_path: Path, repeat: int) -> list:
    from data_prep import table

    raw = csv_path.read_bytes()

    def same(a, b):
        return a.arrow.equals(b.arrow) and np.array_equal(a.line, b.line) and a.rejects == b.rejects

    ours, t_ours = best(lambda: table.read_table(csv_path, arrow=True), repeat)
    exact, t_exact = best(lambda: table._read_csv_exact(raw, 100_000, False, ","), repeat)
    pandas, t_pandas = best(lambda: table.read_table(csv_path), repeat)
    return [
        ("CSV: read_table(arrow=True) vs csv module (exact path)", t_ours, t_exact, same(ours, exact)),
        ("CSV: read_table(arrow=True) vs pandas C parser path", t_ours, t_pandas, same(ours, pandas)),
    ]


def bench_nmi(ex, csv_path: Path, repeat: int) -> list:
    from sklearn.metrics import normalized_mutual_info_score

    from data_prep.fast import nmi_min
    from data_prep.inspect import leak_levels
    from data_prep.tasks.hr import _prompt_columns

    train = np.flatnonzero(np.asarray(ex.frame["split"] == "train"))
    y = pd.factorize(ex.label["attrition"].to_numpy(dtype=bool)[train])[0]
    shown = _prompt_columns(ex, hr_config(csv_path, csv_path.parent / "out").data_prep, train)
    levels = [leak_levels(v) for v in shown.values()]

    def library():
        return [float(normalized_mutual_info_score(y, x, average_method="min")) for x in levels]

    ours, t_ours = best(lambda: [nmi_min(y, x) for x in levels], repeat)
    lib, t_lib = best(library, repeat)
    return [
        (
            f"leak guard NMI of {len(levels)} columns: nmi_min vs sklearn normalized_mutual_info_score",
            t_ours,
            t_lib,
            ours == lib,
        )
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows in the generated HR CSV")
    ap.add_argument("--repeat", type=int, default=3, help="timings per piece; the best is reported")
    ap.add_argument("--work", default=None, help="folder for the CSV and outputs (default: a temporary one)")
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        work = Path(tmp)
        csv_path = work / "hr.csv"
        generate(csv_path, args.rows)
        ex, system_prompt = hr_example_frame(csv_path, work / "out")
        print(
            f"{args.rows:,} generated HR rows, {len(ex.frame):,} examples; best of {args.repeat}", flush=True
        )
        results = bench_hash(ex, args.repeat)
        results += bench_row_keys(ex, args.repeat)
        results += bench_jsonl(ex, system_prompt, work, args.repeat)
        results += bench_csv(csv_path, args.repeat)
        results += bench_nmi(ex, csv_path, args.repeat)
    width = max(len(r[0]) for r in results)
    print(f"{'piece':<{width}}  {'ours s':>7}  {'library s':>9}  {'ratio':>6}  same output")
    for name, t_ours, t_lib, same in results:
        print(
            f"{name:<{width}}  {t_ours:7.2f}  {t_lib:9.2f}  {t_lib / t_ours:5.1f}x  {'yes' if same else 'NO'}"
        )


if __name__ == "__main__":
    main()
