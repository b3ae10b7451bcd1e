"""The job every launched process runs: ``recipes.finetune`` on the config composed from ``conf/plan.yaml``.

The launcher forwards its Hydra overrides here, so the job composes exactly the config the launcher planned
(``experiment=...`` and the cluster fields included) and runs the same stages as ``python -m recipes.finetune``.

Examples:
    torchrun --nproc-per-node=1 -m launch.train experiment=spark_20b_lora
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

import recipes.plan  # noqa: F401  (registers the schema with the launch fields)
from recipes import finetune


@hydra.main(config_path="../conf", config_name="plan", version_base="1.3")
def main(cfg: DictConfig) -> None:
    # recipes.finetune.main without its own @hydra.main (functools.wraps keeps the undecorated function).
    finetune.main.__wrapped__(cfg)


if __name__ == "__main__":
    main()
