"""A checkpoint written by two processes with tensor parallelism 2 and expert parallelism 2 exports, streaming,
to exactly what the whole-model export gives after NeMo reloads that checkpoint into one process."""

from __future__ import annotations

import subprocess
import sys

import pytest
from launch_helpers import REPO, clean_env, free_port

sys.path.insert(0, str(REPO / "tests" / "convert"))
from test_export_streaming import assert_bitwise_equal, tensors, whole_model_export  # noqa: E402

from convert.checkpoint import CheckpointTensors  # noqa: E402
from convert.export_hf import export_hf  # noqa: E402


@pytest.mark.slow
def test_tp2_ep2_checkpoint_exports_as_the_one_process_export(tmp_path):
    work = tmp_path / "work"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "launch",
            "cluster.devices_per_node=2",
            f"cluster.master_port={free_port()}",
            "parallel.tensor_model_parallel_size=2",
            "parallel.expert_model_parallel_size=2",
            "parallel.sequence_parallel=true",
            "peft=none",  # full SFT: every expert's weights are written by the rank that holds it
            "trainer.max_steps=1",
            "trainer.val_check_interval=1",
            "trainer.checkpoint_every_n_steps=1",
            "export.enabled=false",
            "run_id=tp2",
        ],
        cwd=REPO,
        env=clean_env(GPT_OSS_WORK=str(work)),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    ckpt = next((work / "runs").glob("*/tp2/checkpoints/*-last"))
    assert len({p.name.split("_")[2] for p in (ckpt / "weights").glob("__*_*.distcp")}) == 2  # two writers
    qkv = CheckpointTensors(ckpt).index["module.decoder.layers.self_attention.linear_qkv.weight"]
    assert {c.sizes[1] for c in qkv.chunks} == {qkv.size[1] // 2}  # stored as tensor-parallel halves
    streamed = export_hf(ckpt, tmp_path / "streamed", verify=False)
    assert_bitwise_equal(tensors(streamed), tensors(whole_model_export(ckpt, tmp_path / "whole")))
