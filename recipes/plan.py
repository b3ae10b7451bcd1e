"""Memory plan of a fine-tuning run: does it fit the cluster, and if not, what is the nearest plan that does?

Runs before anything heavy (no NeMo import, no weights): it reads the model's Hugging Face ``config.json``
(or the tiny model's shape) into `convert.gpt_oss.ModelShape`, takes the parameters of each part (attention /
experts / router / embeddings) from the converters' weight map (`convert.gpt_oss.WEIGHT_MAP`), shards
them as megatron-core does, and adds gradients, optimizer states, LoRA adapters, activations and the host
memory needed while loading. An infeasible plan is refused with the numbers and the nearest feasible one::

    python -m recipes.plan                                        # the tiny default on this machine
    python -m recipes.plan experiment=spark_20b_lora              # a shipped preset
    python -m recipes.plan model=gpt_oss_120b peft=lora cluster=spark_pair parallel.expert_model_parallel_size=2
    python -m recipes.plan experiment=spark_pair_120b_lora_fp8 precision=bf16   # refused, with a fix

Units are decimal: 1 GB = 1e9 bytes, as the device profiles are quoted (H100 80 GB, Spark ~121 GB).
"""

from __future__ import annotations

import itertools
import math
import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

import recipes.schema  # noqa: F401  (registers finetune_schema)
from convert.gpt_oss import LORA_TARGETS, ModelShape

GB = 1e9


def compose(overrides: list[str] | None = None) -> DictConfig:
    """Compose ``conf/plan.yaml`` (``conf/finetune.yaml`` plus an optional ``experiment``) outside Hydra's main.

    Examples:
        python -c "from recipes.plan import compose; print(compose(['experiment=spark_20b_lora']).cluster)"
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    conf_dir = Path(__file__).resolve().parent.parent / "conf"
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        return hydra_compose(config_name="plan", overrides=overrides or [])


# -------------------------------------------------------------------------------------------- profiles


@dataclass(frozen=True)
class DeviceProfile:
    """Memory of one device and of the host it sits in."""

    name: str
    device_bytes: float  # what one accelerator (or the whole machine, on CPU) can hold
    host_bytes_per_node: float  # host memory of one node; the same pool as the device when unified
    unified: bool  # host and device share one pool (DGX Spark, CPU)
    reserve_bytes: (
        float  # CUDA context, NCCL buffers, cuBLAS workspace, allocator slack (assumed, not measured)
    )
    train_dtype_bytes: int  # 2: bf16 mixed precision; 4: fp32 (CPU runs)
    distributed_optimizer: bool  # optimizer states sharded over data-parallel ranks (NeMo's GPU default)
    # Host memory of one training process before its model is built: Python, torch, NeMo, the tokenizer and the
    # data. On unified memory it comes out of the same pool as the weights.
    runtime_bytes: float


# The resident memory of `recipes.finetune` just before it builds the model, measured on CPU at 1.04 GB with a
# 20b-shaped slice and the real tokenizer (bench/bench_plan_memory.py); rounded up.
RUNTIME = 1.1 * GB

PROFILES = {
    # GB10: ~121 GB of the 128 GB LPDDR5x is usable by the GPU, shared with the CPU and the OS.
    "spark": DeviceProfile("spark", 121 * GB, 121 * GB, True, 3 * GB, 2, True, RUNTIME),
    # DGX H100 / H200 nodes: 8 GPUs and 2 TB of host memory.
    "h100": DeviceProfile("h100", 80 * GB, 2000 * GB, False, 3 * GB, 2, True, RUNTIME),
    "h200": DeviceProfile("h200", 141 * GB, 2000 * GB, False, 3 * GB, 2, True, RUNTIME),
}


def cpu_profile() -> DeviceProfile:
    """This machine's memory as one unified pool; training runs in fp32 (see compat.cpu)."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return DeviceProfile("cpu", total, total, True, 0.0, 4, False, RUNTIME)


def resolve_profile(name: str) -> DeviceProfile:
    """A profile by name; ``auto`` is the local GPU (its reported memory) or, without CUDA, the CPU."""
    if name in PROFILES:
        return PROFILES[name]
    if name == "cpu":
        return cpu_profile()
    if name == "auto":
        import torch

        if not torch.cuda.is_available():
            return cpu_profile()
        total = torch.cuda.get_device_properties(0).total_memory
        host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return DeviceProfile(torch.cuda.get_device_name(0), total, host, False, 3 * GB, 2, True, RUNTIME)
    raise PlanError(f"cluster.device={name!r} is unknown; use one of auto, cpu, {', '.join(PROFILES)}")


# ------------------------------------------------------------------------------------------ the model


class PlanError(ValueError):
    """A plan that cannot run, or cannot be computed; the message names the fix."""


def model_shape(cfg: DictConfig) -> ModelShape:
    """The shape of ``cfg.model``: the checkpoint's config.json, or the tiny model's shape when not built yet."""
    folder = Path(cfg.model.hf_path)
    if (folder / "config.json").exists() or (folder / "original_config.json").exists():
        return ModelShape.from_hf(folder)
    if cfg.model.tiny is not None:
        return ModelShape.from_hf(tiny_hf_config(OmegaConf.to_container(cfg.model.tiny, resolve=True)))
    raise PlanError(
        f"model.hf_path={cfg.model.hf_path} has no config.json to plan with: download the checkpoint there "
        "(huggingface-cli download openai/gpt-oss-20b --local-dir <dir>) and pass model.hf_path=<dir>"
    )


def tiny_hf_config(shape: dict) -> dict:
    """The tiny model's HF config; its vocabulary is ``tokenizer_vocab`` rounded up as `convert.tiny` pads it."""
    import torch

    from convert.tiny import VOCAB_MULTIPLE, hf_config

    vocab = math.ceil(shape["tokenizer_vocab"] / VOCAB_MULTIPLE) * VOCAB_MULTIPLE
    return hf_config(shape, vocab, torch.float32).to_dict()


# ------------------------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Plan:
    """Everything memory depends on, in the units megatron-core uses."""

    shape: ModelShape
    profile: DeviceProfile
    peft: str = "lora"  # lora | none
    lora_targets: tuple[str, ...] = ("linear_qkv", "linear_proj")
    lora_dim: int = 8
    num_nodes: int = 1
    devices_per_node: int = 1
    tp: int = 1
    pp: int = 1
    ep: int = 1
    etp: int = 1
    sequence_parallel: bool = False
    micro_batch: int = 1
    global_batch: int = 8
    seq_length: int = 2048
    base_weights: str = "model"  # model | fp8
    recompute: str = "none"  # none | full
    link_gbs: float | None = None  # the inter-node link's measured bus bandwidth, GB/s; None: nominal

    @property
    def world(self) -> int:
        return self.num_nodes * self.devices_per_node

    @property
    def dp(self) -> int:
        return max(1, self.world // (self.tp * self.pp))

    @property
    def expert_dp(self) -> int:
        return max(1, self.world // (self.ep * self.etp * self.pp))

    @property
    def layers_per_stage(self) -> int:
        return math.ceil(self.shape.layers / self.pp)


@dataclass
class Estimate:
    """Bytes per device, per component, with the parameter counts behind them."""

    params_per_device: int
    trainable_per_device: int
    weights: float
    gradients: float
    optimizer: float
    lora: float
    activations: float
    reserve: float
    runtime: (
        float  # the process itself (`DeviceProfile.runtime_bytes`): in device_total on unified memory only
    )
    staging: float  # the largest tensor the restore reads at once, in the checkpoint's dtype
    host_load: float  # host memory of one node while the weights load
    unified: bool = False
    rows: list[tuple[str, float, str]] = field(default_factory=list)

    @property
    def device_total(self) -> float:
        """Bytes per device while training (on unified memory, the process's own memory included)."""
        total = self.weights + self.gradients + self.optimizer + self.lora + self.activations + self.reserve
        return total + (self.runtime if self.unified else 0)

    @property
    def loading(self) -> float:
        """Bytes at the end of the restore on unified memory: the weights in place, the last tensor staged beside
        them (with a separate host the staging is host memory, counted in ``host_load`` instead)."""
        return self.weights + self.reserve + self.staging + (self.runtime if self.unified else 0)

    @property
    def peak(self) -> float:
        """The device's high-water mark: training or the restore's last moment, whichever is higher."""
        return max(self.device_total, self.loading if self.unified else 0)


def parameters_per_device(plan: Plan) -> dict[str, int]:
    """Parameters one device holds, by kind, on the most loaded pipeline stage.

    Tensor parallel splits attention and the vocabulary; expert parallel (times expert tensor parallel)
    splits the experts; pipeline parallel splits the layers, the first stage keeping the input embedding
    and the last the output layer (one of them is counted: they are the same size). Norms and the router
    are replicated.
    """
    s, n = plan.shape, plan.layers_per_stage
    layer, outer = s.layer_parameters(), s.outer_parameters()
    experts_sharded = plan.ep * plan.etp
    embeddings = outer["embedding"] + (outer.get("output layer", 0) if plan.pp == 1 else 0)
    return {
        "attention matrices": n * layer["attention matrices"] // plan.tp,
        "attention biases, sinks": n * layer["attention biases, sinks"] // plan.tp,
        "expert matrices": n * layer["expert matrices"] // experts_sharded,
        "expert biases": n * layer["expert biases"] // experts_sharded,
        "router, norms": n * layer["router, norms"] + outer["final norm"],
        "embeddings": embeddings // plan.tp,
    }


def lora_parameters_per_device(plan: Plan) -> int:
    """LoRA adapter parameters on one device: A [r, in] and B [out, r] per targeted linear layer.

    Expert adapters are per local expert. Adapters are counted unsharded by tensor parallel (an upper bound:
    NeMo splits one of the two matrices).
    """
    if plan.peft != "lora":
        return 0
    s, r = plan.shape, plan.lora_dim
    per_layer = {
        "linear_qkv": r * (s.hidden + s.q + 2 * s.kv),
        "linear_proj": r * (s.q + s.hidden),
        "linear_fc1": (s.experts // plan.ep) * r * (s.hidden + 2 * s.inter),
        "linear_fc2": (s.experts // plan.ep) * r * (s.inter + s.hidden),
    }
    # An unknown target counts nothing here; `layout_problems` refuses it with the fix.
    return plan.layers_per_stage * sum(per_layer.get(t, 0) for t in plan.lora_targets)


def activation_bytes_per_token_layer(plan: Plan) -> float:
    """Bytes of activations one token leaves behind in one transformer layer for the backward pass.

    After Korthikanti et al., "Reducing Activation Recomputation in Large Transformer Models" (2022,
    arXiv:2205.05198, section 4.1), which counts ``s*b*h*(34 + 5*a*s/h)`` bytes per layer for a GPT layer in
    16-bit; adapted to gpt-oss with flash attention (no ``a*s*s`` score terms, only the fp32 log-sum-exp per
    head), no dropout, and a top-k MoE in place of the MLP. With ``a`` bytes per activation element::

        norms      2h                     (the inputs of the two RMSNorms)
        attention  h + (q + 2kv) + q      (the qkv input, q/k/v after RoPE, the output projection's input)
        router     h                      (its input)
        experts    k * (2h + 3i)          (per routed copy: fc1 input h, fc1 output 2i, activation i, fc2 output h)
        fp32       4 * (heads + 2E)       (softmax statistics per head; router logits and probabilities)

    Tensor parallel with sequence parallelism divides all of it by TP (as in the paper). It is an upper
    bound for LoRA, where frozen linear layers do not need their inputs kept.
    """
    s, a = plan.shape, plan.profile.train_dtype_bytes
    elements = 2 * s.hidden + (s.hidden + s.q + 2 * s.kv + s.q) + s.hidden
    elements += s.top_k * (2 * s.hidden + 3 * s.inter)
    return (a * elements + 4 * (s.heads + 2 * s.experts)) / plan.tp


def activations(plan: Plan) -> float:
    """Activation bytes on the most loaded device.

    Without recompute every layer of the stage keeps `activation_bytes_per_token_layer`; with full recompute a
    layer keeps only its input (``a*h`` per token) and one layer at a time is rebuilt in backward (the paper's
    ``2sbh`` per layer plus one layer's working set). With pipeline parallelism the 1F1B schedule keeps up to
    PP micro-batches in flight on the first stage. The logits add ``tokens * vocab / TP * (a + 4)``: the
    logits and the fp32 softmax kept by the vocab-parallel cross entropy.
    """
    s, a = plan.shape, plan.profile.train_dtype_bytes
    tokens = plan.micro_batch * plan.seq_length
    per_layer = tokens * activation_bytes_per_token_layer(plan)
    n = plan.layers_per_stage
    if plan.recompute == "full":
        stage = n * tokens * a * s.hidden / plan.tp + per_layer
    else:
        stage = n * per_layer
    in_flight = min(plan.pp, max(1, plan.global_batch // (plan.micro_batch * plan.dp)))
    logits = tokens * s.vocab / plan.tp * (a + 4)
    return stage * in_flight + logits


def largest_stored_tensor(shape: ModelShape) -> int:
    """Elements of the largest tensor of an imported checkpoint: the restore reads one stored tensor at a time,
    whole (torch.distributed.checkpoint, filesystem.py ``read_data``: ``torch.load`` of the item, then the rank's
    slice copied into its parameter), so this is what it stages beside the weights, whatever the layout. The
    import stores each expert apart, so the largest is the vocabulary's embedding or output layer.
    """
    s = shape
    return max(s.vocab * s.hidden, s.hidden * (s.q + 2 * s.kv), 2 * s.inter * s.hidden)


def estimate(plan: Plan) -> Estimate:
    """Per-device memory of a plan (see the module docstring for the sources of each term).

    Per parameter, with mixed precision (bf16) and Adam, as megatron-core's distributed optimizer
    documents (docs/source/api-guide/dist_optimizer.md: 18 bytes per parameter, 6 + 12/d when distributed):
    weights 2 bytes, gradients 4 (the fp32 main-grad buffer), optimizer 12 (fp32 master, m and v) divided
    by the data-parallel size when the optimizer is distributed. Only trainable parameters have gradients
    and optimizer states. In fp32 (CPU) weights and gradients are 4 bytes and Adam adds 8 (m and v, no
    master copy). Frozen FP8 base weights store attention and expert matrices in 1 byte (per-tensor scale),
    except the first and last layer's, which stay BF16.

    Examples:
        python -m recipes.plan experiment=spark_pair_120b_lora_fp8
    """
    s, prof = plan.shape, plan.profile
    a = prof.train_dtype_bytes
    params = parameters_per_device(plan)
    total = sum(params.values())
    matrices = params["attention matrices"] + params["expert matrices"]
    if plan.base_weights == "fp8":
        # NeMo's current-scaling FP8 recipe keeps the first and last transformer layers in BF16
        # (first_last_layers_bf16); counted for every FP8 recipe, an upper bound for the others.
        bf16_layers = min(plan.layers_per_stage, 2 if plan.pp == 1 else 1)
        fp8_matrices = matrices * (1 - bf16_layers / plan.layers_per_stage)
        weights = fp8_matrices + (total - fp8_matrices) * a
    else:
        fp8_matrices = 0
        weights = total * a

    experts = params["expert matrices"] + params["expert biases"]
    master = 4 if a < 4 else 0
    opt_per_param = 8 + master
    shard = prof.distributed_optimizer
    if plan.peft == "none":
        trainable = total
        gradients = 4 * total
        dense_opt = (total - experts) * opt_per_param / (plan.dp if shard else 1)
        expert_opt = experts * opt_per_param / (plan.expert_dp if shard else 1)
        optimizer = dense_opt + expert_opt
        lora_bytes = 0.0
    else:
        trainable = lora_parameters_per_device(plan)
        gradients = optimizer = 0.0
        lora_bytes = trainable * (a + 4 + opt_per_param / (plan.dp if shard else 1))

    act = activations(plan)
    staging = largest_stored_tensor(s) * s.dtype_bytes
    host_load = plan.devices_per_node * (
        prof.runtime_bytes + staging + (weights + prof.reserve_bytes if prof.unified else 0)
    )

    rows = [
        (
            "weights",
            weights,
            f"{_count(total)} params/device"
            + (f", {_count(fp8_matrices)} of them in fp8" if plan.base_weights == "fp8" else f" x {a} B"),
        ),
        (
            "gradients",
            gradients,
            "frozen base" if plan.peft == "lora" else f"{_count(trainable)} trainable x 4 B (fp32)",
        ),
        (
            "optimizer",
            optimizer,
            "frozen base"
            if plan.peft == "lora"
            else f"Adam {opt_per_param} B/param"
            + (f", sharded over DP {plan.dp} / expert DP {plan.expert_dp}" if shard else ""),
        ),
        (
            "LoRA adapters",
            lora_bytes,
            f"{_count(trainable)} params x (weight + grad + Adam)" if plan.peft == "lora" else "none",
        ),
        (
            "activations",
            act,
            f"mbs {plan.micro_batch} x seq {plan.seq_length}, {plan.layers_per_stage} layers, "
            f"recompute {plan.recompute}",
        ),
        ("reserve", prof.reserve_bytes, "CUDA context, NCCL, workspace (assumed)"),
    ]
    if prof.unified:
        rows.append(("process", prof.runtime_bytes, "Python, torch, NeMo, tokenizer, data (measured on CPU)"))
    return Estimate(
        params_per_device=total,
        trainable_per_device=trainable,
        weights=weights,
        gradients=gradients,
        optimizer=optimizer,
        lora=lora_bytes,
        activations=act,
        reserve=prof.reserve_bytes,
        runtime=prof.runtime_bytes,
        staging=staging,
        host_load=host_load,
        unified=prof.unified,
        rows=rows,
    )


def layout_problems(
    *,
    experts: int | None,
    world: int,
    tp: int,
    pp: int,
    ep: int,
    etp: int,
    peft: str,
    lora_targets,
    base_weights: str,
    sequence_parallel: bool = True,
) -> list[str]:
    """The rules a run's layout must follow, each stated here once; empty when it follows them all.

    The planner (`problems`) and the recipe (`recipes.finetune.validate`, through `config_problems`) both
    report these; ``experts`` is None when the model's shape is not known yet (that rule is then skipped).

    Examples:
        python -c "from recipes.plan import layout_problems as f; print(f(experts=32, world=1, tp=1, pp=1, ep=3, etp=1, peft='lora', lora_targets=[], base_weights='model'))"
    """
    out = []
    if tp > 1 and not sequence_parallel:
        # megatron-core asserts it for MoE layers with TP > 1 (transformer/moe/moe_layer.py:265).
        out.append(
            f"tensor_model_parallel_size={tp} with MoE needs sequence parallelism: "
            "parallel.sequence_parallel=true (or parallel=tp2 / tp2_ep2)"
        )
    experts_train = peft == "none" or (peft == "lora" and {"linear_fc1", "linear_fc2"} & set(lora_targets))
    if tp > 1 and ep == 1 and etp < tp and experts_train:
        # compat.grad_sync explains it and stops such a run at its first step on any device.
        out.append(
            f"tensor_model_parallel_size={tp} with expert_model_parallel_size=1 trains a copy of the experts "
            "on each TP rank's slice of the sequence and never sums their gradients (the copies drift apart): "
            f"use parallel.expert_model_parallel_size={tp} (parallel=tp2_ep2), or train attention only (peft=lora)"
        )
    if tp > 1 and etp < tp and peft == "lora" and {"linear_fc1", "linear_fc2"} & set(lora_targets):
        # NeMo 2.7.3 builds every adapter, the experts' included, with the layer's config (peft/lora.py:757),
        # so an expert's adapter gathers and splits over the TP group (peft/utils.py ParallelLinearAdapter)
        # although each TP rank routes a different number of tokens to that expert: the collective sizes differ
        # (gloo aborts: "Received data size doesn't match expected size"; measured with TP 2 x EP 2).
        out.append(
            f"LoRA on the experts (peft.target_modules with linear_fc1/linear_fc2) with "
            f"tensor_model_parallel_size={tp} and expert_tensor_parallel_size={etp}: NeMo's expert adapters "
            "communicate over the tensor-parallel group, whose ranks route different tokens to each expert; "
            "use parallel.tensor_model_parallel_size=1 (parallel=ep2), or attention-only LoRA (peft=lora)"
        )
    if base_weights == "fp8" and peft != "lora":
        out.append(
            "precision=fp8_base freezes the base weights in FP8: it needs peft=lora (or precision=bf16)"
        )
    if experts and experts % ep:
        divisors = [k for k in range(1, experts + 1) if experts % k == 0 and k <= world]
        out.append(
            f"expert_model_parallel_size={ep} does not divide {experts} experts; use one of "
            f"{', '.join(map(str, divisors))} (parallel.expert_model_parallel_size=...)"
        )
    if world % (tp * pp) or world % (ep * etp * pp):
        out.append(
            f"TP {tp} x PP {pp} and EP {ep} x ETP {etp} x PP {pp} must divide the "
            f"{world} devices (cluster.num_nodes x cluster.devices_per_node)"
        )
    unknown = sorted(set(lora_targets) - set(LORA_TARGETS))
    if peft == "lora" and unknown:
        out.append(
            f"peft.target_modules {unknown} match no gpt-oss module; use some of {list(LORA_TARGETS)} "
            "(peft=lora: attention, peft=lora_experts: attention and experts)"
        )
    return out


def config_problems(cfg: DictConfig) -> list[str]:
    """`layout_problems` of a composed config, before its model is planned (or even downloaded)."""
    c, p = cfg.cluster, cfg.parallel
    try:
        experts = model_shape(cfg).experts
    except PlanError:  # no config.json: the recipe reports that itself, with the download command
        experts = None
    return layout_problems(
        experts=experts,
        world=c.num_nodes * c.devices_per_node,
        tp=p.tensor_model_parallel_size,
        pp=p.pipeline_model_parallel_size,
        ep=p.expert_model_parallel_size,
        etp=p.expert_tensor_parallel_size,
        peft=cfg.peft.name,
        lora_targets=cfg.peft.target_modules,
        base_weights=cfg.precision.base_weights if "precision" in cfg else "model",
        sequence_parallel=p.sequence_parallel,
    )


def plan_layout_problems(plan: Plan) -> list[str]:
    """`layout_problems` of a `Plan`."""
    return layout_problems(
        experts=plan.shape.experts,
        world=plan.world,
        tp=plan.tp,
        pp=plan.pp,
        ep=plan.ep,
        etp=plan.etp,
        peft=plan.peft,
        lora_targets=plan.lora_targets,
        base_weights=plan.base_weights,
        sequence_parallel=plan.sequence_parallel,
    )


def problems(plan: Plan, est: Estimate | None = None) -> list[str]:
    """Why a plan cannot run: the layout rules (`layout_problems`) first, then memory; empty when it fits."""
    out = plan_layout_problems(plan)
    if out:
        return out
    est = est or estimate(plan)
    cap = plan.profile.device_bytes
    per_node_train = est.device_total * (plan.devices_per_node if plan.profile.unified else 1)
    if per_node_train > cap:
        where = "node (unified memory)" if plan.profile.unified else "device"
        out.append(
            f"training needs {per_node_train / GB:.1f} GB per {where}; {plan.profile.name} has {cap / GB:.1f} GB"
        )
    host_cap = plan.profile.host_bytes_per_node
    if est.host_load > host_cap:
        out.append(
            f"loading needs {est.host_load / GB:.1f} GB of host memory per node (the weights restored one tensor "
            f"at a time, {est.staging / GB:.1f} GB staged); {plan.profile.name} has {host_cap / GB:.1f} GB"
        )
    return out


def feasible(plan: Plan) -> bool:
    return not problems(plan)


def _moves(plan: Plan) -> list[tuple[str, dict]]:
    """Single changes towards less memory, nearest first, as (override, Plan fields)."""
    moves = []
    if plan.recompute != "full":
        moves.append(("plan.recompute=full", {"recompute": "full"}))
    if plan.micro_batch > 1:
        mbs = plan.micro_batch // 2
        moves.append((f"data.micro_batch_size={mbs}", {"micro_batch": mbs}))
    if plan.peft == "none":
        moves.append(("peft=lora", {"peft": "lora"}))
    if plan.peft == "lora" and plan.base_weights != "fp8":
        moves.append(("precision=fp8_base", {"base_weights": "fp8"}))
    room = plan.world // (plan.etp * plan.pp)
    for ep in range(plan.ep + 1, room + 1):
        if plan.shape.experts % ep == 0 and room % ep == 0:
            moves.append((f"parallel.expert_model_parallel_size={ep}", {"ep": ep}))
            break
    return moves


def suggest(plan: Plan, max_changes: int = 3) -> tuple[list[str], Plan] | None:
    """The nearest feasible plan: the fewest changes from `_moves`, earlier moves preferred."""
    for n in range(1, max_changes + 1):
        for combo in itertools.combinations(_moves(plan), n):
            fields = {}
            for _, f in combo:
                fields.update(f)
            candidate = replace(plan, **fields)
            if feasible(candidate):
                return [o for o, _ in combo], candidate
    return None


# ------------------------------------------------------------------------------------------ from config


def plan_from_cfg(cfg: DictConfig) -> Plan:
    """The `Plan` of a composed config (``recipes.plan.compose`` or ``recipes.finetune.compose``)."""
    c, p, d = cfg.cluster, cfg.parallel, cfg.data
    settings = cfg.get("plan") or {}
    return Plan(
        shape=model_shape(cfg),
        profile=resolve_profile(c.get("device", "auto")),
        peft=cfg.peft.name,
        lora_targets=tuple(cfg.peft.target_modules),
        lora_dim=cfg.peft.dim,
        num_nodes=c.num_nodes,
        devices_per_node=c.devices_per_node,
        tp=p.tensor_model_parallel_size,
        pp=p.pipeline_model_parallel_size,
        ep=p.expert_model_parallel_size,
        etp=p.expert_tensor_parallel_size,
        sequence_parallel=p.sequence_parallel,
        micro_batch=d.micro_batch_size,
        global_batch=d.global_batch_size,
        seq_length=d.seq_length,
        base_weights=cfg.precision.base_weights if "precision" in cfg else "model",
        recompute=settings.get("recompute", "none"),
        link_gbs=settings.get("link_gbs"),
    )


# ---------------------------------------------------------------------------------- the inter-node link

NOMINAL_LINK_GBS = 25.0  # the Spark pair's ConnectX-7: 200 Gb/s = 25 GB/s in each direction


@dataclass(frozen=True)
class Traffic:
    """Bytes one device sends over the inter-node link in one training step, for one kind of parallelism."""

    kind: str  # TP | EP | DP
    bytes: float
    detail: str


def link_traffic(plan: Plan) -> list[Traffic]:
    """What each device sends over the inter-node link per step, for each group that spans nodes.

    A group spans nodes when it holds more ranks than a node has devices (megatron-core puts the TP ranks, and
    the expert-tensor x expert-parallel ranks, next to each other); all of its traffic is then counted as
    crossing the link, which is exact when each node holds one device of the group (the Spark pair). With ``a``
    bytes per activation element (2 in bf16), ``T = mbs x seq`` tokens per micro-batch and ``m = gbs / (mbs x
    DP)`` micro-batches per device per step; a ring all-gather or reduce-scatter of a tensor of ``N`` bytes over
    ``t`` ranks sends ``N (t-1)/t`` from each rank, an all-reduce twice that:

    - TP (sequence parallel, after Korthikanti et al. 2022): each layer's attention all-gathers its input
      ``[T, h]`` and reduce-scatters its output, forward; backward does the reverse: 4 collectives of
      ``T h a`` bytes per layer, plus 4 for the embedding (reduce-scatter / all-gather) and the output layer
      (all-gather / reduce-scatter). The MoE layers add none here: they run on the sequence slice, and their
      tokens move through the dispatcher (EP).
    - EP (the all-to-all dispatcher, megatron-core's default on GPUs): each MoE layer sends every routed copy
      of its ``T / TP`` tokens (top-k copies per token) whose expert lives on another EP rank, ``(EP-1)/EP`` of
      them with balanced routing, as ``h a`` bytes, and receives the results back (combine); backward the
      same again: ``4 (T/TP) k (EP-1)/EP h a`` per layer.
    - DP: the gradients of the trainable parameters, all-reduced in the training dtype (DDP's default) over
      the data-parallel group (the experts over the expert-data-parallel group).

    Left out, each under 1% of the rows above for gpt-oss: the vocab-parallel cross entropy's per-token
    scalars, the routing probabilities, and the TP all-reduce of the sequence-parallel norms' gradients.

    Examples:
        python -m recipes.plan experiment=spark_pair_20b_lora parallel=tp2_ep2
    """
    s, a = plan.shape, plan.profile.train_dtype_bytes
    micro = plan.global_batch // (plan.micro_batch * plan.dp)
    tokens = plan.micro_batch * plan.seq_length
    n = plan.layers_per_stage
    rows = []
    if plan.tp > plan.devices_per_node:
        collectives = 4 * n + 4
        per = tokens * s.hidden * a * (plan.tp - 1) / plan.tp
        rows.append(
            Traffic(
                "TP",
                micro * collectives * per,
                f"{micro} micro-batches x {collectives} all-gathers/reduce-scatters of {tokens} x {s.hidden}"
                f" x {a} B, (TP-1)/TP sent",
            )
        )
    if plan.ep > 1 and plan.ep * plan.etp > plan.devices_per_node:
        copies = tokens / plan.tp * s.top_k * (plan.ep - 1) / plan.ep
        rows.append(
            Traffic(
                "EP",
                micro * n * 4 * copies * s.hidden * a,
                f"{micro} micro-batches x {n} layers x 4 all-to-alls of {copies:g} token copies x {s.hidden}"
                f" x {a} B",
            )
        )
    dense, experts = trainable_split(plan)
    if plan.world > plan.devices_per_node and (plan.dp > 1 or plan.expert_dp > 1):
        sent = 2 * a * (dense * (plan.dp - 1) / plan.dp + experts * (plan.expert_dp - 1) / plan.expert_dp)
        if sent:
            rows.append(
                Traffic(
                    "DP",
                    sent,
                    f"all-reduce of {_count(dense)} dense (DP {plan.dp}) + {_count(experts)} expert "
                    f"(expert DP {plan.expert_dp}) trainable gradients x {a} B",
                )
            )
    return rows


def trainable_split(plan: Plan) -> tuple[int, int]:
    """Trainable parameters on one device: (dense, expert), the groups DDP reduces them over differ."""
    if plan.peft == "none":
        params = parameters_per_device(plan)
        experts = params["expert matrices"] + params["expert biases"]
        return sum(params.values()) - experts, experts
    expert_targets = tuple(t for t in plan.lora_targets if t in ("linear_fc1", "linear_fc2"))
    experts = lora_parameters_per_device(replace(plan, lora_targets=expert_targets))
    return lora_parameters_per_device(plan) - experts, experts


def traffic_table(plan: Plan) -> str:
    """`link_traffic` as text, with the time each takes at the link's bandwidth (measured or nominal)."""
    gbs = plan.link_gbs or NOMINAL_LINK_GBS
    source = (
        "measured (plan.link_gbs)" if plan.link_gbs else "nominal 200 Gb/s; plan.link_gbs=<preflight GB/s>"
    )
    rows = link_traffic(plan)
    if not rows:
        return "link traffic per step: none (no group spans nodes)"
    lines = [f"link traffic per step and device, at {gbs:g} GB/s ({source}):"]
    lines.append(f"  {'kind':<6} {'GB/step':>10} {'s/step':>8}  detail")
    for r in rows:
        lines.append(f"  {r.kind:<6} {r.bytes / GB:>10.3f} {r.bytes / GB / gbs:>8.3f}  {r.detail}")
    total = sum(r.bytes for r in rows)
    lines.append(
        f"  {'total':<6} {total / GB:>10.3f} {total / GB / gbs:>8.3f}  (before overlap with compute)"
    )
    return "\n".join(lines)


def _count(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.3f}{unit}"
    return str(int(n))


def table(plan: Plan, est: Estimate) -> str:
    """The plan as a plain-text table (per device; loading per node)."""
    head = (
        f"memory plan: {_count(plan.shape.total())}-param gpt-oss, {plan.peft if plan.peft == 'lora' else 'full SFT'}"
        f" | {plan.num_nodes} node(s) x {plan.devices_per_node} {plan.profile.name}"
        f" | TP {plan.tp} PP {plan.pp} EP {plan.ep} ETP {plan.etp} DP {plan.dp}"
        f" | base weights {plan.base_weights}"
    )
    lines = [head, f"  {'component':<14} {'GB/device':>10}  detail"]
    for name, value, detail in est.rows:
        lines.append(f"  {name:<14} {value / GB:>10.3f}  {detail}")
    cap = plan.profile.device_bytes
    lines.append(f"  {'total':<14} {est.device_total / GB:>10.3f}  of {cap / GB:.1f} GB per device")
    lines.append(
        f"  {'host, loading':<14} {est.host_load / GB:>10.3f}  per node: the restore stages one tensor at a time "
        f"({est.staging / GB:.2f} GB)"
        + (" beside the weights (unified)" if plan.profile.unified else "")
        + f"; {plan.profile.host_bytes_per_node / GB:.1f} GB available"
    )
    return "\n".join(lines)


def check(cfg: DictConfig, out=None, rules: bool = True) -> Plan:
    """Print the plan of ``cfg``; raise `PlanError` with the numbers and the nearest feasible plan if it cannot fit.

    Args:
        cfg: A composed config (`compose`, ``recipes.finetune.compose``).
        out: Where the table goes; default stdout.
        rules: Also report broken `layout_problems`. False when the caller has reported them already
            (``recipes.finetune.validate`` through `config_problems`), so that each is reported once: a plan
            that breaks one is then printed but not judged, since its memory means nothing until it is fixed.

    Examples:
        python -m recipes.plan experiment=spark_pair_20b_lora
    """
    out = out or sys.stdout
    plan = plan_from_cfg(cfg)
    est = estimate(plan)
    print(table(plan, est), file=out)
    print(traffic_table(plan), file=out)
    if not rules and plan_layout_problems(plan):
        return plan
    found = problems(plan, est)
    if not found:
        print("  fits.", file=out)
        return plan
    message = "the plan does not fit:\n  - " + "\n  - ".join(found)
    nearest = suggest(plan)
    if nearest is not None:
        overrides, better = nearest
        message += (
            f"\nnearest feasible plan: {' '.join(overrides)}"
            f" ({estimate(better).device_total / GB:.1f} GB per device)"
        )
    else:
        message += "\nno plan within three changes fits: add nodes (cluster.num_nodes) or a larger device"
    raise PlanError(message)


@hydra.main(config_path="../conf", config_name="plan", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        check(cfg)
    except PlanError as e:
        raise SystemExit(str(e)) from None


if __name__ == "__main__":
    main()
