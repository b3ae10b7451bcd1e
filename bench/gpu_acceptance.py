"""GPU acceptance in one command: every open question of the GPU path, answered within a time budget.

Runs the checks below in order of value, each in its own process with a timeout taken from what is left of
``--budget`` (a check that overruns is stopped and reported as failed: timed out; the next one still runs),
prints a line per check as it ends, and writes ``report.json`` and ``report.md`` into ``--out``: the versions
(`compat.versions.report`), the device and its memory, every figure, and pass / fail / skipped with the
reason. Nothing needs the network: the tiny model is built locally, the 20b-shaped slice from the real config
and tokenizer under ``--shared`` (random weights).

GPU (Transformer Engine) checks, skipped with "no CUDA" on a machine without one or with ``--cpu``:

1. ``te_tiny_logits``: the tiny model in BF16 on the TE path (TE layer spec, grouped-GEMM experts, all-to-all
   dispatcher): NeMo against transformers logits on the same weights (max |diff|, top-1), and the import /
   export round trip, tensor by tensor.
2. ``te_lora_sft``: LoRA and full SFT, 20 steps each (``python -m recipes.finetune``'s path): the loss falls,
   the merged export's logits match the trained model's.
3. ``fp8_base``: ``precision=fp8_base`` LoRA on the tiny model and on the 20b-shaped slice: it runs, the loss
   falls, the export is written.
4. ``slice_throughput``: a 20b-shaped k-layer slice, LoRA, the ``spark_20b_lora`` preset's micro-batch and
   sequence length: tokens/s per GPU, MFU (`train_flops`), peak allocated and reserved memory against the
   planner's estimate for the same slice (`recipes.plan`): the plan must cover the peak by at most 15% more.
5. ``te_packing``: packed against unpacked sequences: per-example losses of one packed row against each
   example alone (the attention must stay within each example), and the training throughput ratio on the
   slice (real tokens per second).

CPU checks (the local layer spec, fp32), run with ``--cpu`` (or where CUDA is absent), skipped on a GPU run:

6. ``local_tiny_logits``: NeMo against transformers logits on the tiny model, import / export round trip.
7. ``packing_dataset``: the packed chat dataset: every example once, rows within ``seq_length``, the
   boundaries, the real-token share packed against unpacked.
8. ``local_lora_sft``: LoRA and full SFT for a few steps each: the loss falls, export matches the trained model.

Exit status: 0 when no check failed and at least one passed, 1 otherwise (the report is written either way).

Examples:
    python bench/gpu_acceptance.py --out work/gpu_acceptance                    # on a GPU machine, 480 s
    python bench/gpu_acceptance.py --cpu --budget 120 --out work/gpu_acceptance_cpu
    python bench/gpu_acceptance.py --only te_tiny_logits,te_lora_sft --out /tmp/acc   # the cheapest two
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_BUDGET_S = 480
RESERVE_S = 3  # kept back from the budget to write the report
SHARED = ROOT.parent / "shared" / "data" / "gpt-oss"  # configs/gpt-oss-20b/config.json and tokenizer/
# Dense BF16 peak of one GPU in FLOP/s, by a substring of torch.cuda.get_device_name() (vendor datasheets);
# another GPU needs --peak-tflops for its MFU.
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "B200": 2250e12, "GB200": 2500e12}
# BF16 logits of a two-layer model against fp32 transformers: within a few percent of the logit scale.
BF16_LOGIT_TOLERANCE = 0.05  # times the logit scale
FP32_LOGIT_TOLERANCE = 1e-4  # convert.verify.TOLERANCE: a faithful fp32 conversion agrees to ~1e-6
PLAN_MARGIN = 0.15  # the planner may exceed the measured peak by at most this share, never fall below it


class CheckFailed(Exception):
    """What failed and why, with the figures measured so far."""

    def __init__(self, reason: str, **figures):
        super().__init__(reason)
        self.figures = figures


@dataclass(frozen=True)
class Check:
    name: str
    title: str
    device: str  # cuda: the TE path on a GPU | cpu: the local spec without CUDA | any: either
    cap_s: int  # the longest this check may run
    min_s: int  # not started with less budget than this left
    run: Callable[[Context], dict]


@dataclass
class Context:
    out: Path
    work: Path
    shared: Path
    cuda: bool
    slice_layers: int
    peak_flops: float | None

    def path(self, *parts: str) -> Path:
        return self.work.joinpath(*parts)


def say(*args) -> None:
    print(*args, flush=True)


# ------------------------------------------------------------------------------------------- shared assets


def finetune_cfg(ctx: Context, *overrides: str):
    """The fine-tuning config of ``recipes.finetune`` with its outputs under the acceptance work folder."""
    from recipes.finetune import compose

    return compose([f"work_dir={ctx.work}", "run_id=acceptance", *overrides])


def tiny_overrides(ctx: Context) -> list[str]:
    """The tiny model of this device: fp32 on CPU (the default path), BF16 on the GPU path."""
    if not ctx.cuda:
        return []
    return [
        f"model.hf_path={ctx.path('models', 'tiny-bf16-hf')}",
        f"model.nemo_path={ctx.path('models', 'tiny-bf16-nemo')}",
    ]


def tiny_data(ctx: Context):
    """The tiny model's Hugging Face folder (its tokenizer) and the built-in data, without the NeMo import;
    returns the config that names them."""
    from convert.tiny import build as build_tiny
    from data_prep.builtin import write

    cfg = finetune_cfg(ctx)
    if not (Path(cfg.model.hf_path) / "config.json").exists():
        build_tiny(cfg.model.hf_path)
    if not (Path(cfg.data.dataset_root) / "train.jsonl").exists():
        write(cfg.data.dataset_root, seed=0)
    return cfg


def tiny_assets(ctx: Context):
    """The tiny model (built when missing, BF16 on a GPU), its NeMo import and the built-in data, as
    ``recipes.finetune`` prepares them; returns the config that names them."""
    import torch

    from convert.import_hf import import_hf
    from convert.tiny import build as build_tiny
    from recipes import finetune

    cfg = finetune_cfg(ctx, *tiny_overrides(ctx))
    hf = Path(cfg.model.hf_path)
    if ctx.cuda:
        if not (hf / "config.json").exists():
            build_tiny(hf, dtype=torch.bfloat16)
        # the import's own check runs the model on the host (convert.verify), which the TE path cannot:
        # te_tiny_logits compares on the GPU instead and reports convert.verify's outcome as a figure
        import_hf(hf, cfg.model.nemo_path, verify=False)
    finetune.prepare(cfg, finetune.Stages(3, quiet=True))
    return cfg


def slice_assets(ctx: Context, k: int):
    """A gpt-oss-20b-shaped slice of ``k`` layers (the real config and tokenizer, random BF16 weights) and its
    NeMo import; returns ``(hf folder, nemo folder)``. Raises `CheckFailed` when the config is absent."""
    import torch

    from convert.import_hf import import_hf
    from convert.tiny import HF_FIELDS
    from convert.tiny import build as build_tiny

    config, tokenizer = ctx.shared / "configs" / "gpt-oss-20b" / "config.json", ctx.shared / "tokenizer"
    if not config.exists() or not (tokenizer / "tokenizer.json").exists():
        raise CheckFailed(f"no gpt-oss-20b config and tokenizer under {ctx.shared} (pass --shared <folder>)")
    hf_cfg = json.loads(config.read_text())
    shape = {key: hf_cfg[key] for key in HF_FIELDS if key != "num_hidden_layers"}
    shape.update(num_hidden_layers=k, seed=0, rope_scaling=hf_cfg["rope_scaling"])
    hf, nemo = ctx.path("models", f"slice20b-k{k}-hf"), ctx.path("models", f"slice20b-k{k}-nemo")
    if not (hf / "config.json").exists():
        build_tiny(hf, shape=shape, tokenizer_dir=tokenizer, dtype=torch.bfloat16)
    import_hf(hf, nemo)
    return hf, nemo


def loss_falls(losses: list[float], what: str) -> dict:
    """The first and last three steps' mean loss; `CheckFailed` unless the loss fell."""
    if len(losses) < 6:
        raise CheckFailed(f"{what}: {len(losses)} losses recorded, need at least 6", losses=losses)
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    figures = {f"{what}_loss_first3": round(first, 4), f"{what}_loss_last3": round(last, 4)}
    if not last < first:
        raise CheckFailed(f"{what}: the loss did not fall ({first:.4f} -> {last:.4f})", **figures)
    return figures


def run_recipe(ctx: Context, cfg) -> dict:
    """``recipes.finetune.run_finetune`` (validate, plan, prepare, train, export, check the export)."""
    from recipes.finetune import run_finetune

    return run_finetune(cfg)


def lora_and_sft(ctx: Context, steps: int, tolerance: float, relative: bool) -> dict:
    """LoRA then full SFT through the recipe: loss falls, exported logits match the trained model's."""
    tiny_assets(ctx)
    figures = {}
    for peft in ("lora", "none"):
        cfg = finetune_cfg(
            ctx,
            *tiny_overrides(ctx),
            f"peft={peft}",
            f"run_id=acceptance-{peft}",
            f"trainer.max_steps={steps}",
            f"trainer.val_check_interval={steps}",
            f"trainer.checkpoint_every_n_steps={steps}",
            "trainer.limit_val_batches=1",
        )
        summary = run_recipe(ctx, cfg)
        figures.update(loss_falls(summary["losses"], peft))
        logits = summary.get("export_vs_trained_logits")
        if logits is None:
            raise CheckFailed(f"{peft}: no export-vs-trained comparison in the run's summary", **figures)
        limit = tolerance * max(1.0, logits["logit_scale"]) if relative else tolerance
        figures[f"{peft}_export_max_abs_diff"] = logits["max_abs_diff"]
        figures[f"{peft}_export_top1"] = logits["top1_agreement"]
        if logits["max_abs_diff"] > limit:
            raise CheckFailed(
                f"{peft}: exported logits differ from the trained model's by {logits['max_abs_diff']:.3g} "
                f"> {limit:.3g}",
                **figures,
            )
    return figures


def same_tensors(a: Path, b: Path) -> list[str]:
    """Names of the safetensors tensors that differ between two HF folders (missing ones included)."""
    import torch
    from safetensors.torch import load_file

    def tensors(folder: Path) -> dict:
        out = {}
        for f in sorted(folder.glob("*.safetensors")):
            out.update(load_file(f))
        return out

    x, y = tensors(a), tensors(b)
    return sorted(set(x) ^ set(y)) + [n for n in sorted(set(x) & set(y)) if not torch.equal(x[n], y[n])]


# ----------------------------------------------------------------------------------------- GPU helpers


def load_on_gpu(nemo_dir: Path):
    """A NeMo checkpoint's model on the current GPU, as NeMo builds it for training (TE spec, its own dtype),
    and its trainer (for teardown)."""
    from nemo import lightning as nl
    from nemo.lightning import io

    model = io.load_context(str(nemo_dir), subpath="model")
    model.config.perform_initialization = False
    trainer = nl.Trainer(
        devices=1, accelerator="gpu", strategy=nl.MegatronStrategy(ddp="pytorch", setup_optimizers=False)
    )
    trainer.strategy.connect(model)
    trainer.strategy.setup_environment()
    model.configure_model()
    trainer.strategy.setup(trainer)
    trainer.strategy.load_checkpoint(str(nemo_dir))
    model.module.cuda().eval()
    return model, trainer


def module_of(model):
    """The megatron-core GPTModel inside NeMo's wrappers."""
    module = model.module
    while hasattr(module, "module"):
        module = module.module
    return module


def te_path_settings(model) -> dict:
    """The GPU path's settings as the built model has them (what this acceptance is about)."""
    c = model.config
    spec = type(module_of(model).decoder.layers[0].self_attention.core_attention).__name__
    return {
        "core_attention": spec,
        "moe_grouped_gemm": bool(c.moe_grouped_gemm),
        "moe_token_dispatcher_type": c.moe_token_dispatcher_type,
        "params_dtype": str(c.params_dtype).replace("torch.", ""),
    }


# ------------------------------------------------------------------------------------------------- checks


def check_te_tiny_logits(ctx: Context) -> dict:
    import torch

    from convert import verify

    cfg = tiny_assets(ctx)
    hf, nemo = Path(cfg.model.hf_path), Path(cfg.model.nemo_path)
    ids = verify.probe_ids(hf)
    reference = verify.hf_logits(hf, ids)  # fp32 transformers on the host
    model, trainer = load_on_gpu(nemo)
    figures = te_path_settings(model)
    try:
        with torch.no_grad():
            x = ids.cuda()
            pos = torch.arange(x.shape[1], device="cuda").unsqueeze(0).expand_as(x)
            logits = module_of(model)(input_ids=x, position_ids=pos, attention_mask=None)
        logits = logits[..., : reference.shape[-1]].float().cpu()
    finally:
        from nemo.lightning import teardown

        teardown(trainer, model)
    result = verify.compare(logits, reference)
    figures.update(
        max_abs_diff=result.max_abs_diff, top1_agreement=result.top1_agreement, logit_scale=result.logit_scale
    )
    if figures["core_attention"] != "TEDotProductAttention" or not figures["moe_grouped_gemm"]:
        raise CheckFailed("the model was not built on the TE path (TE attention, grouped GEMM)", **figures)
    limit = BF16_LOGIT_TOLERANCE * max(1.0, result.logit_scale)
    if result.max_abs_diff > limit or result.top1_agreement < 0.9:
        raise CheckFailed(
            f"TE-path logits differ from transformers: max |diff| {result.max_abs_diff:.3g} (limit {limit:.3g}), "
            f"top-1 {result.top1_agreement:.1%} (limit 90%)",
            **figures,
        )
    try:
        report = verify.verify(hf, nemo)
        figures["convert_verify_on_gpu"] = f"max |diff| {report.logits.max_abs_diff:.3g}"
    except Exception as e:  # a finding for convert/, reported here; the TE comparison above is the check
        figures["convert_verify_on_gpu"] = f"{type(e).__name__}: {str(e).strip()[:300]}"
    return round_trip(ctx, hf, nemo, "te-tiny-roundtrip", figures)


def round_trip(ctx: Context, hf: Path, nemo: Path, name: str, figures: dict) -> dict:
    """Export the import ``nemo`` of ``hf`` again and require every tensor unchanged; ``figures`` plus the count."""
    from convert.export_hf import export_hf

    exported = export_hf(nemo, ctx.path("exports", name), overwrite=True, verify=False)
    changed = same_tensors(hf, exported)
    figures["round_trip_tensors_changed"] = len(changed)
    if changed:
        raise CheckFailed(
            f"import/export round trip changed {len(changed)} tensors: {changed[:4]}", **figures
        )
    return figures


def check_te_lora_sft(ctx: Context) -> dict:
    return lora_and_sft(ctx, steps=20, tolerance=BF16_LOGIT_TOLERANCE, relative=True)


def check_fp8_base(ctx: Context) -> dict:
    figures = {}
    tiny_assets(ctx)
    runs = [("tiny", tiny_overrides(ctx), 20)]
    try:
        hf, nemo = slice_assets(ctx, ctx.slice_layers)
        runs.append(("slice", [f"model.hf_path={hf}", f"model.nemo_path={nemo}", "model=gpt_oss_20b"], 10))
    except CheckFailed as e:
        figures["slice"] = f"not run: {e}"
    for name, model, steps in runs:
        cfg = finetune_cfg(
            ctx,
            *model,
            "peft=lora",
            "precision=fp8_base",
            f"run_id=acceptance-fp8-{name}",
            "data.micro_batch_size=1",
            "data.global_batch_size=4",
            f"trainer.max_steps={steps}",
            f"trainer.val_check_interval={steps}",
            f"trainer.checkpoint_every_n_steps={steps}",
            "trainer.limit_val_batches=1",
            "export.verify=false",
        )
        summary = run_recipe(ctx, cfg)
        figures.update(loss_falls(summary["losses"], f"{name}_fp8"))
        if not (Path(summary.get("hf_export", "")) / "config.json").exists():
            raise CheckFailed(f"{name}: no Hugging Face export was written", **figures)
        figures[f"{name}_export"] = summary["hf_export"]
    return figures


def train_flops(hf: dict, seqlen_sum: float, seqlen_sq_sum: float, micro_batches: int) -> float:
    """Training FLOPs of a gpt-oss over micro-batches, counted as Megatron-Bridge counts them for its published
    gpt-oss throughput (``num_floating_point_operations``, src/megatron/bridge/training/utils/flop_utils.py):

        FLOPs = S * [ 6 h (3 f k) L                               routed experts (gated: 3 matrices of h x f)
                    + 6 sum_layers (h (q + 2 kv) + q h + core)    attention projections and core attention
                    + 6 h V ]                                     output layer

    with ``S`` the tokens of the micro-batches including padding (``seqlen_sum``), ``h`` hidden, ``f`` the
    expert width, ``k`` experts per token, ``q = heads x head_dim``, ``kv = kv_heads x head_dim``, ``V`` the
    vocabulary. Core attention per token: ``q x s2/S`` on full layers (``s2 = seqlen_sq_sum``: per packed
    segment, the square of its length; unpacked, of the row), ``2 q (w - w (w - 1) / (2 T))`` on sliding layers
    (``w`` the keys a query sees, ``T = S / micro-batches``). The factor 6 is forward plus both backward GEMMs;
    Bridge counts it for LoRA too (frozen weights' gradients are not computed, but the published figures count
    them), so these FLOPs are model FLOPs, comparable with Bridge's, not the FLOPs a LoRA step executes. The
    router and norms are not counted. MFU = FLOPs / seconds / peak dense BF16 FLOP/s of one GPU.
    """
    h, f, k, v = hf["hidden_size"], hf["intermediate_size"], hf["num_experts_per_tok"], hf["vocab_size"]
    head_dim = hf.get("head_dim") or h // hf["num_attention_heads"]
    q, kv = hf["num_attention_heads"] * head_dim, hf["num_key_value_heads"] * head_dim
    n = hf["num_hidden_layers"]
    types = hf.get("layer_types") or ["sliding_attention", "full_attention"] * n
    sliding = sum(t == "sliding_attention" for t in types[:n])
    proj = h * (q + 2 * kv) + q * h
    factor = seqlen_sq_sum / seqlen_sum
    w = hf.get("sliding_window") or 0
    rows = seqlen_sum / micro_batches  # Bridge's effective sequence length, for the window's average context
    swa_context = w - w * (w - 1) / (2 * rows) if w < rows else factor / 2
    attention = (n - sliding) * (proj + q * factor) + sliding * (proj + 2 * q * swa_context)
    per_token = 6 * h * (3 * f * k) * n + 6 * attention + 6 * h * v
    return seqlen_sum * per_token


class BatchLog:
    """Records every collated micro-batch (tokens computed, the squares of its sequence lengths, real tokens)
    by wrapping the chat dataset's collate: the data loader runs in this process (``num_workers=0``)."""

    def __init__(self):
        from recipes.chat_data import HarmonyChatDataset

        self.rows: list[tuple[int, int, int]] = []
        original = HarmonyChatDataset.collate_fn

        def collate(dataset, batch):
            out = original(dataset, batch)
            tokens = out["tokens"]
            if "cu_seqlens" in out:
                cu = out["cu_seqlens"][0, : int(out["cu_seqlens_argmin"][0])].long()
                lengths = cu[1:] - cu[:-1]
                real = sum(len(e.input_ids) - 1 for e in batch[0])
                self.rows.append((tokens.numel(), int((lengths**2).sum()), real))
            else:
                real = sum(len(e.input_ids) - 1 for e in batch)
                self.rows.append((tokens.numel(), tokens.shape[0] * tokens.shape[1] ** 2, real))
            return out

        HarmonyChatDataset.collate_fn = collate


def train_measured(ctx: Context, overrides: list[str], steps: int, warmup: int = 2) -> dict:
    """Train in this process with a timer on every step; tokens/s per GPU, MFU and peak memory after warm-up."""
    import fiddle as fdl
    import torch
    from lightning.pytorch import Callback

    from compat import cpu, upstream
    from recipes import finetune

    cfg = finetune_cfg(
        ctx,
        *overrides,
        f"trainer.max_steps={steps}",
        f"trainer.val_check_interval={steps}",
        f"trainer.checkpoint_every_n_steps={steps}",
        "trainer.limit_val_batches=0",
        "export.enabled=false",
    )
    finetune.validate(cfg)
    cpu.enable()
    upstream.apply()
    finetune.prepare(cfg, finetune.Stages(3, quiet=True))
    log = BatchLog()
    times, losses = [], []

    class Timer(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            torch.cuda.synchronize()
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            torch.cuda.synchronize()
            times.append(time.perf_counter() - self.t0)
            loss = trainer.callback_metrics.get("reduced_train_loss")
            losses.append(float(loss) if loss is not None else float("nan"))

    fn = fdl.build(finetune.build(cfg))
    fn.keywords["trainer"].callbacks.append(Timer())
    torch.cuda.reset_peak_memory_stats()
    fn()
    if len(times) <= warmup:
        raise CheckFailed(f"only {len(times)} steps timed; need more than {warmup}")
    per_step = len(log.rows) // len(times)  # micro-batches per step on this GPU (the loader may read ahead)
    measured = log.rows[warmup * per_step : len(times) * per_step]
    seconds = sum(times[warmup:])
    computed, squares, real = (sum(r[i] for r in measured) for i in range(3))
    from convert.gpt_oss import load_hf_config

    flops = train_flops(load_hf_config(cfg.model.hf_path), computed, squares, len(measured))
    figures = {
        "steps_timed": len(times) - warmup,
        "seconds_per_step": round(seconds / (len(times) - warmup), 4),
        "micro_batches_per_step": per_step,
        "tokens_per_s_per_gpu": round(computed / seconds, 1),
        "real_tokens_per_s_per_gpu": round(real / seconds, 1),
        "model_tflops_per_s_per_gpu": round(flops / seconds / 1e12, 2),
        "peak_allocated_gb": round(torch.cuda.max_memory_allocated() / 1e9, 3),
        "peak_reserved_gb": round(torch.cuda.max_memory_reserved() / 1e9, 3),
        "losses": [round(x, 4) for x in losses],
    }
    peak = ctx.peak_flops or next(
        (v for k, v in PEAK_BF16.items() if k in torch.cuda.get_device_name()), None
    )
    figures["mfu"] = round(flops / seconds / peak, 4) if peak else "unknown GPU: pass --peak-tflops"
    try:
        from recipes import plan

        figures["plan_gb"] = round(plan.estimate(plan.plan_from_cfg(cfg)).device_total / 1e9, 3)
    except Exception as e:  # the planner's error is a figure of this check, not its end
        figures["plan_gb"] = f"planner failed: {type(e).__name__}: {e}"
    return figures


def slice_overrides(ctx: Context) -> list[str]:
    hf, nemo = slice_assets(ctx, ctx.slice_layers)
    # the preset as users run it (data.packed=auto: packed rows on the TE path), on this machine's profile
    return [
        "experiment=spark_20b_lora",
        f"model.hf_path={hf}",
        f"model.nemo_path={nemo}",
        "cluster.device=auto",
        "plan.enforce=false",
    ]


def check_slice_throughput(ctx: Context) -> dict:
    figures = {"slice_layers": ctx.slice_layers}
    figures.update(train_measured(ctx, slice_overrides(ctx), steps=6))
    plan_gb, peak = figures["plan_gb"], figures["peak_reserved_gb"]
    if not isinstance(plan_gb, float):
        raise CheckFailed(str(plan_gb), **figures)
    figures["plan_over_peak"] = round(plan_gb / peak, 3)
    if plan_gb < peak or plan_gb > peak * (1 + PLAN_MARGIN):
        raise CheckFailed(
            f"the planner says {plan_gb:.2f} GB for a measured peak of {peak:.2f} GB reserved "
            f"({plan_gb / peak - 1:+.0%}; wanted 0 to +{PLAN_MARGIN:.0%})",
            **figures,
        )
    return figures


def packed_vs_alone(nemo: Path, data, rows: int = 4) -> dict:
    """Per-example summed loss of packed rows (THD, packed-sequence parameters) against each example alone."""
    import torch
    from nemo.collections.llm.gpt.model.base import get_packed_seq_params
    from nemo.lightning import teardown

    model, trainer = load_on_gpu(nemo)
    worst, examples = 0.0, 0
    try:
        module = module_of(model)
        with torch.no_grad():
            for r in range(min(rows, len(data.rows))):
                row = [data.examples[i] for i in data.rows[r]]
                batch = {k: v.cuda() if torch.is_tensor(v) else v for k, v in data.collate_fn([row]).items()}
                for key in ("cu_seqlens_argmin", "max_seqlen"):
                    batch[key] = batch[key].cpu()
                packed = module(
                    input_ids=batch["tokens"],
                    position_ids=batch["position_ids"],
                    attention_mask=None,
                    labels=batch["labels"],
                    packed_seq_params=get_packed_seq_params(batch),
                ).float()
                cu = batch["cu_seqlens"][0].tolist()
                for j, e in enumerate(row):
                    ids = torch.tensor(e.input_ids, device="cuda").unsqueeze(0)
                    mask = torch.tensor(e.loss_mask[1:], device="cuda", dtype=torch.float)
                    pos = torch.arange(ids.shape[1] - 1, device="cuda").unsqueeze(0)
                    alone = module(
                        input_ids=ids[:, :-1], position_ids=pos, attention_mask=None, labels=ids[:, 1:]
                    ).float()
                    a = float((alone[0] * mask).sum())
                    p = float((packed[0, cu[j] : cu[j + 1]] * mask).sum())
                    worst = max(worst, abs(a - p) / max(1.0, abs(a)))
                    examples += 1
    finally:
        teardown(trainer, model)
    return {"examples_compared": examples, "max_relative_loss_diff": worst}


def check_te_packing(ctx: Context) -> dict:
    from transformers import AutoTokenizer

    from recipes.chat_data import HarmonyChatDataset

    cfg = tiny_assets(ctx)
    data = HarmonyChatDataset(
        Path(cfg.data.dataset_root) / "train.jsonl",
        AutoTokenizer.from_pretrained(cfg.model.hf_path),
        1024,
        packed=True,
    )
    figures = packed_vs_alone(Path(cfg.model.nemo_path), data)
    if figures["max_relative_loss_diff"] > 2e-2:
        raise CheckFailed(
            f"packed rows change the examples' losses by up to {figures['max_relative_loss_diff']:.3g} "
            "(relative; limit 0.02): attention crosses examples or positions are wrong",
            **figures,
        )
    try:
        base = slice_overrides(ctx)
    except CheckFailed as e:
        figures["throughput"] = f"not measured: {e}"
        return figures
    flat = train_measured(ctx, [*base, "run_id=acceptance-unpacked", "data.packed=false"], steps=5)
    packed = train_measured(ctx, [*base, "run_id=acceptance-packed", "data.packed=true"], steps=5)
    figures.update(
        unpacked_real_tokens_per_s=flat["real_tokens_per_s_per_gpu"],
        packed_real_tokens_per_s=packed["real_tokens_per_s_per_gpu"],
        packed_over_unpacked=round(
            packed["real_tokens_per_s_per_gpu"] / flat["real_tokens_per_s_per_gpu"], 2
        ),
        unpacked_losses=flat["losses"],
        packed_losses=packed["losses"],
    )
    return figures


def check_local_tiny_logits(ctx: Context) -> dict:
    from convert import verify

    cfg = tiny_assets(ctx)
    hf, nemo = Path(cfg.model.hf_path), Path(cfg.model.nemo_path)
    report = verify.verify(hf, nemo)
    c = report.logits
    figures = {
        "max_abs_diff": c.max_abs_diff,
        "top1_agreement": c.top1_agreement,
        "logit_scale": c.logit_scale,
        "min_layer_cosine": min(report.layer_cosine) if report.layer_cosine else None,
    }
    failed = report.failed(FP32_LOGIT_TOLERANCE)
    if failed:
        raise CheckFailed("NeMo (local spec) against transformers: " + "; ".join(failed), **figures)
    return round_trip(ctx, hf, nemo, "local-tiny-roundtrip", figures)


def check_local_lora_sft(ctx: Context) -> dict:
    return lora_and_sft(ctx, steps=8, tolerance=FP32_LOGIT_TOLERANCE, relative=False)


def check_packing_dataset(ctx: Context) -> dict:
    from transformers import AutoTokenizer

    from recipes import packing
    from recipes.chat_data import HarmonyChatDataset

    cfg = tiny_data(ctx)
    tokenizer = AutoTokenizer.from_pretrained(cfg.model.hf_path)
    path = Path(cfg.data.dataset_root) / "train.jsonl"
    figures = {}
    for seq_length in (cfg.data.seq_length, 2048):
        packed = HarmonyChatDataset(path, tokenizer, seq_length, packed=True)
        seen = sorted(i for row in packed.rows for i in row)
        if seen != list(range(len(packed.examples))):
            raise CheckFailed(f"seq_length {seq_length}: the rows do not hold every example exactly once")
        longest = max(sum(packed.lengths[i] for i in row) for row in packed.rows)
        if longest > seq_length:
            raise CheckFailed(f"seq_length {seq_length}: a row of {longest} tokens")
        for r in range(len(packed)):
            batch = packed.collate_fn([packed[r]])
            cu = batch["cu_seqlens"][0, : int(batch["cu_seqlens_argmin"][0])].tolist()
            lengths = [packed.lengths[i] for i in packed.rows[int(packed.order[r])]]
            if cu[: len(lengths) + 1] != [sum(lengths[:j]) for j in range(len(lengths) + 1)]:
                raise CheckFailed(f"seq_length {seq_length}: row {r}'s boundaries {cu} for lengths {lengths}")
        mbs = cfg.data.micro_batch_size
        # unpacked: the same examples one per row, in file order, micro-batches of the data config
        a = packing.token_share(packed.lengths, [[i] for i in range(len(packed.lengths))], seq_length, mbs)
        b = packed.token_share(1)
        figures[f"seq{seq_length}"] = {
            "examples": a["examples"],
            "unpacked_share": round(a["share"], 4),
            "unpacked_fill": round(a["fill"], 4),
            "unpacked_micro_batch": mbs,
            "packed_rows": b["rows"],
            "packed_share": round(b["share"], 4),
            "packed_fill": round(b["fill"], 4),
        }
    return figures


# fmt: off
CHECKS = [
    Check("te_tiny_logits", "TE path, tiny: logits vs transformers, round trip", "cuda", 180, 60, check_te_tiny_logits),
    Check("te_lora_sft", "TE path, tiny: LoRA and SFT 20 steps, export", "cuda", 300, 90, check_te_lora_sft),
    Check("fp8_base", "precision=fp8_base LoRA: tiny and 20b slice", "cuda", 300, 90, check_fp8_base),
    Check("slice_throughput", "20b slice LoRA: tokens/s, MFU, memory vs plan", "cuda", 300, 120, check_slice_throughput),
    Check("te_packing", "packed vs unpacked: losses, throughput", "cuda", 300, 90, check_te_packing),
    Check("local_tiny_logits", "local spec, tiny: logits vs transformers, round trip", "cpu", 240, 30, check_local_tiny_logits),
    Check("packing_dataset", "packed chat dataset: rows, boundaries, real-token share", "any", 180, 20, check_packing_dataset),
    Check("local_lora_sft", "local spec, tiny: LoRA and SFT, export", "cpu", 420, 60, check_local_lora_sft),
]
# fmt: on


# -------------------------------------------------------------------------------------------- the runner


def child(name: str, ctx: Context) -> int:
    """Run one check in this process and write ``checks/<name>.json``."""
    check = next(c for c in CHECKS if c.name == name)
    result = {"status": "pass", "reason": "", "figures": {}}
    try:
        result["figures"] = check.run(ctx)
    except CheckFailed as e:
        result.update(status="fail", reason=str(e), figures=e.figures)
    except Exception as e:
        tb = traceback.extract_tb(e.__traceback__)[-1]
        where = f"{Path(tb.filename).name}:{tb.lineno}"
        result.update(status="fail", reason=f"{type(e).__name__} at {where}: {str(e).strip()[:600]}")
        traceback.print_exc()
    path = ctx.out / "checks" / f"{name}.json"
    path.write_text(json.dumps(result, indent=2, default=str))
    return 0


def device_info(cpu_only: bool) -> dict:
    import torch

    if not cpu_only and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return {
            "kind": "cuda",
            "name": torch.cuda.get_device_name(0),
            "memory_gb": round(props.total_memory / 1e9, 1),
            "count": torch.cuda.device_count(),
            "cuda": torch.version.cuda,
        }
    pages, page = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    return {
        "kind": "cpu",
        "name": platform.processor() or platform.machine(),
        "memory_gb": round(pages * page / 1e9, 1),
        "cores": os.cpu_count(),
    }


def stack_versions() -> dict:
    """``compat.versions.report()`` (the version gate), plus torch and Transformer Engine as installed."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    try:
        import compat

        out = compat.versions.report()
    except Exception as e:  # an unverified stack is a finding of this report: every check will say so too
        out = {"gate": f"{type(e).__name__}: {e}"}
    for package in ("torch", "transformer_engine", "nemo_toolkit", "megatron-core", "transformers"):
        try:
            out.setdefault("installed", {})[package] = version(package)
        except PackageNotFoundError:
            out.setdefault("installed", {})[package] = None
    return out


def run_one(check: Check, ctx: Context, timeout: float, env: dict) -> dict:
    """Run ``check`` in a child process (its own process group), stopped after ``timeout`` seconds."""
    log_path = ctx.out / "logs" / f"{check.name}.log"
    result_path = ctx.out / "checks" / f"{check.name}.json"
    result_path.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", check.name, *ctx_args(ctx)]
    t0 = time.perf_counter()
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop(proc)
            return {
                "status": "fail",
                "reason": f"timed out after {timeout:.0f} s (the check's limit from the budget); log {log_path}",
                "figures": {},
                "seconds": round(time.perf_counter() - t0, 1),
            }
    seconds = round(time.perf_counter() - t0, 1)
    if not result_path.exists():
        tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
        return {
            "status": "fail",
            "reason": f"the check's process exited with {code} without a result; last lines: "
            + " | ".join(tail),
            "figures": {},
            "seconds": seconds,
        }
    return {**json.loads(result_path.read_text()), "seconds": seconds}


def stop(proc: subprocess.Popen) -> None:
    """Stop a check's process group (the check and anything it started): SIGTERM, then SIGKILL after 5 s."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def ctx_args(ctx: Context) -> list[str]:
    args = ["--out", str(ctx.out), "--shared", str(ctx.shared), "--slice-layers", str(ctx.slice_layers)]
    if ctx.peak_flops:
        args += ["--peak-tflops", str(ctx.peak_flops / 1e12)]
    return args


def fmt_figures(figures: dict, width: int = 70) -> str:
    text = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items())
    return text if len(text) <= width else text[: width - 3] + "..."


def write_report(out: Path, report: dict) -> None:
    """``report.json`` and ``report.md``, each written aside and renamed."""
    lines = [
        "# GPU acceptance",
        "",
        f"- started: {report['started']}, budget {report['budget_s']} s, elapsed {report['elapsed_s']} s",
        f"- device: {json.dumps(report['device'])}",
        f"- stack: {json.dumps(report['versions'])}",
        f"- command: `{report['command']}`",
        "",
        "| # | check | status | seconds | reason |",
        "|---|---|---|---|---|",
    ]
    for i, c in enumerate(report["checks"], 1):
        reason = c["reason"].replace("|", "/").replace("\n", " ")
        lines.append(f"| {i} | `{c['name']}`: {c['title']} | {c['status']} | {c['seconds']} | {reason} |")
    lines += ["", "## Figures", ""]
    for c in report["checks"]:
        if c["figures"]:
            lines.append(f"### {c['name']}")
            lines += [f"- {k}: {json.dumps(v, default=str)}" for k, v in c["figures"].items()]
            lines.append("")
    counts = report["counts"]
    lines.append(f"passed {counts['passed']}, failed {counts['failed']}, skipped {counts['skipped']}")
    for name, text in (
        ("report.json", json.dumps(report, indent=2, default=str)),
        ("report.md", "\n".join(lines)),
    ):
        partial = out / f".{name}.partial"
        partial.write_text(text + "\n")
        partial.replace(out / name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python bench/gpu_acceptance.py", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--budget", type=float, default=DEFAULT_BUDGET_S, help="seconds for every check together"
    )
    parser.add_argument("--out", required=True, help="folder for report.json, report.md, logs/ and work/")
    parser.add_argument("--cpu", action="store_true", help="run as on a machine without CUDA (CUDA hidden)")
    parser.add_argument("--only", default="", help="comma-separated check names; the others are skipped")
    parser.add_argument("--cap", action="append", default=[], metavar="NAME=SECONDS", help="a check's limit")
    parser.add_argument(
        "--shared", default=str(SHARED), help="folder with configs/gpt-oss-20b and tokenizer/"
    )
    parser.add_argument("--slice-layers", type=int, default=1, help="layers of the 20b-shaped slice")
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense BF16 peak of the GPU, for MFU")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    out = Path(args.out).resolve()
    ctx = Context(
        out=out,
        work=out / "work",
        shared=Path(args.shared).resolve(),
        cuda=False,
        slice_layers=args.slice_layers,
        peak_flops=args.peak_tflops * 1e12 if args.peak_tflops else None,
    )
    if args.child:
        import torch

        ctx.cuda = torch.cuda.is_available()
        return child(args.child, ctx)

    t_start = time.perf_counter()
    names = {c.name for c in CHECKS}
    only = {n for n in args.only.split(",") if n}
    caps = {}
    for spec in args.cap:
        name, _, seconds = spec.partition("=")
        if name not in names or not seconds.replace(".", "", 1).isdigit():
            parser.error(f"--cap {spec}: expected NAME=SECONDS with NAME one of {sorted(names)}")
        caps[name] = float(seconds)
    if only - names:
        parser.error(f"--only: unknown checks {sorted(only - names)}; known: {sorted(names)}")
    for folder in (out, out / "checks", out / "logs", ctx.work):
        folder.mkdir(parents=True, exist_ok=True)

    versions = stack_versions()  # first: importing compat filters torch's start-up warning
    device = device_info(args.cpu)
    cuda = device["kind"] == "cuda"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    if not cuda:
        env["CUDA_VISIBLE_DEVICES"] = ""  # --cpu, or no GPU: every check sees none
    report = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "budget_s": args.budget,
        "device": device,
        "versions": versions,
        "checks": [],
    }
    say(f"GPU acceptance on {device['name']} ({device['kind']}), budget {args.budget:.0f} s -> {out}")
    say(f"{'#':>2} {'check':<18} {'status':<8} {'s':>6}  reason / figures")
    for i, check in enumerate(CHECKS, 1):
        left = args.budget - (time.perf_counter() - t_start) - RESERVE_S
        row = {"name": check.name, "title": check.title, "figures": {}, "seconds": 0.0}
        if check.device == "cuda" and not cuda:
            row.update(status="skipped", reason="no CUDA")
        elif check.device == "cpu" and cuda:
            row.update(status="skipped", reason="the CPU path (local spec): run with --cpu")
        elif only and check.name not in only:
            row.update(status="skipped", reason="not selected (--only)")
        elif left < min(check.min_s, caps.get(check.name, check.min_s)):
            row.update(
                status="skipped",
                reason=f"budget: {max(0, left):.0f} s left, the check needs >= {check.min_s} s",
            )
        else:
            row.update(run_one(check, ctx, min(caps.get(check.name, check.cap_s), left), env))
        report["checks"].append(row)
        status = row["status"]
        detail = row["reason"] or fmt_figures(row["figures"])
        say(f"{i:>2} {check.name:<18} {status:<8} {row['seconds']:>6.1f}  {detail}")
    counts = {
        k: sum(c["status"] == s for c in report["checks"])
        for k, s in (("passed", "pass"), ("failed", "fail"), ("skipped", "skipped"))
    }
    report.update(counts=counts, elapsed_s=round(time.perf_counter() - t_start, 1))
    write_report(out, report)
    say(f"report: {out / 'report.md'}")
    say(f"passed {counts['passed']}, failed {counts['failed']}, skipped {counts['skipped']}")
    return 0 if counts["failed"] == 0 and counts["passed"] > 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
