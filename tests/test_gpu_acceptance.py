"""bench/gpu_acceptance.py: its plumbing, time-boxing and report on CPU; its two cheapest checks on a GPU.

The CPU tests run the command as a user does (a fresh Python): a check that overruns its limit is stopped
and reported as failed (timed out) while the next check still runs; the report is written whatever happens;
the exit status is 0 only when nothing failed and something passed. The ``gpu`` tests run checks 1 and 2
(Transformer Engine path on the tiny model) and skip without CUDA.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "bench" / "gpu_acceptance.py"
GPU_CHECKS = ("te_tiny_logits", "te_lora_sft", "fp8_base", "slice_throughput", "te_packing")


def acceptance(out: Path, *args: str, timeout: int = 900) -> tuple[subprocess.CompletedProcess, dict, str]:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out), *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    report = json.loads((out / "report.json").read_text())
    return proc, report, (out / "report.md").read_text()


def by_name(report: dict) -> dict:
    return {c["name"]: c for c in report["checks"]}


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_acceptance", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(sys.modules[spec.name])
    return sys.modules[spec.name]


def test_an_overrunning_check_is_stopped_and_failed_and_the_next_one_still_runs(tmp_path):
    out = tmp_path / "acc"
    proc, report, md = acceptance(
        out,
        "--cpu",
        "--budget",
        "600",
        "--only",
        "local_tiny_logits,packing_dataset",
        "--cap",
        "local_tiny_logits=2",  # its imports alone take longer
    )
    checks = by_name(report)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # a check failed
    timed_out = checks["local_tiny_logits"]
    assert timed_out["status"] == "fail" and timed_out["reason"].startswith("timed out after 2 s")
    data = checks["packing_dataset"]
    assert data["status"] == "pass", data
    for seq in ("seq256", "seq2048"):
        fig = data["figures"][seq]
        assert fig["examples"] > 100 and 0 < fig["unpacked_share"] <= 1 and 0 < fig["packed_share"] <= 1
    assert data["figures"]["seq2048"]["packed_fill"] > 0.8 > 0.2 > data["figures"]["seq2048"]["unpacked_fill"]
    for name in GPU_CHECKS:  # GPU-only checks say why they did not run
        assert checks[name]["status"] == "skipped" and checks[name]["reason"] == "no CUDA"
    assert checks["local_lora_sft"]["reason"] == "not selected (--only)"
    assert report["counts"] == {"passed": 1, "failed": 1, "skipped": 6}
    assert report["device"]["kind"] == "cpu" and report["versions"]["installed"]["nemo_toolkit"] == "2.7.3"
    # the console: a line per check as it ends, the counts last
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == "passed 1, failed 1, skipped 6"
    assert any(line.split()[1:3] == ["local_tiny_logits", "fail"] for line in lines if line[:2].strip())
    assert "| `local_tiny_logits`" in md and "timed out after 2 s" in md and "### packing_dataset" in md
    # the stopped check never wrote a result; its log is kept for the reader
    assert not (out / "checks" / "local_tiny_logits.json").exists()
    assert (out / "logs" / "local_tiny_logits.log").exists()


def test_with_no_budget_every_check_is_skipped_the_report_is_written_and_the_run_fails(tmp_path):
    proc, report, _ = acceptance(tmp_path / "acc", "--cpu", "--budget", "1", timeout=300)
    assert proc.returncode == 1  # nothing passed: nothing was proven
    reasons = {c["name"]: c["reason"] for c in report["checks"]}
    assert all(reasons[n] == "no CUDA" for n in GPU_CHECKS)
    assert all(r.startswith("budget: ") for n, r in reasons.items() if n not in GPU_CHECKS)
    assert report["counts"] == {"passed": 0, "failed": 0, "skipped": 8}
    assert proc.stdout.strip().splitlines()[-1] == "passed 0, failed 0, skipped 8"


def test_bad_arguments_are_refused_with_the_known_names(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path), "--only", "nope"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (
        proc.returncode == 2 and "unknown checks ['nope']" in proc.stderr and "te_tiny_logits" in proc.stderr
    )


def test_train_flops_counts_what_megatron_bridge_counts():
    flops = load_script().train_flops
    # h 4, f 6, top-2, q = 2 heads x 4 = 8, kv = 1 x 4 = 4, vocab 10; one full-attention layer
    hf = {
        "hidden_size": 4,
        "intermediate_size": 6,
        "num_experts_per_tok": 2,
        "vocab_size": 10,
        "head_dim": 4,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "num_hidden_layers": 1,
        "layer_types": ["full_attention"],
        "sliding_window": 0,
    }
    # two rows of 8 tokens: S = 16, sum of squares 128 -> core factor 8
    experts = 6 * 4 * (3 * 6 * 2)  # 864
    attention = 6 * (4 * (8 + 2 * 4) + 8 * 4 + 8 * 8)  # 6 * (64 + 32 + 64) = 960
    head = 6 * 4 * 10  # 240
    assert flops(hf, 16, 128, 2) == 16 * (experts + attention + head)
    # a sliding layer with a window of 4 over rows of 8: 2 q (w - w (w - 1) / (2 T)) = 2 * 8 * 3.25 per token
    sliding = {**hf, "layer_types": ["sliding_attention"], "sliding_window": 4}
    attention_swa = 6 * (4 * (8 + 2 * 4) + 8 * 4 + 2 * 8 * (4 - 4 * 3 / 16))
    assert flops(sliding, 16, 128, 2) == pytest.approx(16 * (experts + attention_swa + head))


@pytest.mark.gpu
@pytest.mark.parametrize("check", ["te_tiny_logits", "te_lora_sft"])
def test_transformer_engine_path_on_the_tiny_model(check, tmp_path):
    proc, report, _ = acceptance(tmp_path / "acc", "--only", check, "--budget", "900", timeout=1200)
    result = by_name(report)[check]
    assert result["status"] == "pass", (result, proc.stdout[-3000:])
    fig = result["figures"]
    if check == "te_tiny_logits":
        assert fig["core_attention"] == "TEDotProductAttention" and fig["moe_grouped_gemm"] is True
        assert fig["moe_token_dispatcher_type"] == "alltoall" and fig["params_dtype"] == "bfloat16"
        assert fig["top1_agreement"] >= 0.9 and fig["round_trip_tensors_changed"] == 0
    else:
        for peft in ("lora", "none"):
            assert fig[f"{peft}_loss_last3"] < fig[f"{peft}_loss_first3"]
            assert fig[f"{peft}_export_top1"] >= 0.9
    assert proc.returncode == 0
