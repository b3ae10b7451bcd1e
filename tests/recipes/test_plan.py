"""The memory planner: hand-computed bytes for the tiny model, and the verdicts that matter for real plans."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from convert.gpt_oss import count_parameters
from recipes.plan import (
    Plan,
    PlanError,
    check,
    compose,
    cpu_profile,
    estimate,
    plan_from_cfg,
    problems,
    suggest,
    tiny_hf_config,
)

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"
CONFIGS = SHARED_DATA / "gpt-oss" / "configs"
PRESETS = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml"))
GB = 1e9


def _real(name: str) -> Path:
    folder = CONFIGS / name
    if not folder.is_dir():
        pytest.skip(f"real gpt-oss configs not present at {CONFIGS}")
    return folder


@pytest.fixture
def real_models(monkeypatch):
    """The presets' model paths point at the real configs (the planner reads nothing else)."""
    monkeypatch.setenv("GPT_OSS_20B", str(_real("gpt-oss-20b")))
    monkeypatch.setenv("GPT_OSS_120B", str(_real("gpt-oss-120b")))


def tiny_plan(tmp_path, *overrides: str) -> Plan:
    # A model folder that does not exist: the tiny shape comes from conf/model/gpt_oss_tiny.yaml.
    cfg = compose([f"model.hf_path={tmp_path / 'absent'}", "cluster.device=cpu", *overrides])
    return plan_from_cfg(cfg)


def test_parameter_split_adds_up_to_the_hf_count(tmp_path):
    plan = tiny_plan(tmp_path)
    assert plan.shape.total() == count_parameters(tiny_hf_config(_tiny_shape())) == 331_216


@pytest.mark.parametrize("name", ["gpt-oss-20b", "gpt-oss-120b"])
def test_parameter_split_adds_up_for_the_real_models(name, tmp_path):
    from recipes.plan import ModelShape

    folder = _real(name)
    assert ModelShape.from_hf(folder).total() == count_parameters(folder)


def _tiny_shape():
    from convert.tiny import tiny_shape

    return tiny_shape()


def test_tiny_lora_on_cpu_matches_hand_computed_bytes(tmp_path):
    # Tiny: L=2, h=64, i=96, 4 q heads / 2 kv heads of 32 -> q=128, kv=64, E=4, k=2, vocab 1024 (1024 rounded
    # up to a multiple of 128). Per layer: attention 64*256 + 256 + 128*64 + 64 + 4 = 24,900; experts
    # 4*(64*192 + 192 + 96*64 + 64) = 74,752; router 4*64 + 4 = 260; norms 128 -> 100,040.
    # Total 2*100,040 + 2*1024*64 (untied) + 64 = 331,216. CPU trains in fp32: 4 bytes everywhere.
    plan = tiny_plan(tmp_path)  # peft=lora dim 8 on linear_qkv + linear_proj; data=builtin: mbs 4 x seq 256
    est = estimate(plan)
    assert est.params_per_device == 331_216
    assert est.weights == 331_216 * 4 == 1_324_864
    assert est.gradients == est.optimizer == 0  # frozen base
    # LoRA per layer: qkv A[8,64] + B[256,8] = 2,560; proj A[8,128] + B[64,8] = 1,536 -> 4,096; x2 layers.
    assert est.trainable_per_device == 8_192
    # weight 4 + grad 4 + Adam m and v 8 (fp32: no master copy), not sharded (one process).
    assert est.lora == 8_192 * 16 == 131_072
    # Per token per layer, elements: norms 2h=128; attention h + (q+2kv) + q = 64+256+128 = 448; router
    # input h = 64; experts k*(2h + 3i) = 2*(128+288) = 832 -> 1,472 x 4 B = 5,888, plus fp32 softmax
    # statistics 4*(4 heads + 2*4 experts) = 48 -> 5,936 B. Tokens 4*256 = 1,024 -> 6,078,464 per layer,
    # 12,156,928 for 2 layers; logits 1,024 tokens x 1,024 vocab x (4 + 4) = 8,388,608.
    assert est.activations == 12_156_928 + 8_388_608 == 20_545_536
    assert est.reserve == 0
    assert est.device_total == 1_324_864 + 131_072 + 20_545_536 == 22_001_472
    # Loading (unified memory): the fp32 shard staged (1,324,864) next to the weights already placed.
    assert est.host_load == 2 * 1_324_864


def test_tiny_full_sft_and_recompute_match_hand_computed_bytes(tmp_path):
    est = estimate(tiny_plan(tmp_path, "peft=none"))
    assert est.trainable_per_device == 331_216
    assert est.gradients == 331_216 * 4 == 1_324_864
    assert est.optimizer == 331_216 * 8 == 2_649_728  # Adam m + v in fp32
    assert est.device_total == 1_324_864 * 2 + 2_649_728 + 20_545_536 == 25_844_992
    # Full recompute: each layer keeps its input (1,024 tokens x 64 x 4 B = 262,144), one layer is rebuilt.
    recomputed = estimate(tiny_plan(tmp_path, "peft=none", "plan.recompute=full"))
    assert recomputed.activations == 2 * 262_144 + 6_078_464 + 8_388_608 == 14_991_360


def test_expert_parallel_shards_only_the_experts(tmp_path):
    plan = tiny_plan(tmp_path, "cluster.devices_per_node=2", "parallel.expert_model_parallel_size=2")
    # Half of the expert matrices (2*73,728 / 2) and biases (2*1,024 / 2) leave each device.
    assert estimate(plan).params_per_device == 331_216 - 73_728 - 1_024 == 256_464


def test_nearest_feasible_plan_is_the_smallest_change(tmp_path):
    plan = tiny_plan(tmp_path, "peft=none")
    # 25.84 MB needed; with 24 MB recompute alone (-5.55 MB) is enough and is the nearest change.
    small = replace(plan, profile=replace(cpu_profile(), device_bytes=24e6, host_bytes_per_node=24e6))
    (refused,) = problems(small)
    assert refused.startswith("training needs") and "cpu has 0.0 GB" in refused
    overrides, better = suggest(small)
    assert overrides == ["plan.recompute=full"] and not problems(better)


def test_expert_parallel_that_does_not_divide_the_experts_is_refused(tmp_path):
    plan = tiny_plan(tmp_path, "cluster.devices_per_node=3", "parallel.expert_model_parallel_size=3")
    (message,) = problems(plan)
    assert "expert_model_parallel_size=3 does not divide 4 experts; use one of 1, 2" in message
    assert "(parallel.expert_model_parallel_size=...)" in message


def test_120b_lora_on_two_sparks_needs_fp8_base_weights(real_models):
    base = ["experiment=spark_pair_120b_lora_fp8"]
    bf16 = plan_from_cfg(compose([*base, "precision=bf16", "plan.load=whole"]))
    est = estimate(bf16)
    # 59.5B parameters per node at EP=2 -> ~119 GB in BF16 before anything else, of ~121 GB.
    assert est.params_per_device == pytest.approx(59.5e9, rel=0.01)
    assert est.weights == pytest.approx(119e9, rel=0.01)
    with pytest.raises(PlanError) as refused:
        check(compose([*base, "precision=bf16", "plan.load=whole"]), out=sys.stderr)
    text = str(refused.value)
    assert "training needs 136." in text and "spark has 121.0 GB" in text
    assert "nearest feasible plan: plan.load=layerwise precision=fp8_base" in text

    fp8 = plan_from_cfg(compose(base))
    assert (fp8.base_weights, fp8.ep, fp8.load) == ("fp8", 2, "layerwise")
    assert not problems(fp8)
    # 55.0B matrices in FP8 (all but the first and last layer) + 4.4B parameters in BF16 + activations + reserve
    assert estimate(fp8).weights == pytest.approx(55.048e9 + 2 * 4.430e9, rel=0.001)
    assert estimate(fp8).device_total == pytest.approx(81.1e9, rel=0.01)


def test_fp8_needs_a_layerwise_load_on_unified_memory(real_models):
    plan = plan_from_cfg(compose(["experiment=spark_pair_120b_lora_fp8", "plan.load=whole"]))
    (message,) = problems(plan)
    assert message.startswith("loading needs 182.9") and "plan.load=whole" in message


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_plans(preset, real_models, capsys):
    plan = check(compose([f"experiment={preset}"]))
    assert estimate(plan).device_total < plan.profile.device_bytes
    assert "memory plan:" in capsys.readouterr().out


def test_full_sft_of_20b_with_ep2_on_the_pair_is_refused(real_models, capsys):
    with pytest.raises(PlanError) as refused:
        check(compose(["experiment=spark_pair_20b_lora_experts_ep2", "peft=none"]))
    text = str(refused.value)
    assert "training needs 206.8 GB per node (unified memory); spark has 121.0 GB" in text
    assert "nearest feasible plan: peft=lora" in text
    out = capsys.readouterr().out
    assert re.search(r"optimizer\s+125\.489\s+Adam 12 B/param, sharded over DP 2 / expert DP 1", out), out


def test_cli_refuses_with_the_numbers_and_a_fix(real_models):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "recipes.plan",
            "experiment=spark_pair_120b_lora_fp8",
            "precision=bf16",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert result.returncode == 1
    assert "memory plan: 116.829B-param gpt-oss, lora | 2 node(s) x 1 spark" in result.stdout
    assert "nearest feasible plan: precision=fp8_base" in result.stderr
