"""Dry-runs of every executor print the commands, environment and sbatch script that would run."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from launch_helpers import REPO, run_two_nodes_on_a_free_port

from launch.__main__ import dry_run
from launch.executors import environment, problems
from launch.preflight import bus_bandwidth
from recipes.plan import compose

HCA = "NCCL_IB_HCA=rocep1s0f1,roceP2p1s0f1"


def _dry(overrides, node_rank=0, module="launch.train"):
    cfg = compose(overrides)
    return dry_run(cfg, module, overrides, node_rank)


@pytest.mark.parametrize("rank", [0, 1])
def test_spark_pair_runs_torchrun_on_both_nodes_with_both_rdma_devices(rank, real_configs, capsys):
    out = _dry(["experiment=spark_pair_20b_lora"], node_rank=rank)
    assert f"# dry run: pair executor, 2 node(s) x 1 device(s), this is node {rank}" in out
    assert "\n  fits." in out and "a real launch stops here" not in out
    for line in (HCA, "NCCL_SOCKET_IFNAME=enp1s0f1np1", "GLOO_SOCKET_IFNAME=enp1s0f1np1"):
        assert f"\n{line}\n" in out  # the environment block
        assert f" {line} " in out  # and the command's environment
    command = out.split("# command:\n")[1]
    assert "MASTER_ADDR=192.168.100.10" in command and f"NODE_RANK={rank}" in command
    assert re.search(
        rf"torchrun --rdzv-backend c10d --rdzv-endpoint 192\.168\.100\.10:29500 --rdzv-id \d+ --nnodes 2 "
        rf"--nproc-per-node 1 --node-rank {rank} --tee 3 -m launch\.train experiment=spark_pair_20b_lora\n",
        command,
    )
    assert f"--node-rank {1 - rank}" in out.split("# then on the other node:")[1]


def test_both_nodes_meet_at_the_same_rendezvous(real_configs):
    ids = {
        re.search(r"--rdzv-id (\d+)", _dry(["experiment=spark_pair_20b_lora"], r)).group(1) for r in (0, 1)
    }
    assert len(ids) == 1


def test_interfaces_are_parameters(real_configs):
    overrides = [
        "experiment=spark_pair_20b_lora",
        "cluster.nccl.socket_ifname=enp1s0f0np0",
        "cluster.nccl.ib_hca=[rocep1s0f0,roceP2p1s0f0]",
        "cluster.master_addr=10.0.0.1",
    ]
    env = environment(compose(overrides), node_rank=1)
    assert env["NCCL_IB_HCA"] == "rocep1s0f0,roceP2p1s0f0"
    assert env["NCCL_SOCKET_IFNAME"] == env["GLOO_SOCKET_IFNAME"] == "enp1s0f0np0"
    assert (env["MASTER_ADDR"], env["NODE_RANK"]) == ("10.0.0.1", "1")


def test_one_rdma_device_is_refused_with_the_fix(real_configs):
    cfg = compose(["experiment=spark_pair_20b_lora", "cluster.nccl.ib_hca=[rocep1s0f1]"])
    (message,) = problems(cfg, node_rank=0)
    assert "fewer than two RDMA devices" in message and "cluster.nccl.ib_hca=[" in message
    out = dry_run(cfg, "launch.train", [], 0)
    assert "# a real launch stops here:" in out and "torchrun" not in out


def test_slurm_dry_run_prints_the_sbatch_script(real_configs):
    out = _dry(["experiment=slurm_120b_sft", "cluster.slurm.account=acme"])
    script = out.split("# sbatch script:\n")[1]
    for line in (
        "#SBATCH --account=acme",
        "#SBATCH --partition=batch",
        "#SBATCH --nodes=8",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --time=04:00:00",
        "#SBATCH --exclusive",
        "export PYTHONPATH=/workspace/gpt-oss",
    ):
        assert line in script
    assert "--container-image gpt-oss-nemo:latest" in script  # the project's image (make image)
    assert f"--container-mounts {REPO}:/workspace/gpt-oss" in script
    assert re.search(
        r"torchrun --rdzv-backend c10d --rdzv-endpoint \$head_node_ip:29500 --rdzv-id \d+ --nnodes 8 "
        r"--nproc-per-node 8 --node-rank \$SLURM_NODEID --tee 3 -m launch\.train experiment=slurm_120b_sft",
        script,
    )


def test_slurm_without_an_account_is_refused(real_configs):
    cfg = compose(["experiment=slurm_20b_lora"])
    assert problems(cfg) == [
        "cluster.slurm.account is empty: pass cluster.slurm.account=<account> (or set SLURM_ACCOUNT)"
    ]


def test_container_dry_run_names_the_image(tmp_path):
    out = _dry(["cluster=container", "cluster.container_image=nvcr.io/nvidia/nemo:25.11"])
    command = out.split("# container:\n")[1]
    assert command.startswith(f"docker run --gpus all --ipc=host -v {REPO}:/workspace/gpt-oss ")
    assert (
        "-e PYTHONPATH=/workspace/gpt-oss" in command and "-e GPT_OSS_WORK=/workspace/gpt-oss/work" in command
    )
    assert " nvcr.io/nvidia/nemo:25.11 \\\n  torchrun " in command
    assert "--nnodes 1 --nproc-per-node 1 --node-rank 0 --tee 3 -m launch.train cluster=container" in command


def test_eight_gpus_on_one_node(real_configs):
    out = _dry(["experiment=h100_8x_20b_sft"])
    assert "1 node(s) x 8 h100 | TP 1 PP 1 EP 8" in out
    assert re.search(
        r"torchrun --rdzv-backend c10d --rdzv-endpoint localhost:0 .* --nnodes 1 --nproc-per-node 8 ", out
    )


def test_cli_dry_run_starts_nothing(tmp_path, nemorun_home):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "launch",
            "cluster=spark_pair",
            "--preflight",
            "--node-rank",
            "1",
            "--dry-run",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert HCA in result.stdout
    assert (
        "--nnodes 2 --nproc-per-node 1 --node-rank 1 --tee 3 -m launch.preflight --size-mb 256 --iters 10"
        in (result.stdout)
    )
    assert not list(Path(nemorun_home).glob("experiments/*/*/train/*.out"))


def test_bus_bandwidth_follows_nccl_tests():
    assert bus_bandwidth(10**9, 1.0, 2) == 1e9  # 2 * (2 - 1) / 2 = 1
    assert bus_bandwidth(10**9, 0.5, 4) == 3e9  # 2 GB/s x 2 * 3 / 4


def test_preflight_all_reduce_across_two_torchrun_nodes(tmp_path):
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    outs = run_two_nodes_on_a_free_port(
        lambda rank, port: [
            torchrun,
            "--nnodes=2",
            f"--node_rank={rank}",
            "--nproc-per-node=1",
            "--master_addr=127.0.0.1",
            f"--master_port={port}",
            "-m",
            "launch.preflight",
            "--backend",
            "gloo",
            "--size-mb",
            "2",
            "--iters",
            "3",
            "--timeout-s",
            "60",
            "--json",
            str(tmp_path / f"node{rank}.json"),
        ],
        tmp_path / "logs",
        timeout=180,
    )
    result = json.loads((tmp_path / "node0.json").read_text())
    assert (result["world_size"], result["backend"], result["correct"]) == (2, "gloo", True)
    assert result["bytes"] == 2_000_000 and result["busbw_gbs"] > 0
    assert "preflight: all-reduce of 2.0 MB over 2 ranks (gloo)" in outs[0]
    assert not (tmp_path / "node1.json").exists()  # rank 0 reports


def test_preflight_through_the_launcher_on_two_simulated_nodes(tmp_path):
    """Both `python -m launch --preflight --node-rank 0|1` meet on 127.0.0.1 through NeMo-Run's torchrun."""
    common = [
        sys.executable,
        "-m",
        "launch",
        "cluster=spark_pair",
        "cluster.master_addr=127.0.0.1",
        "cluster.nccl.socket_ifname=lo",
        "--preflight",
        "--preflight-args",
        f"--backend gloo --size-mb 2 --iters 3 --timeout-s 60 --json {tmp_path / 'pf.json'}",
    ]
    run_two_nodes_on_a_free_port(
        lambda rank, port: [*common, f"cluster.master_port={port}", "--node-rank", str(rank)],
        tmp_path / "logs",
        timeout=300,
    )
    result = json.loads((tmp_path / "pf.json").read_text())
    assert (result["world_size"], result["correct"]) == (2, True)
    # The workers saw the pair's environment: both RDMA devices and the interface given on the command line.
    assert result["env"]["NCCL_IB_HCA"] == "rocep1s0f1,roceP2p1s0f1"
    assert result["env"]["NCCL_SOCKET_IFNAME"] == result["env"]["GLOO_SOCKET_IFNAME"] == "lo"


PRESETS = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_dry_runs(preset, real_configs):
    out = _dry([f"experiment={preset}", "cluster.slurm.account=acme"])
    assert "memory plan:" in out
    assert re.search(r"torchrun --rdzv-backend c10d .* -m launch\.train experiment=" + preset, out)
    assert "the plan does not fit" not in out and "fits." in out, out


@pytest.mark.parametrize("layout", ["tp2", "tp2_ep2"])
def test_the_pair_s_tensor_parallel_presets_are_accepted(layout, real_configs):
    out = _dry(["experiment=spark_pair_20b_lora", f"parallel={layout}"])
    assert f"TP 2 PP 1 EP {2 if layout == 'tp2_ep2' else 1} ETP 1 DP 1" in out
    assert "\n  fits." in out and "a real launch stops here" not in out
    assert "link traffic per step and device, at 25 GB/s" in out and "\n  TP " in out
    assert re.search(rf"--nnodes 2 --nproc-per-node 1 --node-rank 0 .* parallel={layout}\n", out)


def test_tp2_with_trainable_experts_is_refused_before_launching(real_configs):
    out = _dry(["experiment=spark_pair_20b_lora", "parallel=tp2", "peft=none"])
    assert "# a real launch stops here:" in out and "(parallel=tp2_ep2)" in out
