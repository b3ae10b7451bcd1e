"""The start-up guard (`compat.grad_sync`): on reports written by hand, and on the real tiny gpt-oss built by two
processes (gloo) in five layouts: three with tensor parallelism (one with the experts' bias flag planted back) and
two with NeMo's LoRA adapters on the experts under expert parallelism (one with their expert mark removed)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch.multiprocessing as mp

from compat.grad_sync import FIX_EXPERT_MARK, FIX_FLAG, FIX_LAYOUT, Entry, RankReport, logical_name, problems

BIAS = "decoder.layers.0.mlp.experts.local_experts.{}.linear_fc2.bias"
NORM = "decoder.layers.0.input_layernorm.weight"


def test_local_expert_names_become_the_model_s_expert_numbers():
    # 4 experts over EP 2: rank 1 holds experts 2 and 3 as its local 0 and 1.
    assert logical_name("module." + BIAS.format(1), ep_rank=1, local_experts=2) == (
        "decoder.layers.0.mlp.experts.local_experts.<expert 3>.linear_fc2.bias"
    )
    assert (
        logical_name("m.mlp.experts.linear_fc1.weight0", 1, 2) == "m.mlp.experts.linear_fc1.weight<expert 2>"
    )
    assert logical_name("m.mlp.experts.weight2", 1, 2) == "m.mlp.experts.weight2 <experts 2..3>"
    assert logical_name(NORM, 1, 2) == NORM


def _tp2(entries0: list[Entry], entries1: list[Entry], tp_ep=((0,), (1,))) -> list[RankReport]:
    return [RankReport(0, (0, 1), tp_ep[0], entries0), RankReport(1, (0, 1), tp_ep[1], entries1)]


def test_a_replicated_norm_summed_over_tp_is_right():
    norm = [Entry(NORM, (64,), "summed", (0,))]
    assert problems(_tp2(norm, [Entry(NORM, (64,), "summed", (1,))])) == []


def test_different_experts_summed_over_tp_are_named():
    # TP 2 x EP 2 on two ranks: rank 0 holds experts 0-1, rank 1 experts 2-3; the planted flag sums 0 with 2.
    def bias(rank):
        return Entry(logical_name(BIAS.format(0), rank, 2), (64,), "summed", (rank,))

    found = problems(_tp2([bias(0)], [bias(1)], tp_ep=((0, 1), (0, 1))))
    assert found == [
        (
            "decoder.layers.0.mlp.experts.local_experts.<expert 0>.linear_fc2.bias (rank 0) is summed with "
            "decoder.layers.0.mlp.experts.local_experts.<expert 2>.linear_fc2.bias (rank 1) over "
            "tensor-parallel group [0, 1]: different parameters",
            FIX_FLAG,
        )
    ]


def test_a_gradient_summed_over_tp_and_reduced_by_ddp_over_the_same_ranks_is_counted_twice():
    key = logical_name(BIAS.format(0), 0, 4)
    found = problems(_tp2([Entry(key, (64,), "summed", (0, 1))], [Entry(key, (64,), "summed", (0, 1))]))
    assert [line.split(": ")[-1] for line, _ in found] == ["its gradient is counted twice"] * 2


def test_replicated_experts_that_never_see_a_peer_s_tokens_are_named():
    # TP 2 x EP 1 x ETP 1: each rank routes its own half of the sequence to its own copy of every expert, and
    # DDP reduces the experts over the data-parallel group, here each rank alone.
    key = logical_name("decoder.layers.0.mlp.experts.local_experts.0.linear_fc1.weight", 0, 4)
    found = problems(_tp2([Entry(key, (192, 64), None, (0,))], [Entry(key, (192, 64), None, (1,))]))
    assert [fix for _, fix in found] == [FIX_LAYOUT, FIX_LAYOUT]
    assert "never gets the gradient of the tokens of tensor-parallel peer 1" in found[0][0]
    # With expert data parallel over both ranks the same layout would be right.
    ok = _tp2([Entry(key, (192, 64), None, (0, 1))], [Entry(key, (192, 64), None, (0, 1))])
    assert problems(ok) == []


# ------------------------------------------------------------------------------ the real model, two processes

LAYOUTS = {  # name: (TP, EP, plant the sequence_parallel flag back on every expert's linear_fc2.bias, adapters)
    "tp2_ep2": (2, 2, False, None),
    "tp2_ep2_planted": (2, 2, True, None),
    "tp2_ep1": (2, 1, False, None),
    # NeMo's LoRA on the experts (DP 2 x EP 2): as compat.upstream marks the adapters, and with the mark removed.
    "ep2_lora_experts": (1, 2, False, "marked"),
    "ep2_lora_experts_unmarked": (1, 2, False, "unmarked"),
}


def _worker(rank: int, store: str, hf: str, out: str) -> None:
    import torch.distributed as dist
    from megatron.core import parallel_state as ps
    from nemo.collections.llm import fn
    from nemo.collections.llm.gpt.model.gpt_oss import GPTOSSConfig
    from nemo.collections.llm.peft.lora import LoRA

    from compat import cpu, grad_sync, upstream
    from convert.gpt_oss import load_hf_config, nemo_config_kwargs

    cpu.enable()
    upstream.apply()
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    results = {}
    for name, (tp, ep, plant, adapters) in LAYOUTS.items():
        ps.initialize_model_parallel(
            tensor_model_parallel_size=tp, expert_model_parallel_size=ep, expert_tensor_parallel_size=1
        )
        config = GPTOSSConfig(
            **{**nemo_config_kwargs(load_hf_config(hf)), **cpu.config_overrides(cuda=False)},
            tensor_model_parallel_size=tp,
            expert_model_parallel_size=ep,
            expert_tensor_parallel_size=1,
            sequence_parallel=tp > 1,
        )
        model = config.configure_model(None)
        if adapters:  # as NeMo's PEFT callback applies them (peft.py:99-105): base frozen, then each linear
            model.requires_grad_(False)
            fn.walk(model, LoRA(target_modules=["linear_fc1", "linear_fc2"], dim=4).transform)
        if adapters == "unmarked":  # as NeMo builds them (nemo/collections/llm/peft/utils.py)
            for param_name, param in model.named_parameters():
                if ".adapter." in param_name:
                    del param.allreduce
        if plant:  # what megatron-core's RowParallelLinear sets (tensor_parallel/layers.py:1208)
            for layer in model.decoder.layers:
                for expert in layer.mlp.experts.local_experts:
                    expert.linear_fc2.bias.sequence_parallel = True
        try:
            grad_sync.check(model, config)
            results[name] = None
        except grad_sync.GradientSyncError as e:
            results[name] = str(e)
        ps.destroy_model_parallel()
    Path(f"{out}.{rank}").write_text(json.dumps(results))
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def verdicts(tiny_hf, tmp_path_factory):
    """Each layout's guard message (None: passed) on both ranks, which must agree."""
    tmp = tmp_path_factory.mktemp("grad_sync")
    mp.spawn(_worker, args=(str(tmp / "store"), str(tiny_hf), str(tmp / "verdict")), nprocs=2, join=True)
    ranks = [json.loads((tmp / f"verdict.{r}").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]  # every rank stops (or goes on) together
    return ranks[0]


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["tp2_ep2", "ep2_lora_experts"])
def test_layouts_as_fixed_pass(verdicts, layout):
    # TP 2 x EP 2 with compat.cpu's fix of the bias flag; NeMo's expert adapters with compat.upstream's mark.
    assert verdicts[layout] is None


@pytest.mark.slow
def test_the_planted_expert_bias_flag_is_refused_naming_every_expert(verdicts):
    message = verdicts["tp2_ep2_planted"]
    assert message.startswith("tensor parallel 2 x expert parallel 2 x expert tensor parallel 1")
    # 2 layers x 2 local experts: expert 0 meets expert 2 and expert 1 meets expert 3 in each layer.
    for layer in (0, 1):
        for mine, peer in ((0, 2), (1, 3)):
            assert (
                f"decoder.layers.{layer}.mlp.experts.local_experts.<expert {mine}>.linear_fc2.bias (rank 0) is "
                f"summed with decoder.layers.{layer}.mlp.experts.local_experts.<expert {peer}>.linear_fc2.bias"
                " (rank 1) over tensor-parallel group [0, 1]: different parameters"
            ) in message
    assert message.count("\n  - ") == 4 and FIX_FLAG in message


@pytest.mark.slow
def test_tp2_ep1_is_refused_with_the_layout_fix(verdicts):
    message = verdicts["tp2_ep1"]
    assert "tensor parallel 2 x expert parallel 1" in message and "the copies drift apart" in message
    assert "local_experts.<expert 0>.linear_fc1.weight (rank 0) never gets the gradient" in message
    assert message.endswith(f"Fix: {FIX_LAYOUT}.")


@pytest.mark.slow
def test_expert_adapters_averaged_with_other_experts_are_refused(verdicts):
    message = verdicts["ep2_lora_experts_unmarked"]
    assert message.startswith("tensor parallel 1 x expert parallel 2 x expert tensor parallel 1")
    # DDP's data-parallel buffer pairs rank 0's expert 0 adapter with rank 1's expert 2 adapter (its first
    # difference is named).
    assert re.search(
        r"DDP averages \S*local_experts\.<expert [01]>\S*adapter\S* \(rank 0\) with "
        r"\S*local_experts\.<expert [23]>\S*adapter\S* \(rank 1\) over data-parallel group \[0, 1\]: "
        r"different parameters",
        message,
    ), message
    assert message.endswith(f"Fix: {FIX_EXPERT_MARK}.")


def test_ddp_averaging_the_adapters_of_different_experts_is_named():
    # EP 2 x DP 2 on two ranks: without the mark each rank's local expert 0 adapter is in the data-parallel
    # buffer (DDP over ranks 0 and 1), which averages expert 0 (rank 0) with expert 2 (rank 1).
    name = "decoder.layers.0.mlp.experts.local_experts.0.linear_fc1.adapter.linear_in.weight"

    def ranks(marked: bool) -> list[RankReport]:
        return [
            RankReport(
                r, (r,), (0, 1), [Entry(logical_name(name, r, 2), (4, 64), None, (r,) if marked else (0, 1))]
            )
            for r in (0, 1)
        ]

    assert problems(ranks(marked=True)) == []
    ((line, fix),) = problems(ranks(marked=False))
    assert line == (
        "DDP averages decoder.layers.0.mlp.experts.local_experts.<expert 0>.linear_fc1.adapter.linear_in.weight "
        "(rank 0) with decoder.layers.0.mlp.experts.local_experts.<expert 2>.linear_fc1.adapter.linear_in.weight "
        "(rank 1) over data-parallel group [0, 1]: different parameters"
    )
    assert fix == FIX_EXPERT_MARK
