"""Fine-tune gpt-oss with NeMo 2: LoRA or full SFT through ``llm.finetune``, then merge and export.

The whole path on the embedded default (tiny gpt-oss, built-in data, CPU or GPU)::

    make finetune
    python -m recipes.finetune peft=none trainer.max_steps=50
    python -m recipes.finetune data=prepared data.dataset_root=work/data/hr
    python -m recipes.finetune --cfg job          # print the composed config and stop

Stages: [1] the Hugging Face model (the tiny one is built when missing) -> [2] NeMo import -> [3] data ->
[4] ``llm.finetune`` -> [5] LoRA merge -> [6] Hugging Face export, checked against the trained model's logits.
``build(cfg)`` returns the NeMo ``run.Partial`` and has no side effects; ``validate(cfg)`` lists every problem
of a config at once, before anything heavy runs.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

import recipes.schema  # noqa: F401  (registers finetune_schema)

PEFT_SCHEMES = ("lora", "none")


class ConfigError(ValueError):
    """A config that cannot run; the message lists every problem with its fix."""


def validate(cfg: DictConfig) -> None:
    """Check a composed config; raise one `ConfigError` listing every problem and the override that fixes it."""
    problems = []
    if cfg.peft.name not in PEFT_SCHEMES:
        problems.append(f"peft.name={cfg.peft.name!r} is unknown; use one of {PEFT_SCHEMES} (peft=lora)")
    par, d = cfg.parallel, cfg.data
    world = cfg.cluster.num_nodes * cfg.cluster.devices_per_node
    model_par = par.tensor_model_parallel_size * par.pipeline_model_parallel_size
    if world % model_par:
        problems.append(
            f"tensor x pipeline parallel = {model_par} does not divide the {world} devices "
            f"(cluster.num_nodes x cluster.devices_per_node); change parallel.* or the cluster"
        )
    else:
        dp = world // model_par
        if d.global_batch_size % (d.micro_batch_size * dp):
            problems.append(
                f"data.global_batch_size={d.global_batch_size} is not a multiple of micro_batch_size x "
                f"data-parallel size = {d.micro_batch_size} x {dp}; e.g. data.global_batch_size="
                f"{d.micro_batch_size * dp * max(1, d.global_batch_size // (d.micro_batch_size * dp))}"
            )
    experts = _num_experts(cfg)
    ep = par.expert_model_parallel_size
    if experts and experts % ep:
        divisors = [k for k in range(1, experts + 1) if experts % k == 0 and k <= world]
        problems.append(
            f"parallel.expert_model_parallel_size={ep} does not divide {experts} experts; use one of {divisors}"
        )
    if ep > world:
        problems.append(f"parallel.expert_model_parallel_size={ep} exceeds the {world} devices")
    if cfg.model.tiny is None and not (Path(cfg.model.hf_path) / "config.json").exists():
        problems.append(
            f"model.hf_path={cfg.model.hf_path} has no config.json: download the checkpoint there "
            "(huggingface-cli download openai/gpt-oss-20b --local-dir <dir>) and pass model.hf_path=<dir>"
        )
    if not d.builtin and not (Path(d.dataset_root) / "train.jsonl").exists():
        problems.append(
            f"data.dataset_root={d.dataset_root} has no train.jsonl: prepare data first "
            "(python -m data_prep ...) or use data=builtin"
        )
    if cfg.trainer.max_steps < 1:
        problems.append(f"trainer.max_steps={cfg.trainer.max_steps} must be >= 1")
    if d.seq_length < 16:
        problems.append(f"data.seq_length={d.seq_length} is too short for a harmony prompt; use >= 256")
    if problems:
        raise ConfigError("the config cannot run:\n  - " + "\n  - ".join(problems))


def _num_experts(cfg: DictConfig) -> int | None:
    if cfg.model.tiny is not None:
        return cfg.model.tiny.num_local_experts
    config = Path(cfg.model.hf_path) / "config.json"
    return json.loads(config.read_text())["num_local_experts"] if config.exists() else None


def model_config(cfg: DictConfig):
    """``run.Config`` of the NeMo model: our faithful mapping of the checkpoint's HF config, plus the CPU
    measures when CUDA is absent (given to the constructor so they are recorded in checkpoints)."""
    import nemo_run as run
    from nemo.collections.llm.gpt.model.gpt_oss import GPTOSSConfig, GPTOSSModel

    from convert.gpt_oss import load_generation_config, load_hf_config, nemo_config_kwargs
    from recipes import cpu

    kwargs = {**nemo_config_kwargs(load_hf_config(cfg.model.hf_path)), **cpu.config_overrides()}
    kwargs["seq_length"] = cfg.data.seq_length
    kwargs["generation_config"] = load_generation_config(cfg.model.hf_path)
    return run.Config(GPTOSSModel, config=run.Config(GPTOSSConfig, **kwargs))


def recipe_overrides(cfg: DictConfig) -> list[str]:
    """The config's deltas as NeMo-Run override strings (checked against the real signatures)."""
    t, p, d = cfg.trainer, cfg.parallel, cfg.data
    overrides = [
        f"trainer.max_steps={t.max_steps}",
        f"trainer.val_check_interval={t.val_check_interval}",
        f"trainer.limit_val_batches={t.limit_val_batches}",
        f"trainer.log_every_n_steps={t.log_every_n_steps}",
        f"trainer.num_nodes={cfg.cluster.num_nodes}",
        f"trainer.devices={cfg.cluster.devices_per_node}",
        f"trainer.strategy.tensor_model_parallel_size={p.tensor_model_parallel_size}",
        f"trainer.strategy.pipeline_model_parallel_size={p.pipeline_model_parallel_size}",
        f"trainer.strategy.expert_model_parallel_size={p.expert_model_parallel_size}",
        f"trainer.strategy.expert_tensor_parallel_size={p.expert_tensor_parallel_size}",
        f"trainer.strategy.sequence_parallel={p.sequence_parallel}",
        f"optim.config.lr={cfg.peft.lr}",
        f"optim.lr_scheduler.warmup_steps={t.warmup_steps}",
        f"optim.lr_scheduler.min_lr={t.min_lr}",
        f"log.ckpt.every_n_train_steps={t.checkpoint_every_n_steps}",
        f"data.micro_batch_size={d.micro_batch_size}",
        f"data.global_batch_size={d.global_batch_size}",
    ]
    if cfg.plan.recompute == "full":
        overrides += [
            "model.config.recompute_granularity='full'",
            "model.config.recompute_method='uniform'",
            "model.config.recompute_num_layers=1",
        ]
    return overrides + list(cfg.recipe_overrides)


def cpu_overrides() -> list[str]:
    """Recipe deltas for a machine without CUDA (see `recipes.cpu` for the reasons)."""
    return [
        "trainer.accelerator='cpu'",
        "trainer.strategy.ckpt_async_save=False",
        "trainer.strategy.ckpt_parallel_load=False",
        "optim.config.bf16=False",
        "optim.config.fp16=False",
        # clip_grads.py:167 asserts CUDA tensors; the distributed optimizer keeps CUDA buffers.
        "optim.config.clip_grad=0.0",
        "optim.config.use_distributed_optimizer=False",
    ]


def build(cfg: DictConfig):
    """The NeMo fine-tuning ``run.Partial`` for a composed config (no side effects).

    Starts from NeMo's own ``gpt_oss_20b.finetune_recipe`` and applies our deltas with NeMo-Run's parser.

    Examples:
        python -c "from recipes.finetune import compose, build; print(build(compose()))"
    """
    import nemo_run as run
    from nemo import lightning as nl
    from nemo.collections import llm

    from recipes import cpu
    from recipes.chat_data import HarmonyChatDataModule

    recipe = llm.recipes.gpt_oss_20b.finetune_recipe(
        dir=str(Path(cfg.work_dir) / "runs"),
        name=cfg.run_name,
        num_nodes=cfg.cluster.num_nodes,
        num_gpus_per_node=cfg.cluster.devices_per_node,
        peft_scheme=cfg.peft.name,
    )
    recipe.log.explicit_log_dir = str(cfg.run_dir)
    recipe.model = model_config(cfg)
    recipe.resume.restore_config.path = str(cfg.model.nemo_path)
    recipe.data = run.Config(
        HarmonyChatDataModule,
        dataset_root=str(cfg.data.dataset_root),
        seq_length=cfg.data.seq_length,
        seed=cfg.seed,
        num_workers=0,
        pin_memory=False,
        reasoning_effort=cfg.data.reasoning_effort,
        date=cfg.data.date,
    )
    if cfg.peft.name == "lora":
        # NeMo's LoRA dataclass has postponed (string) annotations, which NeMo-Run's parser cannot type-check
        # ("Unsupported type: int"); these fields are typed by our schema and assigned directly.
        recipe.peft.target_modules = list(cfg.peft.target_modules)
        recipe.peft.dim = cfg.peft.dim
        recipe.peft.alpha = cfg.peft.alpha
        recipe.peft.dropout = cfg.peft.dropout
    overrides = recipe_overrides(cfg)
    if not cpu.cuda_available():
        recipe.trainer.plugins = run.Config(nl.MegatronMixedPrecision, precision="32")
        overrides = cpu_overrides() + overrides
    return run.cli.parse_cli_args(recipe, overrides)


def compose(overrides: list[str] | None = None) -> DictConfig:
    """Compose ``conf/finetune.yaml`` outside ``@hydra.main`` (tests, notebooks, the launcher)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    conf_dir = Path(__file__).resolve().parent.parent / "conf"
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        return hydra_compose(config_name="finetune", overrides=overrides or [])


class Stages:
    """Prints numbered stages with their wall time, so a long run shows where it is."""

    def __init__(self, total: int):
        self.total, self.n, self.t0 = total, 0, time.perf_counter()

    def start(self, what: str) -> None:
        self.n += 1
        print(f"\n[{self.n}/{self.total}] {what}  (+{time.perf_counter() - self.t0:.0f}s)", flush=True)


def prepare(cfg: DictConfig, stages: Stages) -> None:
    """Side effects before training: build the tiny model, import it into NeMo, write the built-in data."""
    hf_path, nemo_path = Path(cfg.model.hf_path), Path(cfg.model.nemo_path)
    stages.start(f"Hugging Face model: {hf_path}")
    if not (hf_path / "config.json").exists():
        if cfg.model.tiny is None:
            raise ConfigError(f"model.hf_path={hf_path} has no config.json")
        from convert.tiny import build as build_tiny

        build_tiny(hf_path, shape=OmegaConf.to_container(cfg.model.tiny, resolve=True))
        print(f"    built the tiny gpt-oss at {hf_path}")
    else:
        print("    present")
    stages.start(f"NeMo import: {nemo_path}")
    if not (nemo_path / "weights").exists():
        from convert.import_hf import import_hf

        import_hf(hf_path, nemo_path)
        print(f"    imported into {nemo_path}")
    else:
        print("    present")
    stages.start(f"data: {cfg.data.dataset_root}")
    root = Path(cfg.data.dataset_root)
    if cfg.data.builtin and not (root / "train.jsonl").exists():
        from data_prep.builtin import write

        write(root, seed=0)
        print(f"    wrote the built-in dataset to {root}")
    for split in ("train", "validation"):
        print(f"    {split}: {sum(1 for _ in (root / f'{split}.jsonl').open())} examples")


class TrainingRecord:
    """Lightning callback: the training loss of every step and the parameters that train."""

    def __new__(cls):
        from lightning.pytorch import Callback

        class _Record(Callback):
            def __init__(self):
                self.losses: list[float] = []
                self.trainable: dict[str, int] = {}
                self.total_params = 0

            def on_train_start(self, trainer, pl_module):
                params = list(pl_module.named_parameters())
                self.total_params = sum(p.numel() for _, p in params)
                self.trainable = {n: p.numel() for n, p in params if p.requires_grad}

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                loss = trainer.callback_metrics.get("reduced_train_loss")
                if loss is not None:
                    self.losses.append(float(loss))

        return _Record()


def last_checkpoint(exp_dir: str | Path) -> Path:
    ckpts = sorted(Path(exp_dir, "checkpoints").glob("*-last"), key=lambda p: p.stat().st_mtime)
    if not ckpts:
        raise FileNotFoundError(f"no *-last checkpoint under {exp_dir}/checkpoints")
    return ckpts[-1]


def run_finetune(cfg: DictConfig) -> dict:
    """Run every stage for a composed config and return a summary of where everything went."""
    import fiddle as fdl

    import convert.export_hf  # noqa: F401  (registers our gpt-oss importer and exporter with NeMo)
    import convert.import_hf  # noqa: F401
    from convert import verify
    from recipes import cpu

    validate(cfg)
    from recipes.plan import PlanError, check

    try:
        check(cfg)
    except PlanError as e:
        if cfg.plan.enforce:
            raise ConfigError(str(e)) from None
        print(f"memory plan (not enforced): {e}")
    cpu.enable()
    stages = Stages(6 if cfg.export.enabled else 4)
    prepare(cfg, stages)

    stages.start(
        f"llm.finetune ({'LoRA' if cfg.peft.name == 'lora' else 'full SFT'}, {cfg.trainer.max_steps} steps)"
    )
    fn = fdl.build(build(cfg))
    record = TrainingRecord()
    fn.keywords["trainer"].callbacks.append(record)
    probe = None
    if cfg.export.enabled and cfg.export.verify:
        probe = verify.probe_callback(verify.probe_ids(cfg.model.hf_path))
        fn.keywords["trainer"].callbacks.append(probe)
    fn()
    exp_dir = Path(cfg.run_dir)
    ckpt = last_checkpoint(exp_dir)
    summary = {
        "run_dir": str(exp_dir),
        "checkpoint": str(ckpt),
        "losses": record.losses,
        "trainable_params": sum(record.trainable.values()),
        "total_params": record.total_params,
        "trainable_names": sorted(record.trainable),
    }
    print(
        f"    loss {record.losses[0]:.3f} -> {record.losses[-1]:.3f}; trained "
        f"{summary['trainable_params']:,} of {record.total_params:,} parameters"
    )
    if not cfg.export.enabled:
        return summary

    stages.start("LoRA merge" if cfg.peft.name == "lora" else "merge: not needed for full SFT")
    to_export = ckpt
    if cfg.peft.name == "lora":
        from convert.merge_lora import merge_lora

        to_export = merge_lora(ckpt, exp_dir / "merged")
        summary["merged"] = str(to_export)
    stages.start("Hugging Face export")
    import torch

    from convert.export_hf import export_hf

    out = export_hf(
        to_export,
        exp_dir / "hf",
        dtype=getattr(torch, cfg.export.dtype) if cfg.export.dtype else None,
        overwrite=True,
        verify=False,  # checked below against the trained model's own logits, a stricter reference
    )
    summary["hf_export"] = str(out)
    if probe is not None:
        ids = verify.probe_ids(cfg.model.hf_path)
        result = verify.compare(verify.hf_logits(out, ids), probe.logits)
        summary["export_vs_trained_logits"] = asdict(result)
        print(
            f"    exported vs trained logits: max |diff| {result.max_abs_diff:.2e} "
            f"(logit scale {result.logit_scale:.2f}), top-1 agreement {result.top1_agreement:.0%}"
        )
    return summary


@hydra.main(config_path="../conf", config_name="finetune", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        summary = run_finetune(cfg)
    except ConfigError as e:
        raise SystemExit(str(e)) from None
    print("\nDone. Outputs:")
    for key, value in summary.items():
        if isinstance(value, str):
            print(f"  {key:>12}: {value}")
    Path(summary["run_dir"], "summary.json").write_text(json.dumps(summary, indent=2))
    if "hf_export" in summary:
        print(
            "\nNext:\n"
            f"  load it:    python -c \"from transformers import pipeline; pipeline('text-generation', '{summary['hf_export']}')\"\n"
            f"  verify it:  python -m convert.verify --hf {summary['hf_export']} --nemo {summary.get('merged', summary['checkpoint'])}\n"
            "  your data:  python -m recipes.finetune data=prepared data.dataset_root=<data_prep output>"
        )


if __name__ == "__main__":
    main()
