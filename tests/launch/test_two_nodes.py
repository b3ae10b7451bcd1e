"""Two nodes simulated on one machine: two `python -m launch --node-rank 0|1` on 127.0.0.1 (gloo) train the tiny
gpt-oss with expert parallel 2, save a checkpoint, stop, and resume to the loss curve of one process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from launch_helpers import REPO, clean_env, run_two_nodes_on_a_free_port

STEPS = 6
COMMON = [
    "peft=lora",
    f"trainer.max_steps={STEPS}",
    "trainer.checkpoint_every_n_steps=3",
    "trainer.val_check_interval=3",
    "export.enabled=false",
]


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def _two_nodes(overrides: list[str], log_dir: Path) -> None:
    """Both launchers at once, as the two Sparks would run them."""
    launch = [
        sys.executable,
        "-m",
        "launch",
        "cluster=spark_pair",
        "cluster.master_addr=127.0.0.1",
        "cluster.nccl.socket_ifname=lo",
        "parallel.expert_model_parallel_size=2",
        *COMMON,
        *overrides,
    ]
    run_two_nodes_on_a_free_port(
        lambda rank, port: [*launch, f"cluster.master_port={port}", "--node-rank", str(rank)],
        log_dir,
        timeout=900,
    )


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The reference: one process, no expert parallelism, all steps uninterrupted (prepares model and data)."""
    work = tmp_path_factory.mktemp("work")
    env = clean_env(GPT_OSS_WORK=str(work))
    done = subprocess.run(
        [sys.executable, "-m", "recipes.finetune", *COMMON, "run_id=one"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return work, _summary(work / "runs" / "gpt_oss_tiny-lora" / "one")


@pytest.mark.slow
def test_two_simulated_nodes_train_with_ep2_save_and_resume_on_the_one_process_curve(
    one_process, tmp_path, monkeypatch
):
    work, reference = one_process
    monkeypatch.setenv("GPT_OSS_WORK", str(work))  # the prepared tiny model and data; a fresh run folder

    # First launch: stops after step 3 with a checkpoint, as a preemption would. The two launchers each pick
    # their own run_id from their start time; the job agrees on rank 0's.
    _two_nodes(["trainer.stop_at_step=3"], tmp_path / "a")
    runs = [p for p in (work / "runs" / "gpt_oss_tiny-lora").iterdir() if p.name != "one"]
    assert len(runs) == 1, runs  # both nodes wrote one run folder
    first = _summary(runs[0])
    assert first["processes"] == 2 and first["first_step"] == 0
    assert first["losses"] == pytest.approx(reference["losses"][:3], abs=1e-4)
    ckpt = Path(first["checkpoint"])
    assert "step=2" in ckpt.name and (ckpt / "weights").is_dir() and (ckpt / "context").is_dir()
    assert first["trainable_params"] == reference["trainable_params"] == 8_192

    # Second launch with the same run_id: continues from that checkpoint (optimizer state included).
    _two_nodes([f"run_id={runs[0].name}"], tmp_path / "b")
    second = _summary(runs[0])
    assert second["first_step"] == 3
    assert second["losses"] == pytest.approx(reference["losses"][3:], abs=1e-4)
    assert second["trainable_params"] == 8_192  # the resumed run trains the adapters only
    assert "step=5" in Path(second["checkpoint"]).name
