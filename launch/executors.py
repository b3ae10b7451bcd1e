"""NeMo-Run executors for each kind of cluster, built from the composed config's ``cluster`` node.

- ``local``: this machine, ``torchrun --nproc-per-node=devices_per_node`` (``run.LocalExecutor``).
- ``pair``: two nodes with one GPU each (the DGX Spark pair), no scheduler: the same command runs on each
  node with its ``--node-rank``; torchrun meets at ``cluster.master_addr`` (``run.LocalExecutor`` with
  ``nodes=2``, which reads MASTER_ADDR, MASTER_PORT and NODE_RANK from the launcher's environment).
- ``slurm``: ``sbatch`` through ``run.SlurmExecutor`` and a ``run.LocalTunnel`` (run it on the login node).
- ``docker``: the project's image (``make image``: the NGC NeMo image with the pinned stack) on this machine
  (``run.DockerExecutor``).

Examples:
    python -m launch experiment=spark_pair_20b_lora --node-rank 0 --dry-run
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

EXECUTORS = ("local", "pair", "slurm", "docker")
CONTAINER_ROOT = "/workspace/gpt-oss"  # where the Dockerfile puts the project and the mounts expect it


class LaunchError(ValueError):
    """A launch that cannot start as configured; the message names the fix."""


def environment(cfg: DictConfig, node_rank: int = 0) -> dict[str, str]:
    """Environment of every training process: NCCL/gloo interfaces, rendezvous address, extra variables."""
    c = cfg.cluster
    env = {"PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    nccl = c.get("nccl")
    if nccl is not None:
        if nccl.socket_ifname:
            env["NCCL_SOCKET_IFNAME"] = nccl.socket_ifname
        if nccl.ib_hca:
            env["NCCL_IB_HCA"] = ",".join(nccl.ib_hca)
        if nccl.gloo_socket_ifname:
            env["GLOO_SOCKET_IFNAME"] = nccl.gloo_socket_ifname
        env.update({k: str(v) for k, v in nccl.extra_env.items()})
    if c.get("executor", "local") == "pair":
        env.update(MASTER_ADDR=c.master_addr, MASTER_PORT=str(c.master_port), NODE_RANK=str(node_rank))
    if c.get("executor", "local") in ("slurm", "docker"):
        # The job runs from nemo-run's working directory inside the container: find the project and write
        # under the mounted project's work/ (the host's ./work).
        env["PYTHONPATH"] = CONTAINER_ROOT
        env["GPT_OSS_WORK"] = f"{CONTAINER_ROOT}/work"
    env.update({k: str(v) for k, v in (c.get("env") or {}).items()})
    return env


def problems(cfg: DictConfig, node_rank: int = 0) -> list[str]:
    """What keeps the executor from being built; empty when it can."""
    c = cfg.cluster
    kind = c.get("executor", "local")
    out = []
    if kind not in EXECUTORS:
        out.append(f"cluster.executor={kind!r} is unknown; use one of {', '.join(EXECUTORS)}")
    if kind == "pair":
        if c.num_nodes != 2 or c.devices_per_node != 1:
            out.append(
                f"the pair executor runs 2 nodes x 1 device; the cluster has {c.num_nodes} x "
                f"{c.devices_per_node} (cluster=spark_pair)"
            )
        if not 0 <= node_rank < c.num_nodes:
            out.append(
                f"--node-rank {node_rank} is not in 0..{c.num_nodes - 1}: run rank 0 on the master node"
            )
        if len(c.nccl.ib_hca) < 2:
            out.append(
                f"cluster.nccl.ib_hca={list(c.nccl.ib_hca)} names fewer than two RDMA devices; the ConnectX-7 "
                "link of a Spark shows up as two (ibdev2netdev), and NCCL reaches ~3 GB/s instead of ~24 GB/s "
                "with one: cluster.nccl.ib_hca=[rocep1s0f1,roceP2p1s0f1]"
            )
    if kind == "slurm" and not c.slurm.account:
        out.append(
            "cluster.slurm.account is empty: pass cluster.slurm.account=<account> (or set SLURM_ACCOUNT)"
        )
    if kind in ("slurm", "docker") and not c.container_image:
        out.append(
            "cluster.container_image is empty: build the project's image (make image) and pass "
            "cluster.container_image=<where you pushed it> (or set GPT_OSS_IMAGE)"
        )
    return out


def executor(cfg: DictConfig, node_rank: int = 0):
    """The ``nemo_run`` executor of ``cfg.cluster`` (raises `LaunchError` listing every problem)."""
    found = problems(cfg, node_rank)
    if found:
        raise LaunchError("the launch cannot start:\n  - " + "\n  - ".join(found))
    import nemo_run as run

    c = cfg.cluster
    kind = c.get("executor", "local")
    env = environment(cfg, node_rank)
    if kind in ("local", "pair"):
        # torchrun of this Python's environment, also when the virtual environment is not activated.
        bin_dir = str(Path(sys.executable).parent)
        if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
            os.environ["PATH"] = os.pathsep.join([bin_dir, os.environ.get("PATH", "")])
    if kind == "local":
        return run.LocalExecutor(ntasks_per_node=c.devices_per_node, launcher="torchrun", env_vars=env)
    if kind == "pair":
        # nemo-run's torchrun component takes the rendezvous and this node's rank from the launcher's own
        # environment when nodes > 1 (torchx_backend/components/torchrun.py).
        os.environ.update({k: env[k] for k in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK")})
        return run.LocalExecutor(ntasks_per_node=1, nodes=c.num_nodes, launcher="torchrun", env_vars=env)
    if kind == "slurm":
        job_dir = Path(c.slurm.job_dir).resolve()
        return run.SlurmExecutor(
            account=c.slurm.account,
            partition=c.slurm.partition or None,
            nodes=c.num_nodes,
            ntasks_per_node=c.devices_per_node,
            gpus_per_node=c.devices_per_node,
            time=c.slurm.time,
            exclusive=c.slurm.exclusive,
            container_image=c.container_image,
            container_mounts=list(c.container_mounts),
            env_vars=env,
            launcher="torchrun",
            tunnel=run.LocalTunnel(job_dir=str(job_dir)),
            # The project is mounted (container_mounts) or baked into the image: nothing to package.
            packager=run.Packager(),
        )
    return run.DockerExecutor(
        container_image=c.container_image,
        num_gpus=-1,
        ntasks_per_node=c.devices_per_node,
        ipc_mode="host",  # PyTorch data loaders share memory between processes
        shm_size="16g",
        ulimits=["memlock:-1", "stack:67108864"],
        volumes=list(c.container_mounts),
        env_vars=env,
        launcher="torchrun",
        # The image holds the project (Dockerfile); nothing is packaged at launch.
        packager=run.Packager(),
    )


def task(module: str, args: list[str]):
    """``python -m <module> <args>`` as a NeMo-Run script (torchrun runs it on every process)."""
    import nemo_run as run

    return run.Script(path=module, m=True, entrypoint="python", args=list(args))


def describe(cfg: DictConfig) -> str:
    """The cluster node as YAML, for a dry-run's header."""
    return OmegaConf.to_yaml(cfg.cluster, resolve=True)
