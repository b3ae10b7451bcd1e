"""A start-up guard: a run whose gradients megatron-core would combine wrongly across ranks (tensor-parallel peers,
or data-parallel peers holding different experts) stops before its first step, naming the parameters and the
setting that causes it (on every device).

With sequence parallelism each tensor-parallel (TP) rank runs the replicated modules (norms, router, biases) on
its own slice of the sequence, so each holds part of their gradient. megatron-core sums those parts over the TP
group for every parameter flagged ``sequence_parallel`` (or a qk-layernorm), and averages those flagged
``average_gradients_across_tp_domain``, in one coalesced all-reduce: the i-th such gradient of one rank is added
to the i-th of the others (distributed/finalize_model_grads.py:310-379, megatron-core 0.15.3). The experts'
gradients are reduced by DDP instead, over the data-parallel group (``allreduce=True``) or the
expert-data-parallel group (``allreduce=False``) (distributed/distributed_data_parallel.py:143, :313-322).

Four ways this goes wrong, each checked here from what every rank actually holds once the model (and any
adapter) is built:

1. The ranks of a TP group sum DIFFERENT logical parameters: a flagged parameter of one rank meets another
   parameter, or another expert, at the same position on a peer. Megatron-core's own RowParallelLinear flags
   an expert's ``linear_fc2.bias`` (tensor_parallel/layers.py:1208) although the expert's output is never
   reduce-scattered; with EP = TP the peers hold different experts. (`compat.cpu` clears that flag for the
   local, TE-free experts; Transformer Engine's grouped and per-expert linears never set it for experts, since
   megatron-core hands them a group of one: extensions/transformer_engine.py:1142-1157, and TE's
   ``GroupedLinear`` flags a bias only when its own TP size is above one.)
2. A flagged parameter is summed over the TP group AND reduced by DDP over a group that holds one of those TP
   peers: its gradient is counted twice.
3. An expert's gradient never meets the tokens of a TP peer: the token dispatcher gathers tokens only over the
   expert-tensor-and-expert-parallel group (transformer/moe/token_dispatcher.py:250-260, ``tp_ep``), so a TP
   peer outside it routes its own slice of the sequence to its own copy of the expert; unless DDP reduces the
   expert over a group holding that copy, the replicas train on different halves of the batch and drift
   apart. This is TP > 1 with expert parallel 1 and expert tensor parallel 1: the experts are then not
   "expert-parallel" to megatron-core (``allreduce=True``), so DDP reduces them over the data-parallel group,
   which never holds a TP peer.
4. DDP averages DIFFERENT logical parameters: it reduces each group's gradients as one flat buffer, position by
   position, so every rank of that group must hold the same parameters in the same order. An expert parameter
   without megatron-core's ``allreduce=False`` lands in the data-parallel buffer, whose ranks hold other
   experts under expert parallelism: NeMo's adapters on the experts (`compat.upstream` marks them).

Examples:
    python -c "from compat.grad_sync import logical_name as f; print(f('decoder.layers.0.mlp.experts.local_experts.1.linear_fc2.bias', 2, 2))"
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# SequentialMLP: ``experts.local_experts.<i>.``; TEGroupedMLP: ``experts.linear_fc1.weight<i>`` / ``bias<i>``.
_SEQUENTIAL = re.compile(r"(\.experts\.local_experts\.)(\d+)(\.)")
_GROUPED = re.compile(r"(\.experts\.linear_fc[12]\.(?:weight|bias))(\d+)$")
# GroupedMLP (legacy grouped GEMM): one tensor holds every local expert.
_STACKED = re.compile(r"\.experts\.weight[12]$")

# The fix of each rule, printed once under the problems it found.
FIX_FLAG = (
    "a parameter that is not the same on every rank of the tensor-parallel group must not carry the "
    "sequence_parallel flag (compat.cpu clears it on the local experts' linear_fc2.bias; is compat.cpu.enable() "
    "applied?)"
)
FIX_EXPERT_MARK = (
    "every parameter of an expert, adapters included, must carry allreduce=False so that DDP reduces it over "
    "the expert-data-parallel group (compat.upstream marks NeMo's expert adapters; is compat.upstream.apply() "
    "applied?), or use parallel.expert_model_parallel_size=1"
)
FIX_LAYOUT = (
    "use expert parallel equal to tensor parallel (parallel.expert_model_parallel_size="
    "<parallel.tensor_model_parallel_size>), or parallel.tensor_model_parallel_size=1"
)


class GradientSyncError(RuntimeError):
    """Gradients would be combined wrongly across ranks; the message names them and the fix."""


def logical_name(name: str, ep_rank: int, local_experts: int) -> str:
    """``name`` with a local expert's index replaced by its index in the whole model (``expert <n>``).

    Examples:
        python -c "from compat.grad_sync import logical_name as f; print(f('a.experts.linear_fc2.bias1', 1, 4))"
    """
    offset = ep_rank * local_experts
    name = re.sub(r"^(module\.)+", "", name)
    name = _SEQUENTIAL.sub(lambda m: f"{m[1]}<expert {offset + int(m[2])}>{m[3]}", name)
    name = _GROUPED.sub(lambda m: f"{m[1]}<expert {offset + int(m[2])}>", name)
    if _STACKED.search(name):
        name += f" <experts {offset}..{offset + local_experts - 1}>"
    return name


def is_expert(name: str) -> bool:
    return ".experts." in name


@dataclass
class Entry:
    """One trainable parameter of one rank, as the gradient reductions see it."""

    key: str  # `logical_name`, plus the tensor-parallel shard where it is one
    shape: tuple[int, ...]
    tp_op: str | None  # "summed" / "averaged" over the TP group (finalize_model_grads), or None
    ddp_group: tuple[int, ...]  # the ranks DDP reduces its gradient over


@dataclass
class RankReport:
    """What one rank holds: its groups (global ranks) and its trainable parameters in model order."""

    rank: int
    tp_group: tuple[int, ...]
    tp_ep_group: tuple[int, ...]  # the token dispatcher's group
    entries: list[Entry] = field(default_factory=list)


def tp_reduction(name: str, param, sequence_parallel: bool, qk_layernorm: bool) -> str | None:
    """How finalize_model_grads combines ``param`` over the TP group (finalize_model_grads.py:333-350)."""
    if getattr(param, "average_gradients_across_tp_domain", False):
        return "averaged"
    if (sequence_parallel and getattr(param, "sequence_parallel", False)) or (
        qk_layernorm and ("q_layernorm" in name or "k_layernorm" in name)
    ):
        return "summed"
    return None


def problems(reports: list[RankReport]) -> list[tuple[str, str]]:
    """Every wrong combination of gradients found in the reports of all ranks (rules 1-3 of the module), each
    with its fix."""
    by_rank = {r.rank: r for r in reports}
    out: list[tuple[str, str]] = []
    seen: set[tuple[int, ...]] = set()
    for report in reports:
        group = report.tp_group
        if len(group) < 2 or group in seen:
            continue
        seen.add(group)
        summed = {rank: [e for e in by_rank[rank].entries if e.tp_op] for rank in group}
        first = summed[group[0]]
        for rank in group[1:]:
            other = summed[rank]
            if len(other) != len(first):
                out.append(
                    (
                        f"ranks {group[0]} and {rank} of tensor-parallel group {list(group)} all-reduce "
                        f"{len(first)} and {len(other)} gradients: they hold different parameters",
                        FIX_FLAG,
                    )
                )
            for a, b in zip(first, other, strict=False):
                if (a.key, a.shape) != (b.key, b.shape):
                    out.append(
                        (
                            f"{a.key} (rank {group[0]}) is {a.tp_op} with {b.key} (rank {rank}) over "
                            f"tensor-parallel group {list(group)}: different parameters",
                            FIX_FLAG,
                        )
                    )
        for rank in group:
            for e in summed[rank]:
                twice = sorted(set(e.ddp_group) & set(group) - {rank})
                if twice:
                    out.append(
                        (
                            f"{e.key} (rank {rank}) is {e.tp_op} over tensor-parallel group {list(group)} "
                            f"and also reduced by DDP over ranks {list(e.ddp_group)}, which hold its TP "
                            f"peer(s) {twice}: its gradient is counted twice",
                            FIX_FLAG,
                        )
                    )
    out += _unmet_tokens(reports, by_rank)
    out += _different_parameters_averaged(reports)
    return out


def _different_parameters_averaged(reports: list[RankReport]) -> list[tuple[str, str]]:
    """Rule 4: the ranks of each DDP group reduce the same parameters, in the same order (the first difference
    of each pair of ranks is named)."""
    by_group: dict[tuple[int, ...], dict[int, list[Entry]]] = {}
    for report in reports:
        for e in report.entries:
            if len(e.ddp_group) > 1:
                by_group.setdefault(e.ddp_group, {}).setdefault(report.rank, []).append(e)
    out = []
    for group, held in by_group.items():
        first_rank, *others = sorted(held)
        for rank in others:
            a_list, b_list = held[first_rank], held[rank]
            pairs = list(zip(a_list, b_list, strict=False))
            diff = next(((a, b) for a, b in pairs if (a.key, a.shape) != (b.key, b.shape)), None)
            if diff is not None:
                a, b = diff
                line = (
                    f"DDP averages {a.key} (rank {first_rank}) with {b.key} (rank {rank}) over data-parallel "
                    f"group {list(group)}: different parameters"
                )
            elif len(a_list) != len(b_list):
                line = (
                    f"ranks {first_rank} and {rank} of data-parallel group {list(group)} reduce {len(a_list)} "
                    f"and {len(b_list)} gradients: they hold different parameters"
                )
            else:
                continue
            out.append((line, FIX_EXPERT_MARK))
    return out


def _unmet_tokens(reports: list[RankReport], by_rank: dict[int, RankReport]) -> list[tuple[str, str]]:
    """Rule 3: for an expert on rank r, the tokens of each TP peer p are run by the rank of p's dispatcher group
    that holds the same expert; that rank must be r or one DDP reduces r's gradient with."""
    holders = {r.rank: {e.key for e in r.entries if is_expert(e.key)} for r in reports}
    out = []
    for report in reports:
        for e in report.entries:
            if not is_expert(e.key) or e.tp_op:
                continue
            for peer in report.tp_group:
                if peer == report.rank:
                    continue
                runs = [q for q in by_rank[peer].tp_ep_group if e.key in holders[q]]
                if runs and not any(q == report.rank or q in e.ddp_group for q in runs):
                    out.append(
                        (
                            f"{e.key} (rank {report.rank}) never gets the gradient of the tokens of "
                            f"tensor-parallel peer {peer}, which runs them on its own copy (rank {runs[0]}): "
                            "the copies drift apart",
                            FIX_LAYOUT,
                        )
                    )
                    break
    return out


def report(model, config) -> RankReport:
    """This rank's `RankReport` for a built megatron model (or the NeMo module wrapping it) and its config."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    def ranks(group) -> tuple[int, ...]:
        return tuple(dist.get_process_group_ranks(group))

    tp_rank, etp_rank = ps.get_tensor_model_parallel_rank(), ps.get_expert_tensor_parallel_rank()
    tp_size, etp_size = ps.get_tensor_model_parallel_world_size(), ps.get_expert_tensor_parallel_world_size()
    ep_rank, ep_size = ps.get_expert_model_parallel_rank(), ps.get_expert_model_parallel_world_size()
    local_experts = (config.num_moe_experts or 0) // ep_size
    dense, experts = (
        ranks(ps.get_data_parallel_group(with_context_parallel=True)),
        ranks(ps.get_expert_data_parallel_group()),
    )
    out = RankReport(
        rank=dist.get_rank(),
        tp_group=ranks(ps.get_tensor_model_parallel_group()),
        tp_ep_group=ranks(ps.get_expert_tensor_and_model_parallel_group()),
    )
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        key = logical_name(name, ep_rank, local_experts)
        shard, size = (etp_rank, etp_size) if is_expert(name) else (tp_rank, tp_size)
        if getattr(param, "tensor_model_parallel", False) and size > 1:
            key += f" [tensor-parallel shard {shard} of {size}]"
        out.entries.append(
            Entry(
                key=key,
                shape=tuple(param.shape),
                tp_op=tp_reduction(name, param, config.sequence_parallel, config.qk_layernorm),
                ddp_group=dense if getattr(param, "allreduce", True) else experts,
            )
        )
    return out


def check(model, config) -> None:
    """Gather every rank's `report` and raise `GradientSyncError` on every rank if any rule is broken.

    Every rank sees the reports of all ranks and reaches the same verdict, so all stop together (a rank that
    went on alone would wait for its peers in the first collective). Nothing to do without tensor or expert
    parallelism.

    Examples:
        python -m recipes.finetune parallel.tensor_model_parallel_size=2 ...   # runs it before the first step
    """
    import torch.distributed as dist

    if (
        not dist.is_initialized()
        or max(config.tensor_model_parallel_size, config.expert_model_parallel_size) < 2
    ):
        return
    mine = report(model, config)
    reports: list[RankReport | None] = [None] * dist.get_world_size()
    dist.all_gather_object(reports, mine)
    found = problems(reports)
    if found:
        lines = [line for line, _ in found]
        shown = lines[:6] + ([f"... and {len(lines) - 6} more"] if len(lines) > 6 else [])
        fixes = list(dict.fromkeys(fix for _, fix in found))
        raise GradientSyncError(
            f"tensor parallel {config.tensor_model_parallel_size} x expert parallel "
            f"{config.expert_model_parallel_size} x expert tensor parallel "
            f"{config.expert_tensor_parallel_size} (sequence parallel {config.sequence_parallel}) would combine "
            "gradients wrongly across ranks; stopped before the first step:\n  - "
            + "\n  - ".join(shown)
            + "\nFix: "
            + "; ".join(fixes)
            + "."
        )


def callback():
    """A Lightning callback that runs `check` on the first training batch, once adapters are in place."""
    from lightning.pytorch import Callback

    class _Guard(Callback):
        done = False

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if not self.done:
                self.done = True
                check(pl_module, pl_module.config)

    return _Guard()
