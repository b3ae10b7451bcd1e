"""Data parallel 2 x expert parallel 2 with trainable experts: two processes through the launcher (gloo, CPU)
train the tiny gpt-oss on the loss curve of one process, with full SFT and with LoRA on attention and on every
expert. (LoRA on attention with EP 2 x DP 2 over two simulated nodes: tests/launch/test_two_nodes.py; tensor
parallel layouts: tests/launch/test_tensor_parallel.py, where LoRA on the experts is refused.)"""

from __future__ import annotations

import pytest
from launch_helpers import read_summary, run_module

STEPS = 6
SCHEMES = {"sft": "none", "lora_experts": "lora_experts"}


@pytest.fixture(scope="module", params=sorted(SCHEMES))
def runs(request, tmp_path_factory):
    """One process, then DP 2 x EP 2 (two processes, each holding two of the four experts), same scheme."""
    peft = SCHEMES[request.param]
    common = [f"peft={peft}", f"trainer.max_steps={STEPS}", "export.enabled=false"]
    work = tmp_path_factory.mktemp(f"work-{request.param}")
    home = tmp_path_factory.mktemp(f"nemo_run-{request.param}")
    run_module(["recipes.finetune", *common, "run_id=one"], work, home)
    ep2 = ["cluster.devices_per_node=2", "parallel=ep2"]
    run_module(["launch", *ep2, *common, "run_id=dp2_ep2"], work, home)
    run_name = f"gpt_oss_tiny-{'lora' if peft.startswith('lora') else peft}"
    return read_summary(work, run_name, "one"), read_summary(work, run_name, "dp2_ep2")


@pytest.mark.slow
def test_dp2_ep2_with_trained_experts_matches_one_process(runs):
    one, ep = runs
    assert ep["processes"] == 2 and one["processes"] == 1
    assert len(one["losses"]) == len(ep["losses"]) == STEPS
    assert ep["losses"] == pytest.approx(one["losses"], abs=1e-4)
    assert one["losses"][-1] < one["losses"][0]
    assert any(".experts." in name for name in one["trainable_names"])  # the experts did train
    # Each rank trains the adapters (or weights) of its own two experts: the names are those of local experts.
    assert {n for n in ep["trainable_names"] if ".experts." not in n} == {
        n for n in one["trainable_names"] if ".experts." not in n
    }
