"""Typed schemas of the fine-tuning config, registered in Hydra's ConfigStore.

``conf/finetune.yaml`` lists ``finetune_schema`` first in its defaults, so every group file is merged onto
these dataclasses: a misspelt key or a wrong type fails at compose time, before anything is built.

Examples:
    python -m recipes.finetune --cfg job     # print the composed, type-checked config
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


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


@dataclass
class TrainerConf:
    max_steps: int = MISSING
    val_check_interval: int = 50
    limit_val_batches: int = 4
    log_every_n_steps: int = 1
    checkpoint_every_n_steps: int = 50
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
class ClusterConf:
    name: str = MISSING
    num_nodes: int = 1
    devices_per_node: int = 1


@dataclass
class ExportConf:
    enabled: bool = True  # merge LoRA (if any) and write Hugging Face safetensors after training
    dtype: str | None = None  # float32 | bfloat16; null keeps the model's dtype
    verify: bool = True  # compare the exported model's logits with the trained NeMo model's


@dataclass
class FinetuneConf:
    work_dir: str = "work"
    run_name: str = MISSING
    run_dir: str = MISSING
    seed: int = 1234
    model: ModelConf = field(default_factory=ModelConf)
    peft: PeftConf = field(default_factory=PeftConf)
    data: DataConf = field(default_factory=DataConf)
    trainer: TrainerConf = field(default_factory=TrainerConf)
    parallel: ParallelConf = field(default_factory=ParallelConf)
    cluster: ClusterConf = field(default_factory=ClusterConf)
    export: ExportConf = field(default_factory=ExportConf)
    # Further deltas on the NeMo recipe, applied last with NeMo-Run's own parser (every key is checked
    # against the real signatures), e.g. ["optim.config.weight_decay=0.0"].
    recipe_overrides: list[str] = field(default_factory=list)


def register() -> None:
    ConfigStore.instance().store(name="finetune_schema", node=FinetuneConf)


register()
