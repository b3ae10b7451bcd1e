"""The memory planner against the measured peak of real fine-tuning runs on this unified-memory machine.

A CPU is a unified-memory device like the DGX Spark: host and "device" memory are one pool, so the peak resident
memory of the training process is what `recipes.plan` must not under-estimate. For each k, a synthetic MXFP4
checkpoint with the real gpt-oss-20b shapes cut to k layers (random values, `bench_import_memory.write_synthetic`)
is imported into NeMo once (not measured); then ``recipes.finetune`` trains it for two steps (micro-batch 1,
sequence 256, the built-in data, one validation), each run in its own process, once per scheme and ``--repeats``
times, side by side in one invocation. Each run reports its own peak (VmHWM of the measured process, read from
/proc/self/status: ``ru_maxrss`` would count its parent's), and the peak before and after the restore of the
imported weights ends (sampled VmRSS every 20 ms), so the phase that sets the peak shows.

The plan is `recipes.plan.estimate` of the same config on this machine's profile (fp32 on CPU); its ``peak`` must
be at or above every measurement and at most 15% above the largest. The summary gives per scheme the slope per
added layer, planned and measured. gpt-oss-120b's layers have the same widths with 128 experts; in fp32 they do
not fit this machine.

Examples:
    python bench/bench_plan_memory.py                                  # k = 1, 2; lora, lora_experts; twice each
    python bench/bench_plan_memory.py --layers 1 --peft lora --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from bench_import_memory import CONFIGS, own_peak_bytes, write_synthetic  # noqa: E402

GB = 1e9
TOLERANCE = 0.15  # the plan may lie at most this far above the measured peak


def overrides(k: int, peft: str, work: Path) -> list[str]:
    """The run: the k-layer slice, micro-batch 1, sequence 256, two steps and one validation batch."""
    return [
        "model=gpt_oss_20b",
        f"model.hf_path={work / f'hf-{k}'}",
        f"model.nemo_path={work / f'nemo-{k}'}",
        f"peft={peft}",
        "data.micro_batch_size=1",
        "data.global_batch_size=1",
        "data.seq_length=256",
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        "trainer.limit_val_batches=1",
        "trainer.checkpoint_every_n_steps=100",
        "export.enabled=false",
    ]


def _vm_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def child(out: Path, args: list[str]) -> None:
    """Train in this process (``recipes.finetune`` with ``args``); write its peaks to ``out`` at exit."""
    import atexit
    import runpy

    loading = [0]  # the highest RSS seen until the restore ends, then the highest after it
    training = [0]
    current = loading
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            current[0] = max(current[0], _vm_rss())
            time.sleep(0.02)

    def report():
        stop.set()
        current[0] = max(current[0], _vm_rss())
        out.write_text(json.dumps({"peak": own_peak_bytes(), "loading": loading[0], "training": training[0]}))

    from nemo.lightning.pytorch.strategies.megatron_strategy import MegatronStrategy

    restore = MegatronStrategy.selective_restore

    def selective_restore(self):
        nonlocal current
        restore(self)
        loading[0] = max(loading[0], _vm_rss())
        current = training

    MegatronStrategy.selective_restore = selective_restore
    threading.Thread(target=sample, daemon=True).start()
    atexit.register(report)
    sys.argv = ["recipes.finetune", *args]
    runpy.run_module("recipes.finetune", run_name="__main__")


def prepare(k: int, work: Path) -> None:
    """The k-layer slice and its NeMo import (bf16, the source's dtype), in a child process."""
    hf, nemo = work / f"hf-{k}", work / f"nemo-{k}"
    if not (hf / "config.json").exists():
        write_synthetic(hf, k)
    if not (nemo / "weights").exists():
        code = "import sys; from convert.import_hf import import_hf; import_hf(sys.argv[1], sys.argv[2], verify=False)"
        subprocess.run(
            [sys.executable, "-c", code, str(hf), str(nemo)], cwd=ROOT, check=True, capture_output=True
        )


def measure(k: int, peft: str, work: Path, tag: str) -> dict:
    out = work / f"peak-{tag}.json"
    out.unlink(missing_ok=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, GPT_OSS_WORK=str(work / "runs"), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    cmd = [sys.executable, __file__, "--child", str(out), *overrides(k, peft, work), f"run_id={tag}"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode or not out.exists():
        sys.exit(f"run {tag} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return {**json.loads(out.read_text()), "seconds": time.perf_counter() - t0}


def planned(k: int, peft: str, work: Path):
    from recipes.plan import compose, estimate, plan_from_cfg

    return estimate(plan_from_cfg(compose([*overrides(k, peft, work), "cluster.device=cpu"])))


def summary(rows: list[dict]) -> tuple[str, bool]:
    lines = [
        "Peak resident memory of the training process (VmHWM, GB = 1e9 bytes) against the plan; 20b-shaped k-layer",
        "slices, fp32 on CPU, micro-batch 1, sequence 256. 'loading' / 'training': the highest RSS until the",
        "restore ended / after it (sampled).",
        "",
        f"{'scheme':<13}{'k':>2} {'plan':>7} {'measured (each run)':>22} {'loading':>8} {'training':>9} "
        f"{'plan/max':>9}  verdict",
    ]
    ok = True
    for row in rows:
        peaks = [r["peak"] for r in row["runs"]]
        ratio = row["plan"] / max(peaks)
        good = min(peaks) <= max(peaks) <= row["plan"] <= (1 + TOLERANCE) * max(peaks)
        ok &= good
        lines.append(
            f"{row['peft']:<13}{row['k']:>2} {row['plan'] / GB:>7.2f} "
            f"{' '.join(f'{p / GB:.2f}' for p in peaks):>22} "
            f"{max(r['loading'] for r in row['runs']) / GB:>8.2f} {max(r['training'] for r in row['runs']) / GB:>9.2f} "
            f"{ratio:>9.3f}  {'ok' if good else 'OUTSIDE [1, 1.15]'}"
        )
    lines.append("")
    for peft in sorted({r["peft"] for r in rows}):
        pts = sorted(
            (r["k"], r["plan"], max(x["peak"] for x in r["runs"])) for r in rows if r["peft"] == peft
        )
        if len(pts) >= 2:
            (k0, p0, m0), (k1, p1, m1) = pts[0], pts[-1]
            lines.append(
                f"{peft}: per added layer, plan {(p1 - p0) / (k1 - k0) / GB:.2f} GB, "
                f"measured {(m1 - m0) / (k1 - k0) / GB:.2f} GB"
            )
    return "\n".join(lines), ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[1, 2], help="k of each slice")
    parser.add_argument("--peft", nargs="+", default=["lora", "lora_experts"], help="schemes to run")
    parser.add_argument("--repeats", type=int, default=2, help="runs per point (peaks vary between runs)")
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.child:
        child(Path(args.child), rest)
        return
    if not (CONFIGS / "configs" / "gpt-oss-20b" / "config.json").exists():
        sys.exit(f"needs the real gpt-oss configs and tokenizer under {CONFIGS}")
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-plan-"))
    rows = []
    for k in args.layers:
        prepare(k, work)
        for peft in args.peft:
            est = planned(k, peft, work)
            runs = [measure(k, peft, work, f"{peft}-{k}-{i}") for i in range(args.repeats)]
            rows.append({"k": k, "peft": peft, "plan": est.peak, "runs": runs})
            print(json.dumps(rows[-1]), flush=True)
    text, ok = summary(rows)
    print("\n" + text)
    if not ok:
        sys.exit("a plan lies outside [measured, 1.15 x measured]")


if __name__ == "__main__":
    main()
