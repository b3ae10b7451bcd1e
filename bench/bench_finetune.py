"""Wall time of `make finetune` on this machine: a cold run (tiny model built and imported) and a warm one.

Both runs go side by side in one invocation, in a fresh work folder, so their ratio is comparable on a
shared machine. Prints the stage times that `make finetune` reports and the totals.

Examples:
    python bench/bench_finetune.py
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


def run_once(work: Path, args: str) -> tuple[float, list[str]]:
    env = dict(os.environ, GPT_OSS_WORK=str(work))
    t0 = time.perf_counter()
    proc = subprocess.run(
        ["make", "-s", "finetune", f"ARGS={args}"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    wall = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"make finetune failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    stages = [
        line for line in proc.stdout.splitlines() if re.match(r"^\[\d/\d\]|^\s+loss |^\s+exported", line)
    ]
    return wall, stages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--args", default="", help="extra overrides passed as make finetune ARGS=...")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for label in ("cold (build + import + train + merge + export)", "warm (model and data present)"):
            wall, stages = run_once(work, args.args)
            print(f"\n{label}: {wall:.1f} s wall on {os.cpu_count()} cores")
            for line in stages:
                print("   ", line.strip())


if __name__ == "__main__":
    main()
