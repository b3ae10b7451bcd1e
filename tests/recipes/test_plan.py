"""The memory planner: hand-computed bytes for the tiny model, and the verdicts that matter for real plans."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from convert.gpt_oss import count_parameters
from recipes.plan import (
    Plan,
    PlanError,
    check,
    compose,
    config_problems,
    cpu_profile,
    estimate,
    link_traffic,
    plan_from_cfg,
    problems,
    suggest,
    tiny_hf_config,
    traffic_table,
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


def by_hand(name: str) -> SimpleNamespace:
    """A real gpt-oss's sizes and parameters per part, written out from its config.json (not the planner's code).

    Per layer: q, k, v and o projections (h x (q + 2kv) and q x h) with biases (q + 2kv and h) and one sink per
    head; per expert SwiGLU gate_up h x 2i and down i x h with biases 2i and h; the router E x h + E; two norms.
    Outside: the embedding and the (untied) output layer, V x h each, and the final norm.
    """
    folder = _real(name)
    hf = folder / "config.json"
    c = json.loads((hf if hf.exists() else folder / "original_config.json").read_text())
    h, i, heads, d = c["hidden_size"], c["intermediate_size"], c["num_attention_heads"], c["head_dim"]
    E = c.get("num_local_experts", c.get("num_experts"))
    m = SimpleNamespace(
        L=c["num_hidden_layers"],
        h=h,
        i=i,
        heads=heads,
        q=heads * d,
        kv=c["num_key_value_heads"] * d,
        E=E,
        k=c.get("num_experts_per_tok", c.get("experts_per_token")),
        V=c["vocab_size"],
    )
    m.attention = h * (m.q + 2 * m.kv) + m.q * h
    m.attention_small = (m.q + 2 * m.kv) + h + heads
    m.experts = E * (h * 2 * i + i * h)
    m.expert_biases = E * (2 * i + h)
    m.router_norms = E * h + E + 2 * h
    m.outer = 2 * m.V * h + h
    m.total = m.L * (m.attention + m.attention_small + m.experts + m.expert_biases + m.router_norms) + m.outer
    return m


def per_device(m: SimpleNamespace, ep: int) -> int:
    """Parameters on one device at expert parallel ``ep`` (TP = PP = 1): the experts split, the rest whole."""
    return (
        m.L * (m.attention + m.attention_small + m.router_norms + (m.experts + m.expert_biases) // ep)
        + m.outer
    )


def activation_bytes(m: SimpleNamespace, tokens: int, a: int) -> int:
    """Activations kept for backward with ``a``-byte elements (no recompute, PP 1): per token and layer the two
    norm inputs 2h, attention h + (q + 2kv) + q, router input h, per routed expert 2h + 3i, and fp32 softmax
    statistics per head plus router logits and probabilities; then the logits and their fp32 softmax."""
    per_token_layer = a * (2 * m.h + (m.h + m.q + 2 * m.kv + m.q) + m.h + m.k * (2 * m.h + 3 * m.i))
    per_token_layer += 4 * (m.heads + 2 * m.E)
    return m.L * tokens * per_token_layer + tokens * m.V * (a + 4)


SPARK_RESERVE = 3 * GB  # the spark profile's assumed CUDA context, NCCL buffers and workspace
PROCESS = 1.1 * GB  # every profile's training process before its model (measured on CPU, rounded up)


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
    # peft=lora: dim 8 on linear_qkv + linear_proj; data=builtin: mbs 4 x seq 256
    plan = tiny_plan(tmp_path, "peft=lora")
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
    # Unified memory (CPU): the process's own 1.1 GB is in the same pool.
    assert est.device_total == 1_324_864 + 131_072 + 20_545_536 + PROCESS == 1_122_001_472
    # The restore reads one stored tensor at a time: the largest is the embedding (or the output layer),
    # 1,024 x 64 in fp32 = 262,144 B, staged beside the weights already placed and the process.
    assert est.staging == 262_144
    assert est.host_load == est.loading == 1_324_864 + 262_144 + PROCESS == 1_101_587_008
    assert est.peak == est.device_total  # training, not loading, sets the peak here


def test_tiny_full_sft_and_recompute_match_hand_computed_bytes(tmp_path):
    est = estimate(tiny_plan(tmp_path, "peft=none"))
    assert est.trainable_per_device == 331_216
    assert est.gradients == 331_216 * 4 == 1_324_864
    assert est.optimizer == 331_216 * 8 == 2_649_728  # Adam m + v in fp32
    assert est.device_total == 1_324_864 * 2 + 2_649_728 + 20_545_536 + PROCESS == 1_125_844_992
    # Full recompute: each layer keeps its input (1,024 tokens x 64 x 4 B = 262,144), one layer is rebuilt.
    recomputed = estimate(tiny_plan(tmp_path, "peft=none", "plan.recompute=full"))
    assert recomputed.activations == 2 * 262_144 + 6_078_464 + 8_388_608 == 14_991_360


def test_expert_parallel_shards_only_the_experts(tmp_path):
    plan = tiny_plan(tmp_path, "cluster.devices_per_node=2", "parallel.expert_model_parallel_size=2")
    # Half of the expert matrices (2*73,728 / 2) and biases (2*1,024 / 2) leave each device.
    assert estimate(plan).params_per_device == 331_216 - 73_728 - 1_024 == 256_464


def test_nearest_feasible_plan_is_the_smallest_change(tmp_path):
    plan = tiny_plan(tmp_path, "peft=none")
    # 25.84 MB needed (without the process); with 24 MB recompute alone (-5.55 MB) is enough and is the nearest
    # change.
    cramped = replace(cpu_profile(), device_bytes=24e6, host_bytes_per_node=24e6, runtime_bytes=0)
    small = replace(plan, profile=cramped)
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
    m = by_hand("gpt-oss-120b")
    bf16 = plan_from_cfg(compose([*base, "precision=bf16"]))
    est = estimate(bf16)
    # EP=2: each node holds half of the 128 experts and all the rest: 59.5B parameters -> 119 GB in BF16
    # before anything else, of ~121 GB.
    params = per_device(m, ep=2)
    assert est.params_per_device == params
    assert est.weights == params * 2
    # LoRA dim 16 on linear_qkv (h -> q + 2kv) and linear_proj (q -> h) of 36 layers, each parameter a BF16
    # weight, an fp32 gradient and Adam's fp32 master, m and v (12 B) sharded over the 2 data-parallel ranks.
    lora = m.L * 16 * ((m.h + m.q + 2 * m.kv) + (m.q + m.h))
    lora_bytes = lora * (2 + 4 + 12 / 2)
    act = activation_bytes(m, tokens=1 * 2048, a=2)  # mbs 1 x seq 2048
    needed = params * 2 + lora_bytes + act + SPARK_RESERVE + PROCESS  # 137.3 GB
    with pytest.raises(PlanError) as refused:
        check(compose([*base, "precision=bf16"]), out=sys.stderr)
    text = str(refused.value)
    assert f"training needs {needed / GB:.1f} GB per node (unified memory)" in text
    assert "spark has 121.0 GB" in text
    assert "nearest feasible plan: precision=fp8_base" in text

    fp8 = plan_from_cfg(compose(base))
    assert (fp8.base_weights, fp8.ep) == ("fp8", 2)
    assert not problems(fp8)
    # The attention and expert matrices of 34 of the 36 layers in FP8, 1 B each (the first and last layer stay
    # BF16): 55.0B; the other 4.4B parameters in BF16. Then the same LoRA, activations, reserve and process:
    # 82.2 GB.
    fp8_matrices = m.L * (m.attention + m.experts // 2) * (m.L - 2) / m.L
    weights = fp8_matrices * 1 + (params - fp8_matrices) * 2
    assert estimate(fp8).weights == pytest.approx(weights, rel=1e-12)
    total = weights + lora_bytes + act + SPARK_RESERVE + PROCESS
    assert estimate(fp8).device_total == pytest.approx(total, rel=1e-12)


def test_the_restore_stages_one_stored_tensor_beside_the_weights(real_models):
    m = by_hand("gpt-oss-120b")
    est = estimate(plan_from_cfg(compose(["experiment=spark_pair_120b_lora_fp8"])))
    # The largest tensor of the BF16 import is the embedding (or the output layer), V x h = 201,088 x 2,880:
    # 1.158 GB read whole, then copied into the FP8 weights already placed (never a whole shard at once).
    assert est.staging == m.V * m.h * 2 == 1_158_266_880
    params = per_device(m, ep=2)
    fp8_matrices = m.L * (m.attention + m.experts // 2) * (m.L - 2) / m.L
    weights = fp8_matrices * 1 + (params - fp8_matrices) * 2
    # One process per node: its weights, reserve and own memory, plus the staged tensor: 68.1 GB of 121.
    assert est.host_load == pytest.approx(weights + SPARK_RESERVE + PROCESS + m.V * m.h * 2, rel=1e-12)
    assert est.peak == est.device_total  # training (activations) sets the peak, not the restore


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_plans(preset, real_models, capsys):
    plan = check(compose([f"experiment={preset}"]))
    assert estimate(plan).peak < plan.profile.device_bytes
    assert "memory plan:" in capsys.readouterr().out


def test_full_sft_of_20b_with_ep2_on_the_pair_is_refused(real_models, capsys):
    m = by_hand("gpt-oss-20b")
    with pytest.raises(PlanError) as refused:
        check(compose(["experiment=spark_pair_20b_lora_experts_ep2", "peft=none"]))
    text = str(refused.value)
    # 2 nodes x 1 GPU at EP=2: data parallel 2 for the dense parameters, but each expert lives on one node only
    # (expert DP 1), so its Adam states (fp32 master, m, v: 12 B) cannot be sharded.
    params = per_device(m, ep=2)  # 11.36B, all trainable
    experts = m.L * (m.experts + m.expert_biases) // 2
    optimizer = (params - experts) * 12 / 2 + experts * 12 / 1  # 125.489 GB
    # BF16 weights 2 B + fp32 gradients 4 B per parameter, the optimizer, activations, the reserve and the
    # process: 207.9 GB.
    needed = (
        params * (2 + 4) + optimizer + activation_bytes(m, tokens=1 * 2048, a=2) + SPARK_RESERVE + PROCESS
    )
    assert f"training needs {needed / GB:.1f} GB per node (unified memory); spark has 121.0 GB" in text
    est = estimate(plan_from_cfg(compose(["experiment=spark_pair_20b_lora_experts_ep2", "peft=none"])))
    assert (est.optimizer, est.device_total) == (
        pytest.approx(optimizer, rel=1e-12),
        pytest.approx(needed, rel=1e-12),
    )
    assert "nearest feasible plan: peft=lora" in text
    out = capsys.readouterr().out
    row = rf"optimizer\s+{re.escape(f'{optimizer / GB:.3f}')}\s+Adam 12 B/param, sharded over DP 2 / expert DP 1"
    assert re.search(row, out), out


def test_cli_refuses_with_the_numbers_and_a_fix(real_models):
    total = by_hand("gpt-oss-120b").total  # 116.829B
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
    assert f"memory plan: {total / 1e9:.3f}B-param gpt-oss, lora | 2 node(s) x 1 spark" in result.stdout
    assert "nearest feasible plan: precision=fp8_base" in result.stderr


# ------------------------------------------------------------------------------ the Spark pair's link traffic

PAIR = ["cluster=spark_pair", "data.seq_length=256", "data.micro_batch_size=1", "data.global_batch_size=8"]


def _traffic(tmp_path, *overrides: str) -> dict[str, float]:
    cfg = compose([f"model.hf_path={tmp_path / 'absent'}", *PAIR, *overrides])
    return {t.kind: t.bytes for t in link_traffic(plan_from_cfg(cfg))}


def test_link_bytes_of_the_tiny_model_on_the_pair_by_hand(tmp_path):
    # Tiny: L=2, h=64, top-k 2; bf16 on the Spark (a=2 B); seq 256, mbs 1, gbs 8; one device per node, so
    # every byte of a group spanning both devices crosses the link. A ring collective over 2 ranks sends half.
    # TP 2 (DP 1 -> 8 micro-batches): one all-gather/reduce-scatter moves 256 x 64 x 2 / 2 = 16,384 B; per
    # micro-batch 4 per layer (attention in and out, forward and backward) x 2 layers + 4 (embedding, output
    # layer) = 12: 8 x 12 x 16,384 = 1,572,864 B.
    assert _traffic(tmp_path, "parallel=tp2", "peft=lora") == {"TP": 1_572_864}
    # TP 2 x EP 2 (DP 1): the same TP bytes; each MoE layer routes its 256 / 2 = 128 tokens x 2 copies, half of
    # them to the other node: 128 copies x 64 x 2 B = 16,384 B per all-to-all, 4 of them (dispatch and combine,
    # forward and backward): 65,536 B per layer x 2 layers x 8 micro-batches = 1,048,576 B.
    assert _traffic(tmp_path, "parallel=tp2_ep2") == {"TP": 1_572_864, "EP": 1_048_576}
    # EP 2 alone (DP 2 -> 8 / 2 = 4 micro-batches per device): 256 tokens x 2 copies / 2 = 256 copies x 64 x 2 B =
    # 32,768 B per all-to-all, x 4 x 2 layers x 4 = 1,048,576 B. DP: the LoRA adapters on attention, per layer
    # 8 x (64 + 128 + 2 x 64) + 8 x (128 + 64) = 4,096, x 2 layers = 8,192 gradients x 2 B, all-reduced over 2
    # ranks (2 x 1/2 sent): 16,384 B.
    assert _traffic(tmp_path, "parallel=ep2", "peft=lora") == {"EP": 1_048_576, "DP": 16_384}
    # One device: nothing crosses a link.
    assert _traffic(tmp_path, "cluster=local", "peft=lora") == {}


def test_link_time_uses_the_measured_bandwidth_when_given(tmp_path):
    plan = plan_from_cfg(
        compose([f"model.hf_path={tmp_path / 'absent'}", *PAIR, "parallel=tp2", "peft=lora"])
    )
    nominal = traffic_table(plan)
    # 1,572,864 B at 25 GB/s (200 Gb/s) = 0.0000629 s; at a measured 10 GB/s, 0.000157 s.
    assert "at 25 GB/s (nominal 200 Gb/s" in nominal and re.search(r"\n  TP +0\.002 +0\.000  ", nominal)
    measured = traffic_table(replace(plan, link_gbs=10.0))
    assert "at 10 GB/s (measured (plan.link_gbs))" in measured
    assert [r.bytes / 10e9 for r in link_traffic(plan)] == pytest.approx([1.572864e-4])


@pytest.mark.parametrize("layout", ["tp2", "tp2_ep2"])
def test_the_pair_presets_plan_and_fit(layout, real_models, capsys):
    plan = check(compose(["experiment=spark_pair_20b_lora", f"parallel={layout}"]))
    assert (plan.tp, plan.ep, plan.sequence_parallel, plan.world) == (
        2,
        2 if layout == "tp2_ep2" else 1,
        True,
        2,
    )
    out = capsys.readouterr().out
    assert "fits." in out and "link traffic per step and device, at 25 GB/s" in out


def test_tp2_with_trainable_experts_is_refused_with_the_fix(tmp_path):
    cfg = compose([f"model.hf_path={tmp_path / 'absent'}", "cluster=spark_pair", "parallel=tp2", "peft=none"])
    (message,) = config_problems(cfg)
    assert "drift apart" in message and "parallel.expert_model_parallel_size=2 (parallel=tp2_ep2)" in message
    lora = compose(
        [f"model.hf_path={tmp_path / 'absent'}", "cluster=spark_pair", "parallel=tp2", "peft=lora"]
    )
    assert config_problems(lora) == []


def test_lora_on_experts_with_tensor_parallel_is_refused_with_the_fix(tmp_path):
    """NeMo's expert adapters gather over the TP group; with TP 2 x EP 2 the ranks route different token counts
    to each expert and the run aborted in its first forward (gloo: 5648 vs 2768 bytes). Refused up front."""

    def problems(*overrides):
        return config_problems(
            compose([f"model.hf_path={tmp_path / 'absent'}", "cluster=spark_pair", *overrides])
        )

    (message,) = problems("parallel=tp2_ep2", "peft=lora_experts")
    assert "NeMo's expert adapters communicate over the tensor-parallel group" in message
    assert "parallel.tensor_model_parallel_size=1 (parallel=ep2)" in message
    assert problems("parallel=ep2", "peft=lora_experts") == []  # the pair's LoRA-on-experts preset layout
    assert problems("parallel=tp2_ep2", "peft=lora") == problems("parallel=tp2_ep2", "peft=none") == []


def test_tensor_parallel_without_sequence_parallel_is_refused(tmp_path):
    cfg = compose(
        [
            f"model.hf_path={tmp_path / 'absent'}",
            "cluster=spark_pair",
            "parallel=tp2_ep2",
            "parallel.sequence_parallel=false",
        ]
    )
    (message,) = config_problems(cfg)
    assert message.startswith("tensor_model_parallel_size=2 with MoE needs sequence parallelism")
