"""Wall time of `make finetune` then `make predict` on this machine, and the score they print.

A cold pass (tiny model built and imported, data written) and a warm one (model and data present) go side
by side in one invocation, in a fresh work folder, so their ratio is comparable on a shared machine; each
further ``--seeds`` value adds a warm pass trained with that seed, to show the score does not hang on one
seed. Every pass prints the stage times `make finetune` reports, the wall time of each command and of both
together (the quickstart's promise: within 3 minutes on 2 cores), the held-out score line of
``recipes.evaluate`` and the load average of the machine while it ran (other work on a shared machine slows
every figure).

Examples:
    python bench/bench_finetune.py
    python bench/bench_finetune.py --seeds 1 2          # two more warm passes, trained with seed=1 and seed=2
    python bench/bench_finetune.py --args "peft=none"
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# What is worth showing of the two commands' output: stage lines, the loss, the export check, the score.
SHOWN = re.compile(r"^\[\d(-\d)?/\d\]|^\s+loss |^\s+exported|^scored |^\s+\w+ \w+: accuracy")


def make(target: str, work: Path, args: str) -> tuple[float, list[str]]:
    """Run ``make -s <target> ARGS=<args>`` with ``GPT_OSS_WORK=work``; its wall time and the lines worth showing."""
    env = dict(os.environ, GPT_OSS_WORK=str(work))
    t0 = time.perf_counter()
    proc = subprocess.run(
        ["make", "-s", target, f"ARGS={args}"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    wall = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"make {target} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return wall, [line for line in proc.stdout.splitlines() if SHOWN.match(line)]


def one_pass(label: str, work: Path, args: str) -> None:
    load0 = os.getloadavg()[0]
    t_fit, fit_lines = make("finetune", work, args)
    t_pred, pred_lines = make("predict", work, "")
    load1 = os.getloadavg()[0]
    print(
        f"\n{label}: finetune {t_fit:.1f} s + predict {t_pred:.1f} s = {t_fit + t_pred:.1f} s wall on "
        f"{os.cpu_count()} cores (load average {load0:.1f} at the start, {load1:.1f} at the end)"
    )
    for line in fit_lines + pred_lines:
        print("   ", line.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--args", default="", help="extra overrides passed as make finetune ARGS=...")
    parser.add_argument("--seeds", type=int, nargs="*", default=[], help="further warm passes with seed=N")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        one_pass("cold (build + import + train + export, then predict + evaluate)", work, args.args)
        one_pass("warm (model and data present)", work, args.args)
        for seed in args.seeds:
            one_pass(f"warm, seed={seed}", work, f"{args.args} seed={seed}".strip())


if __name__ == "__main__":
    main()
