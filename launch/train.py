"""The job every launched process runs: ``recipes.finetune`` on the config composed from ``conf/plan.yaml``.

The launcher forwards its Hydra overrides here, so the job composes exactly the config the launcher planned
(``experiment=...`` and the cluster fields included) and runs the same stages as ``python -m recipes.finetune``.
The processes of a job first agree on one ``run_id`` (rank 0's): the nodes of the pair are launched one by one,
each with its own start time, and must still write one run folder and one checkpoint.

Examples:
    torchrun --nproc-per-node=1 -m launch.train experiment=spark_20b_lora
"""

from __future__ import annotations

import os
from datetime import timedelta

import hydra
from omegaconf import DictConfig

import compat  # noqa: F401  (the version gate: a job on an unverified stack stops here, before training)
import recipes.plan  # noqa: F401  (registers the schema with the launch fields)
from recipes import finetune


def agree_on_run_id(cfg: DictConfig, timeout_s: float = 600.0) -> None:
    """Give every process rank 0's ``run_id`` through torchrun's rendezvous store (the agent's TCPStore).

    Nothing to do for one process, or when the job was not started by torchrun with its agent store.
    """
    if finetune.world_size() == 1 or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return
    import torch.distributed as dist

    store = dist.PrefixStore(
        "gpt-oss/",
        dist.TCPStore(
            os.environ["MASTER_ADDR"],
            int(os.environ["MASTER_PORT"]),
            is_master=False,
            timeout=timedelta(seconds=timeout_s),
        ),
    )
    if finetune.global_rank() == 0:
        store.set("run_id", cfg.run_id)
        return
    agreed = store.get("run_id").decode()
    if agreed != cfg.run_id:
        print(f"run_id {cfg.run_id} -> {agreed}: rank 0's, so every node writes the same run folder")
        cfg.run_id = agreed


@hydra.main(config_path="../conf", config_name="plan", version_base="1.3")
def main(cfg: DictConfig) -> None:
    agree_on_run_id(cfg)
    # recipes.finetune.main without its own @hydra.main (functools.wraps keeps the undecorated function).
    finetune.main.__wrapped__(cfg)


if __name__ == "__main__":
    main()
