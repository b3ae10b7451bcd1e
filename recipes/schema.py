"""Typed schemas of the fine-tuning config, registered in Hydra's ConfigStore.

``conf/finetune.yaml`` lists ``finetune_schema`` first in its defaults, so every group file is merged onto
these dataclasses: a misspelt key or a wrong type fails at compose time, before anything is built.

Examples:
    python -m recipes.finetune --cfg job     # print the composed, type-checked config
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from compat.versions import PROJECT_IMAGE


@dataclass
class ModelConf:
    name: str = MISSING
    hf_path: str = MISSING  # Hugging Face checkpoint folder (MXFP4 or BF16)
    nemo_path: str = MISSING  # where the imported NeMo checkpoint lives
    tiny: dict[str, Any] | None = None  # shape of a shrunk model that `convert.tiny` builds when missing


@dataclass
class PeftConf:
    name: str = MISSING  # lora | none (full SFT)
    target_modules: list[str] = field(default_factory=list)
    dim: int = 8
    alpha: int = 16
    dropout: float = 0.0
    lr: float = 1e-4


@dataclass
class DataConf:
    name: str = MISSING
    dataset_root: str = MISSING  # folder with train.jsonl / validation.jsonl / test.jsonl
    builtin: bool = False  # generate the built-in dataset into dataset_root when missing
    seq_length: int = 2048
    micro_batch_size: int = 1
    global_batch_size: int = 8
    reasoning_effort: str = "low"
    date: str = "2025-06-01"
    # auto | true | false: several examples per row of seq_length (recipes/packing.py); auto packs where the
    # attention supports it (CUDA with Transformer Engine) and micro_batch_size is 1, true refuses elsewhere
    packed: str = "auto"


@dataclass
class TrainerConf:
    max_steps: int = MISSING
    val_check_interval: int = 50
    limit_val_batches: int = 4
    log_every_n_steps: int = 1
    checkpoint_every_n_steps: int = 50
    # End this run after this step with a checkpoint, keeping the learning-rate schedule of max_steps (e.g. a
    # long schedule split over time-limited jobs); the next run with the same run_id continues from it.
    stop_at_step: int | None = None
    warmup_steps: int = 0
    min_lr: float = 0.0


@dataclass
class ParallelConf:
    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    expert_model_parallel_size: int = 1
    expert_tensor_parallel_size: int = 1
    sequence_parallel: bool = False


@dataclass
class NcclConf:
    socket_ifname: str = ""  # NCCL_SOCKET_IFNAME: the interface NCCL bootstraps over (e.g. enp1s0f0np0)
    ib_hca: list[str] = field(default_factory=list)  # NCCL_IB_HCA: every RDMA device NCCL may use
    gloo_socket_ifname: str = ""  # GLOO_SOCKET_IFNAME: the interface of torch's gloo (CPU) groups
    extra_env: dict[str, str] = field(default_factory=dict)  # further NCCL_* variables, verbatim


@dataclass
class SlurmConf:
    account: str = ""
    partition: str = ""
    time: str = "04:00:00"  # wall-clock limit, HH:MM:SS
    job_dir: str = "${work_dir}/slurm"  # where sbatch scripts and logs are written (LocalTunnel)
    exclusive: bool = True


@dataclass
class ClusterConf:
    name: str = MISSING
    num_nodes: int = 1
    devices_per_node: int = 1
    executor: str = "local"  # local | pair | slurm | docker
    device: str = "auto"  # memory profile: auto | cpu | spark | h100 | h200
    master_addr: str = "127.0.0.1"  # node 0's address on the link the nodes share
    master_port: int = 29500
    container_image: str = ""  # the project's image (`make image`), or where it was pushed (docker, slurm)
    container_mounts: list[str] = field(default_factory=list)  # host:container paths
    nccl: NcclConf = field(default_factory=NcclConf)
    slurm: SlurmConf = field(default_factory=SlurmConf)
    env: dict[str, str] = field(default_factory=dict)  # further environment of every process


@dataclass
class PrecisionConf:
    name: str = MISSING
    base_weights: str = "model"  # model (BF16 on a GPU) | fp8 (frozen base weights in FP8, LoRA only)
    fp8_recipe: str = "tensorwise"  # tensorwise (current scaling) | delayed | mxfp8 (Blackwell: GB10, B200)


@dataclass
class PlanConf:
    recompute: str = "none"  # none | full (store only each layer's input; recompute the rest in backward)
    enforce: bool = True  # refuse an infeasible plan before launching
    # The inter-node link's bus bandwidth in GB/s as `python -m launch --preflight` measures it; the planner's
    # link-traffic table uses it (null: the Spark pair's nominal 200 Gb/s = 25 GB/s).
    link_gbs: float | None = None


@dataclass
class ExportConf:
    enabled: bool = True  # write Hugging Face safetensors after training (LoRA merged as it is written)
    format: str | None = None  # dense | mxfp4 (experts in OpenAI's MXFP4); null: mxfp4 when model.hf_path is
    dtype: str | None = None  # float32 | bfloat16 of a dense export; null: model.hf_path's dtype
    verify: bool = True  # compare the exported model's logits with the trained NeMo model's


@dataclass
class FinetuneConf:
    work_dir: str = "work"
    run_name: str = MISSING
    run_id: str = MISSING  # the same in every process of a run; an earlier run's id resumes that run
    run_dir: str = MISSING
    seed: int = 1234
    verbose: bool = False  # true: NeMo/megatron-core/Lightning logs on the console too (always in train.log)
    model: ModelConf = field(default_factory=ModelConf)
    peft: PeftConf = field(default_factory=PeftConf)
    data: DataConf = field(default_factory=DataConf)
    trainer: TrainerConf = field(default_factory=TrainerConf)
    parallel: ParallelConf = field(default_factory=ParallelConf)
    cluster: ClusterConf = field(default_factory=ClusterConf)
    precision: PrecisionConf = field(default_factory=PrecisionConf)
    export: ExportConf = field(default_factory=ExportConf)
    plan: PlanConf = field(default_factory=PlanConf)
    # Further deltas on the NeMo recipe, applied last with NeMo-Run's own parser (every key is checked
    # against the real signatures), e.g. ["optim.config.weight_decay=0.0"].
    recipe_overrides: list[str] = field(default_factory=list)


def project_image() -> str:
    """``${project_image:}`` in the cluster profiles: ``$GPT_OSS_IMAGE`` (where the image was pushed), else
    the local tag `make image` builds (`compat.versions.PROJECT_IMAGE`)."""
    return os.environ.get("GPT_OSS_IMAGE") or PROJECT_IMAGE


def register() -> None:
    ConfigStore.instance().store(name="finetune_schema", node=FinetuneConf)
    OmegaConf.register_new_resolver("project_image", project_image, replace=True)


register()
