"""Fine-tune gpt-oss with NeMo 2: LoRA or full SFT through ``llm.finetune``, then export to Hugging Face.

The whole path on the embedded default (tiny gpt-oss, built-in data, CPU or GPU)::

    make finetune                                 # full SFT, 300 steps: learns the built-in task
    python -m recipes.finetune peft=lora trainer.max_steps=50
    python -m recipes.finetune data=prepared data.dataset_root=work/data/hr
    python -m recipes.finetune verbose=true       # the upstream logs on the console too (always in train.log)
    python -m recipes.finetune --cfg job          # print the composed config and stop

Stages: [1] the Hugging Face model (the tiny one is built when missing) -> [2] NeMo import -> [3] data ->
[4] ``llm.finetune`` -> [5] Hugging Face export (streaming, LoRA merged as each tensor is written; MXFP4 experts
when the source model is MXFP4) -> [6] the export checked against the trained model's logits.
``build(cfg)`` returns the NeMo ``run.Partial`` and has no side effects; ``validate(cfg)`` lists every problem
of a config at once, before anything heavy runs. The console shows the stages, a progress bar and the summary;
what NeMo, megatron-core and Lightning print goes to ``<run_dir>/train.log`` (`routed_output`), and the loss
curve to ``<run_dir>/loss.png``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

import compat  # (the version gate: an unverified stack stops here, before anything is built)
import recipes.schema  # noqa: F401  (registers finetune_schema)
from recipes import packing
from recipes.plan import config_problems

PEFT_SCHEMES = ("lora", "none")
# precision.fp8_recipe -> NeMo's mixed-precision recipe (nemo.collections.llm.recipes.precision.mixed_precision)
FP8_RECIPES = {
    "tensorwise": "bf16_with_fp8_current_scaling_mixed",
    "delayed": "bf16_with_fp8_mixed",
    "mxfp8": "bf16_with_mxfp8_mixed",
}


class ConfigError(ValueError):
    """A config that cannot run; the message lists every problem with its fix."""


def validate(cfg: DictConfig) -> None:
    """Check a composed config; raise one `ConfigError` listing every problem and the override that fixes it."""
    problems = []
    if cfg.peft.name not in PEFT_SCHEMES:
        problems.append(f"peft.name={cfg.peft.name!r} is unknown; use one of {PEFT_SCHEMES} (peft=lora)")
    # The layout rules (parallel sizes, FP8 base weights, LoRA targets) are the planner's, reported from there.
    problems += config_problems(cfg)
    par, d = cfg.parallel, cfg.data
    world = cfg.cluster.num_nodes * cfg.cluster.devices_per_node
    model_par = par.tensor_model_parallel_size * par.pipeline_model_parallel_size
    dp = world // model_par
    if not world % model_par and d.global_batch_size % (d.micro_batch_size * dp):
        problems.append(
            f"data.global_batch_size={d.global_batch_size} is not a multiple of micro_batch_size x "
            f"data-parallel size = {d.micro_batch_size} x {dp}; e.g. data.global_batch_size="
            f"{d.micro_batch_size * dp * max(1, d.global_batch_size // (d.micro_batch_size * dp))}"
        )
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
    prec = cfg.precision
    if prec.base_weights not in ("model", "fp8"):
        problems.append(
            f"precision.base_weights={prec.base_weights!r} is unknown; use precision=bf16 or fp8_base"
        )
    if prec.base_weights == "fp8" and prec.fp8_recipe not in FP8_RECIPES:
        problems.append(
            f"precision.fp8_recipe={prec.fp8_recipe!r} is unknown; use one of {list(FP8_RECIPES)}"
        )
    t = cfg.trainer
    if t.max_steps < 1:
        problems.append(f"trainer.max_steps={t.max_steps} must be >= 1")
    # Intervals longer than the run are shortened to it (`step_intervals`); below 1 they mean nothing.
    for key in ("val_check_interval", "checkpoint_every_n_steps", "log_every_n_steps"):
        if t[key] < 1:
            problems.append(
                f"trainer.{key}={t[key]} must be >= 1 (steps between events; e.g. trainer.{key}=1)"
            )
    if t.limit_val_batches < 0:
        problems.append(f"trainer.limit_val_batches={t.limit_val_batches} must be >= 0 (0 skips validation)")
    if t.warmup_steps < 0 or (t.max_steps >= 1 and t.warmup_steps >= t.max_steps):
        problems.append(
            f"trainer.warmup_steps={t.warmup_steps} must lie in 0..trainer.max_steps-1={t.max_steps - 1}, or "
            f"the learning rate never decays; e.g. trainer.warmup_steps={max(0, t.max_steps // 10)}"
        )
    if t.min_lr > cfg.peft.lr:
        problems.append(
            f"trainer.min_lr={t.min_lr} is above the peak peft.lr={cfg.peft.lr}: the cosine schedule would "
            f"rise; use trainer.min_lr<={cfg.peft.lr}"
        )
    stop = cfg.trainer.stop_at_step
    if stop is not None and not 1 <= stop <= cfg.trainer.max_steps:
        problems.append(
            f"trainer.stop_at_step={stop} must lie in 1..trainer.max_steps={cfg.trainer.max_steps} "
            "(or be null to train to the end)"
        )
    if d.seq_length < 16:
        problems.append(f"data.seq_length={d.seq_length} is too short for a harmony prompt; use >= 256")
    problems += packing.config_problems(d)
    if problems:
        raise ConfigError("the config cannot run:\n  - " + "\n  - ".join(problems))


def model_config(cfg: DictConfig, cuda: bool | None = None):
    """``run.Config`` of the NeMo model: our faithful mapping of the checkpoint's HF config, plus the CPU
    measures when CUDA is absent (given to the constructor so they are recorded in checkpoints)."""
    import nemo_run as run
    from nemo.collections.llm.gpt.model.gpt_oss import GPTOSSConfig, GPTOSSModel

    from compat import cpu
    from convert.gpt_oss import load_generation_config, load_hf_config, nemo_config_kwargs

    kwargs = {**nemo_config_kwargs(load_hf_config(cfg.model.hf_path)), **cpu.config_overrides(cuda)}
    kwargs["seq_length"] = cfg.data.seq_length
    kwargs["generation_config"] = load_generation_config(cfg.model.hf_path)
    return run.Config(GPTOSSModel, config=run.Config(GPTOSSConfig, **kwargs))


def step_intervals(cfg: DictConfig) -> tuple[dict[str, int], str | None]:
    """The validation and checkpoint intervals of a run of ``trainer.max_steps`` steps, and a note when shortened.

    Lightning refuses a validation interval above the run's batches ("val_check_interval (10) must be less
    than or equal to the number of the training batches (4)"): a run shorter than an interval validates and
    checkpoints at its end instead.

    Examples:
        python -c "from recipes.finetune import compose, step_intervals; print(step_intervals(compose(['trainer.max_steps=4'])))"
    """
    t = cfg.trainer
    intervals, events, clamped = {}, [], []
    for key, event in (("val_check_interval", "validates"), ("checkpoint_every_n_steps", "checkpoints")):
        intervals[key] = t[key]
        if t[key] > t.max_steps >= 1:
            intervals[key] = t.max_steps
            events.append(event)
            clamped.append(f"trainer.{key}={t[key]} -> {t.max_steps}")
    note = None
    if clamped:
        note = f"a run of {t.max_steps} steps {' and '.join(events)} at its end: {', '.join(clamped)}"
    return intervals, note


def recipe_overrides(cfg: DictConfig) -> list[str]:
    """The config's deltas as NeMo-Run override strings (checked against the real signatures)."""
    t, p, d = cfg.trainer, cfg.parallel, cfg.data
    intervals, _ = step_intervals(cfg)
    overrides = [
        f"trainer.max_steps={t.max_steps}",
        f"trainer.val_check_interval={intervals['val_check_interval']}",
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
        f"log.ckpt.every_n_train_steps={intervals['checkpoint_every_n_steps']}",
        # The checkpoint written when training ends must hold the optimizer state, or resuming from it fails
        # with "Different dict keys ... (param_groups vs state)" (model_checkpoint.py:618-619).
        "log.ckpt.save_optim_on_train_end=True",
        # The distributed optimizer (GPUs) saves its state as per-bucket flat buffers keyed by model-parallel
        # group ('dp_reshardable', megatron_strategy.py:1232), which resume only with the same TP/PP/EP; this
        # saves one tensor per parameter instead, so a checkpoint resumes with any layout (docs/launch.rst).
        "trainer.strategy.ckpt_optim_fully_reshardable=True",
        # Continue from the newest checkpoint of run_dir when there is one (pass run_dir=<an earlier run> or
        # the same run_id); start from the imported model otherwise.
        "resume.resume_if_exists=True",
        "resume.resume_ignore_no_checkpoint=True",
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
    """Recipe deltas for a machine without CUDA (see `compat.cpu` for the reasons)."""
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


def pad_to_multiple(cfg: DictConfig, cuda: bool | None = None) -> int:
    """The micro-batch width step: 16 tokens, or the whole ``data.seq_length`` where megatron-core's all-gather
    token dispatcher (the CPU path's, `compat.cpu.CONFIG`) gathers tokens from expert-parallel ranks that hold
    different micro-batches: its all-gather needs the same number of tokens on each (gloo: "Received data
    size doesn't match expected size" otherwise)."""
    from compat import cpu

    allgather = cpu.config_overrides(cuda).get("moe_token_dispatcher_type") == "allgather"
    return cfg.data.seq_length if allgather and cfg.parallel.expert_model_parallel_size > 1 else 16


def build(cfg: DictConfig, cuda: bool | None = None):
    """The NeMo fine-tuning ``run.Partial`` for a composed config (no side effects).

    Starts from NeMo's own ``gpt_oss_20b.finetune_recipe`` and applies our deltas with NeMo-Run's parser.
    ``cuda`` builds the recipe as for a machine with (True) or without (False) CUDA; default: this machine.

    Examples:
        python -c "from recipes.finetune import compose, build; print(build(compose()))"
    """
    import nemo_run as run
    from nemo import lightning as nl
    from nemo.collections import llm
    from nemo.collections.llm.recipes.precision import mixed_precision

    from compat import cpu
    from recipes.chat_data import HarmonyChatDataModule

    recipe = llm.recipes.gpt_oss_20b.finetune_recipe(
        dir=str(Path(cfg.work_dir) / "runs"),
        name=cfg.run_name,
        num_nodes=cfg.cluster.num_nodes,
        num_gpus_per_node=cfg.cluster.devices_per_node,
        peft_scheme=cfg.peft.name,
    )
    recipe.log.explicit_log_dir = str(cfg.run_dir)
    # explicit_log_dir replaces log_dir; with both set NeMo logs an error on every run (nemo_logger.py:111-113)
    recipe.log.log_dir = None
    recipe.model = model_config(cfg, cuda)
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
        packed=packing.decide(cfg.data.packed, cfg.data.micro_batch_size, cuda)[0],
        pad_to_multiple=pad_to_multiple(cfg, cuda),
    )
    if cfg.peft.name == "lora":
        # NeMo's LoRA dataclass has postponed (string) annotations, which NeMo-Run's parser cannot type-check
        # ("Unsupported type: int"); these fields are typed by our schema and assigned directly.
        recipe.peft.target_modules = list(cfg.peft.target_modules)
        recipe.peft.dim = cfg.peft.dim
        recipe.peft.alpha = cfg.peft.alpha
        recipe.peft.dropout = cfg.peft.dropout
    overrides = recipe_overrides(cfg)
    if not (cpu.cuda_available() if cuda is None else cuda):
        recipe.trainer.plugins = run.Config(nl.MegatronMixedPrecision, precision="32")
        overrides = cpu_overrides() + overrides
    elif cfg.precision.base_weights == "fp8":
        # NeMo's own FP8 recipes; each sets fp8_param_gather=True: the parameters themselves are FP8 tensors.
        recipe.trainer.plugins = getattr(mixed_precision, FP8_RECIPES[cfg.precision.fp8_recipe])()
    return run.cli.parse_cli_args(recipe, overrides)


def compose(overrides: list[str] | None = None) -> DictConfig:
    """Compose ``conf/finetune.yaml`` outside ``@hydra.main`` (tests, notebooks, the launcher)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    conf_dir = Path(__file__).resolve().parent.parent / "conf"
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        return hydra_compose(config_name="finetune", overrides=overrides or [])


# --------------------------------------------------------------------------------------------------------------
# The console: the run's own lines on the terminal, everything upstream prints in <run_dir>/train.log

_console = None  # the terminal's stream while `routed_output` is active; else the run's lines go to stdout
LOG_NAMES = ("train.log", "train.rank*.log")  # `log_name` of every process


def console():
    """The stream the run's own lines (stages, progress bar, summary) are written to."""
    return _console or sys.stdout


def say(*args) -> None:
    """Print one of the run's own lines on the console (the terminal, also while upstream output is routed)."""
    print(*args, file=console(), flush=True)


def log_name() -> str:
    """``train.log`` for the first process of a run, ``train.rank<N>.log`` for the others."""
    return "train.log" if global_rank() == 0 else f"train.rank{global_rank()}.log"


def _tee(read_fd: int, *write_fds: int) -> None:
    """Copy a pipe to ``write_fds`` until its last writer closes; then close every descriptor given (its own)."""
    while chunk := os.read(read_fd, 1 << 16):
        for fd in write_fds:
            os.write(fd, chunk)
    for fd in (read_fd, *write_fds):
        os.close(fd)


@contextlib.contextmanager
def routed_output(log: Path, verbose: bool = False):
    """Send everything this process writes to its stdout and stderr into ``log``, keeping the terminal for `say`.

    The redirection is of file descriptors 1 and 2, not of Python's ``sys.stdout``: NeMo's and Lightning's
    loggers, megatron-core's prints, Python warnings, C extensions and the helper processes started meanwhile
    (`in_child`) all land in ``log``, in the order they were written. ``verbose`` copies ``log`` to the
    terminal as it is written. Records of level ERROR from any logger are shown on the terminal as well, and
    an exception leaves with the terminal restored, so its traceback is shown where the command was typed.

    Examples:
        python -m recipes.finetune verbose=true      # the upstream logs on the terminal too
    """
    global _console
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    log_fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    stream = os.fdopen(os.dup(saved_out), "w", buffering=1, encoding="utf-8", errors="replace")
    pump = None
    if verbose:
        read_fd, write_fd = os.pipe()
        pump = threading.Thread(target=_tee, args=(read_fd, os.dup(log_fd), os.dup(saved_err)), daemon=True)
        pump.start()
        os.dup2(write_fd, 1)
        os.dup2(write_fd, 2)
        os.close(write_fd)
    else:
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
    os.write(log_fd, f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(sys.argv)}\n".encode())
    errors = logging.StreamHandler(stream)
    # A filter, not the handler's level: NeMo resets the levels of handlers (nemo_logging.py:228-234).
    errors.addFilter(lambda record: record.levelno >= logging.ERROR)
    errors.setFormatter(logging.Formatter("%(levelname)s (%(name)s): %(message)s"))
    loggers = [logging.getLogger(), logging.getLogger("nemo_logger")]  # NeMo's logger does not propagate
    for logger in loggers:
        logger.addHandler(errors)
    _console = stream
    try:
        yield stream
    finally:
        _console = None
        for logger in loggers:
            logger.removeHandler(errors)
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved_out, 1)  # the pipe's last writers close here, which ends the pump
        os.dup2(saved_err, 2)
        if pump is not None:
            pump.join(timeout=10)
        for fd in (saved_out, saved_err, log_fd):
            os.close(fd)
        stream.close()


def tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a text file ("" when it does not exist)."""
    if not path.exists():
        return ""
    return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])


class Stages:
    """Prints numbered stages with their wall time, so a long run shows where it is (``quiet``: count only)."""

    def __init__(self, total: int, quiet: bool = False):
        self.total, self.n, self.quiet, self.t0 = total, 0, quiet, time.perf_counter()

    def start(self, what: str) -> None:
        self.n += 1
        if not self.quiet:
            say(f"[{self.n}/{self.total}] {what}  (+{time.perf_counter() - self.t0:.0f}s)")


def prepare(cfg: DictConfig, stages: Stages) -> None:
    """Side effects before training: build the tiny model, import it into NeMo, write the built-in data."""
    hf_path, nemo_path = Path(cfg.model.hf_path), Path(cfg.model.nemo_path)
    stages.start(f"Hugging Face model: {hf_path}")
    if not (hf_path / "config.json").exists():
        if cfg.model.tiny is None:
            raise ConfigError(f"model.hf_path={hf_path} has no config.json")
        from convert.tiny import build as build_tiny

        build_tiny(hf_path, shape=OmegaConf.to_container(cfg.model.tiny, resolve=True))
        say(f"    built the tiny gpt-oss at {hf_path}")
    else:
        say("    present")
    stages.start(f"NeMo import: {nemo_path}")
    if not (nemo_path / "weights").exists():
        from convert.import_hf import import_hf

        import_hf(hf_path, nemo_path)
        say(f"    imported into {nemo_path}")
    else:
        say("    present")
    stages.start(f"data: {cfg.data.dataset_root}")
    root = Path(cfg.data.dataset_root)
    if cfg.data.builtin:
        from data_prep.builtin import is_current, write

        if not is_current(root, seed=0):
            # Also when an earlier version's files are there: the built-in data is generated, never edited.
            existed = (root / "train.jsonl").exists()
            write(root, seed=0)
            say(
                f"    {'rewrote (it was out of date)' if existed else 'wrote'} the built-in dataset in {root}"
            )
    for split in ("train", "validation"):
        say(f"    {split}: {sum(1 for _ in (root / f'{split}.jsonl').open())} examples")


# Variables torchrun and Lightning read to join a job; a helper process started without them runs alone.
_LAUNCH_VARS = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "GROUP_WORLD_SIZE",
    "ROLE_RANK",
    "ROLE_WORLD_SIZE",
    "ROLE_NAME",
    "MASTER_ADDR",
    "MASTER_PORT",
    "NODE_RANK",
)


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def global_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def prepared(cfg: DictConfig) -> bool:
    """Whether the model, its NeMo import and the data of ``cfg`` are all in place."""
    return (
        (Path(cfg.model.hf_path) / "config.json").exists()
        and (Path(cfg.model.nemo_path) / "weights").exists()
        and (Path(cfg.data.dataset_root) / "train.jsonl").exists()
    )


@contextlib.contextmanager
def _file_lock(path: Path):
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def in_child(function: str, cfg: DictConfig, *args: str) -> None:
    """Run ``recipes.finetune.<function>(cfg, *args)`` in a fresh Python outside the job's process group.

    The import (a one-process NeMo trainer) and the export run apart from the job: they must not join the
    running job (torchrun's variables would make it wait for the other ranks).
    """
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp, "cfg.yaml")
        OmegaConf.save(cfg, conf, resolve=True)
        env = {
            k: v for k, v in os.environ.items() if k not in _LAUNCH_VARS and not k.startswith("TORCHELASTIC")
        }
        code = "import sys; from recipes import finetune; finetune._child(sys.argv[1:])"
        subprocess.run([sys.executable, "-c", code, function, str(conf), *args], env=env, check=True)


def _child(argv: list[str]) -> None:
    function, conf, *args = argv
    cfg = OmegaConf.load(conf)
    {"prepare": lambda: prepare(cfg, Stages(6)), "export": lambda: export(cfg, Path(args[0]))}[function]()


def prepare_once(cfg: DictConfig, stages: Stages) -> None:
    """`prepare` in a one-process run; in a launched job, the first process to get the lock prepares (in a
    child process) and the others find everything in place. Nodes that share the work folder prepare once."""
    if world_size() == 1:
        prepare(cfg, stages)
        return
    with _file_lock(Path(cfg.work_dir) / ".prepare.lock"):
        if not prepared(cfg):
            in_child("prepare", cfg)
    stages.n += 3
    if not stages.quiet:
        say(f"[1-3/{stages.total}] model, NeMo import and data: in place")


def breakdown(trainable: dict[str, int]) -> dict[str, int]:
    """Trainable parameter counts by part of the model: attention, router, experts, the rest."""
    parts = dict.fromkeys(("attention", "router", "experts", "embeddings/norms/output"), 0)
    for name, n in trainable.items():
        part = next(
            (
                p
                for p in ("attention", "router", "experts")
                if f".{p}." in name.replace("self_attention", "attention")
            ),
            None,
        )
        parts[part or "embeddings/norms/output"] += n
    return parts


class TrainingRecord:
    """Lightning callback: the loss of every step, the validation losses, the parameters that train, and the
    first step of the run (above 0 when it resumed). With ``stop_at_step`` it ends training after that step, as
    a preemption would, keeping the schedule of ``max_steps``."""

    def __new__(cls, stop_at_step: int | None = None):
        from lightning.pytorch import Callback

        class _Record(Callback):
            def __init__(self):
                self.losses: list[float] = []
                self.steps: list[int] = []  # the step each loss was reached at (1 = after the first update)
                self.val_losses: list[tuple[int, float]] = []
                self.trainable: dict[str, int] = {}
                self.total_params = 0
                self.first_step: int | None = None

            def on_train_start(self, trainer, pl_module):
                self.first_step = trainer.global_step

            def on_validation_end(self, trainer, pl_module):
                loss = trainer.callback_metrics.get("val_loss")
                if loss is not None and not trainer.sanity_checking:
                    self.val_losses.append((trainer.global_step, float(loss)))

            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                if self.total_params:  # counted at the first batch: a resumed PEFT run adds adapters late
                    return
                params = list(pl_module.named_parameters())
                self.total_params = sum(p.numel() for _, p in params)
                self.trainable = {n: p.numel() for n, p in params if p.requires_grad}
                if trainer.global_rank == 0:
                    parts = " | ".join(f"{k} {v:,}" for k, v in breakdown(self.trainable).items())
                    say(f"    trainable parameters (this rank): {parts} (of {self.total_params:,})")

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                loss = trainer.callback_metrics.get("reduced_train_loss")
                if loss is not None:
                    self.losses.append(float(loss))
                    self.steps.append(trainer.global_step)
                if stop_at_step is not None and trainer.global_step >= stop_at_step:
                    trainer.should_stop = True

        return _Record()


class KeepLogs:
    """Lightning callback: leave this run's logs where they are written.

    When training starts, NeMo moves every file it found in the run folder into ``run_<n>/`` (meant for the
    files of an earlier run: listed by ``NeMoLogger.setup``, `nemo/lightning/nemo_logger.py:171`, moved in
    ``ModelCheckpoint.on_train_start``, `nemo/lightning/pytorch/callbacks/model_checkpoint.py:154-167`); that
    would include the ``train.log`` this run is writing. This hook runs in between and takes the logs off the
    list (``setup`` comes before every callback's ``on_train_start``, whatever their order)."""

    def __new__(cls):
        from lightning.pytorch import Callback

        class _Keep(Callback):
            def setup(self, trainer, pl_module, stage):
                from nemo.utils.app_state import AppState

                state = AppState()
                state.files_to_move = [
                    f for f in state.files_to_move if not any(Path(f).match(n) for n in LOG_NAMES)
                ]

        return _Keep()


class ProgressBar:
    """Lightning callback: one progress bar on the console of the first process: step, training loss, input
    tokens per second (padding included, every data-parallel rank counted) and the time left.

    NeMo's own progress printer keeps writing its per-step lines, into train.log."""

    def __new__(cls, max_steps: int, global_batch_size: int):
        from lightning.pytorch import Callback
        from tqdm import tqdm

        class _Bar(Callback):
            bar = None

            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                if self.bar is None and trainer.global_rank == 0:  # after TrainingRecord's first line
                    stream = console()
                    self.bar = tqdm(
                        total=max_steps,
                        initial=trainer.global_step,
                        desc="    training",
                        unit="step",
                        file=stream,
                        # a terminal is redrawn in place; a file (CI log) gets a line every 10 s
                        mininterval=0.5 if stream.isatty() else 10.0,
                        bar_format="{desc} {n_fmt}/{total_fmt} |{bar:20}| [{elapsed}<{remaining}{postfix}]",
                    )
                    self.tokens, self.seconds = 0, 0.0
                self.t0 = time.perf_counter()

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                if self.bar is None:
                    return
                self.seconds += time.perf_counter() - self.t0
                tokens = batch.get("tokens") if isinstance(batch, dict) else None
                if tokens is not None:  # this rank's samples of the step; the others hold as many
                    self.tokens += tokens.numel() * global_batch_size // tokens.shape[0]
                loss = trainer.callback_metrics.get("reduced_train_loss")
                parts = [f"loss {float(loss):.3f}"] if loss is not None else []
                if self.tokens:
                    parts.append(f"{self.tokens / self.seconds:,.0f} tok/s")
                self.bar.set_postfix_str(", ".join(parts), refresh=False)
                self.bar.update(trainer.global_step - self.bar.n)

            def on_train_end(self, trainer, pl_module):
                if self.bar is not None:
                    self.bar.close()

        return _Bar()


def plot_losses(steps: list[int], losses: list[float], val: list[tuple[int, float]], out: Path) -> Path:
    """Training and validation loss against the step, as a PNG (written aside, then renamed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, losses, lw=1, label="training loss")
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per trained token)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"{out.parent.parent.name} / {out.parent.name}")  # run_name / run_id
    fig.tight_layout()
    partial = out.with_name(out.stem + ".partial.png")
    fig.savefig(partial, dpi=100)
    plt.close(fig)
    partial.replace(out)
    return out


class SeedBeforeAdapters:
    """Lightning callback: reseed torch when fitting starts, after the model is built and before NeMo adds the
    LoRA adapters (at the first validation or training epoch start).

    Building the model draws from the random generator once per local expert, so without it the adapters'
    initial values would depend on the expert-parallel size: the same run at EP=1 and EP=2 would start from
    different adapters and follow different loss curves."""

    def __new__(cls, seed: int):
        import torch
        from lightning.pytorch import Callback

        class _Seed(Callback):
            def on_fit_start(self, trainer, pl_module):
                torch.manual_seed(seed)

        return _Seed()


class WeightsFromTheRestore:
    """Lightning callback: the base model's weights are not drawn at random before the restore of
    ``model.nemo_path`` (or, on resume, of the run's checkpoint) overwrites every one: on a CPU that drawing held
    the largest weight three times and was the run's memory peak (`compat.cpu.weights_left_to_the_restore`).
    ``setup`` runs before the model is built."""

    def __new__(cls):
        from lightning.pytorch import Callback

        from compat import cpu

        class _Restored(Callback):
            def setup(self, trainer, pl_module, stage):
                cpu.weights_left_to_the_restore(pl_module)

        return _Restored()


def last_checkpoint(exp_dir: str | Path) -> Path:
    ckpts = sorted(Path(exp_dir, "checkpoints").glob("*-last"), key=lambda p: p.stat().st_mtime)
    if not ckpts:
        raise FileNotFoundError(f"no *-last checkpoint under {exp_dir}/checkpoints")
    return ckpts[-1]


def export(cfg: DictConfig, ckpt: Path) -> dict:
    """Write the Hugging Face export of a trained checkpoint, streaming (LoRA adapters merged as it is written)."""
    import torch

    from convert.export_hf import export_hf

    out = export_hf(
        ckpt,
        Path(cfg.run_dir) / "hf",
        dtype=getattr(torch, cfg.export.dtype) if cfg.export.dtype else None,
        overwrite=True,
        verify=False,  # checked against the trained model's own logits, a stricter reference
        fmt=cfg.export.format,
        source=cfg.model.hf_path,
    )
    return {"hf_export": str(out)}


def run_finetune(cfg: DictConfig) -> dict:
    """Run every stage for a composed config and return a summary of where everything went.

    In a launched job every process trains; the first one (rank 0) exports and writes the summary.
    """
    import fiddle as fdl

    import convert.import_hf  # noqa: F401  (registers our gpt-oss importer with NeMo)
    from compat import cpu, grad_sync, upstream
    from convert import verify

    validate(cfg)
    from recipes.plan import PlanError, check

    leader = global_rank() == 0
    _, note = step_intervals(cfg)
    if note and leader:
        say(f"note: {note}")
    table = io.StringIO()
    try:
        check(cfg, out=table)
    except PlanError as e:
        print(table.getvalue(), end="")
        if cfg.plan.enforce:
            raise ConfigError(str(e)) from None
        say(f"memory plan (not enforced): {e}")
    else:
        print(table.getvalue(), end="")  # stdout: train.log while `routed_output` is active
        if leader and _console is not None:  # the console gets the head line and the verdict
            lines = table.getvalue().splitlines()
            say("\n".join([lines[0], *(x for x in lines if x.lstrip().startswith(("total ", "fits")))]))
    if cfg.precision.base_weights == "fp8" and not cpu.cuda_available():
        raise ConfigError(
            "precision=fp8_base needs a GPU with Transformer Engine (FP8 parameters and GEMMs); "
            "on this machine use precision=bf16"
        )
    if refused := packing.refusal(cfg.data.packed):
        raise ConfigError(refused)
    if (note := packing.decide(cfg.data.packed, cfg.data.micro_batch_size)[1]) and leader:
        say(f"note: {note}")
    cpu.enable()
    upstream.apply()
    stages = Stages(6 if cfg.export.enabled else 4, quiet=not leader)
    prepare_once(cfg, stages)

    stages.start(
        f"llm.finetune ({'LoRA' if cfg.peft.name == 'lora' else 'full SFT'}, {cfg.trainer.max_steps} steps"
        + (f", stopping after step {cfg.trainer.stop_at_step}" if cfg.trainer.stop_at_step else "")
        + (f", {world_size()} processes" if world_size() > 1 else "")
        + ")"
    )
    fn = fdl.build(build(cfg))
    record = TrainingRecord(cfg.trainer.stop_at_step)
    fn.keywords["trainer"].callbacks.append(record)
    fn.keywords["trainer"].callbacks.append(ProgressBar(cfg.trainer.max_steps, cfg.data.global_batch_size))
    fn.keywords["trainer"].callbacks.append(KeepLogs())
    fn.keywords["trainer"].callbacks.append(WeightsFromTheRestore())
    # Stops a layout whose gradients would be combined wrongly across tensor-parallel ranks before step 1.
    fn.keywords["trainer"].callbacks.append(grad_sync.callback())
    if cfg.peft.name == "lora":
        fn.keywords["trainer"].callbacks.append(SeedBeforeAdapters(cfg.seed))
    probe = None
    if cfg.export.enabled and cfg.export.verify:
        probe = verify.probe_callback(verify.probe_ids(cfg.model.hf_path))
        fn.keywords["trainer"].callbacks.append(probe)
    fn()
    exp_dir = Path(cfg.run_dir)
    summary = {
        "run_dir": str(exp_dir),
        "checkpoint": str(last_checkpoint(exp_dir)),
        "first_step": record.first_step,
        "losses": record.losses,
        "val_losses": record.val_losses,  # [step, loss] after each validation
        "trainable_params": sum(record.trainable.values()),
        "total_params": record.total_params,
        "trainable_by_part": breakdown(record.trainable),
        "trainable_names": sorted(record.trainable),
        "processes": world_size(),
        # What the version gate found, and whether GPT_OSS_ALLOW_UNVERIFIED let an unverified stack run.
        "stack": compat.versions.report(),
    }
    if not leader:
        return summary
    resumed = f" (resumed at step {record.first_step})" if record.first_step else ""
    say(
        f"    loss {record.losses[0]:.3f} -> {record.losses[-1]:.3f}{resumed}; trained "
        f"{summary['trainable_params']:,} of {record.total_params:,} parameters"
    )
    summary["loss_curve"] = str(
        plot_losses(record.steps, record.losses, record.val_losses, exp_dir / "loss.png")
    )
    summary["tensorboard"] = str(exp_dir / "tb_logs")
    if (exp_dir / log_name()).exists():
        summary["train_log"] = str(exp_dir / log_name())
    if not cfg.export.enabled:
        return summary

    stages.start("Hugging Face export" + (" (LoRA merged while written)" if cfg.peft.name == "lora" else ""))
    if world_size() > 1:
        in_child("export", cfg, summary["checkpoint"])
        summary["hf_export"] = str(exp_dir / "hf")
    else:
        summary.update(export(cfg, Path(summary["checkpoint"])))
    stages.start("check: exported model against the trained one")
    if probe is not None:
        ids = verify.probe_ids(cfg.model.hf_path)
        result = verify.compare(verify.hf_logits(summary["hf_export"], ids), probe.logits)
        summary["export_vs_trained_logits"] = asdict(result)
        say(
            f"    exported vs trained logits: max |diff| {result.max_abs_diff:.2e} "
            f"(logit scale {result.logit_scale:.2f}), top-1 agreement {result.top1_agreement:.0%}"
        )
    else:
        say("    skipped (export.verify=false)")
    return summary


@hydra.main(config_path="../conf", config_name="finetune", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Validate, then run every stage with the upstream logs routed to ``<run_dir>/train.log``."""
    try:
        validate(cfg)
    except ConfigError as e:
        raise SystemExit(str(e)) from None
    log = Path(cfg.run_dir) / log_name()
    if global_rank() == 0:
        say(f"upstream logs: {log}" + ("" if cfg.verbose else " (verbose=true: here too)"))
    from compat.grad_sync import GradientSyncError

    try:
        with routed_output(log, verbose=cfg.verbose):
            summary = run_finetune(cfg)
    except (ConfigError, GradientSyncError) as e:
        raise SystemExit(str(e)) from None
    except BaseException:
        if not cfg.verbose:
            say(f"failed; the last lines of {log}:\n{tail(log)}\n")
        raise
    if global_rank() != 0:
        return
    say("Done. Outputs:")
    first = ("run_dir", "checkpoint", "hf_export", "train_log", "loss_curve", "tensorboard")
    for key in sorted(summary, key=lambda k: first.index(k) if k in first else len(first)):
        if isinstance(summary[key], str):
            say(f"  {key:>12}: {summary[key]}")
    Path(summary["run_dir"], "summary.json").write_text(json.dumps(summary, indent=2))
    if cfg.trainer.stop_at_step and cfg.trainer.stop_at_step < cfg.trainer.max_steps:
        say(f"Stopped after step {cfg.trainer.stop_at_step}; continue with: run_id={cfg.run_id}")
    if "hf_export" in summary:
        from convert.gpt_oss import PEFT_MAPPED_TARGETS

        adapter = ""
        if cfg.peft.name == "lora" and set(cfg.peft.target_modules) <= set(PEFT_MAPPED_TARGETS):
            adapter = (
                f"  adapter:    python -m convert.export_peft --lora {summary['checkpoint']} "
                f"--out {summary['run_dir']}/hf_peft --base {cfg.model.hf_path or '<hf folder>'}\n"
            )
        test = Path(cfg.data.dataset_root) / "test.jsonl"
        score = (
            "make predict   (the built-in test split, then its evaluation)"
            if cfg.data.builtin
            else f"python -m recipes.predict model_dir={summary['hf_export']} input={test} "
            f"out={summary['run_dir']}/predictions.jsonl"
        )
        say(
            "Next:\n"
            f"  score it:   {score}\n"
            f"  load it:    python -c \"from transformers import pipeline; pipeline('text-generation', '{summary['hf_export']}')\"\n"
            f"  verify it:  python -m convert.verify --hf {summary['hf_export']} --nemo {summary['checkpoint']}\n"
            f"{adapter}"
            "  your data:  python -m recipes.finetune data=prepared data.dataset_root=<data_prep output>"
        )


if __name__ == "__main__":
    main()
