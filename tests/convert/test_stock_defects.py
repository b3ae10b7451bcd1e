"""One regression test per stock-NeMo gpt-oss defect our code fixes.

Each test checks our behaviour against the reference (transformers) and shows that the stock behaviour
differs, so it would fail on the stock code path and tells us if upstream changes.
"""

from __future__ import annotations

import functools
import json
import math

import pytest
import torch

from compat import cpu
from convert.gpt_oss import (
    McoreNames,
    hf_config_from_nemo,
    hf_to_mcore,
    load_hf_config,
    nemo_config_from_hf,
    nemo_config_kwargs,
)


def test_config_mapping_covers_every_field(tiny_hf, monkeypatch):
    """Stock HFGPTOSSImporter.config copies num_layers and num_experts only (20b defaults elsewhere)."""
    import nemo.collections.llm.gpt.model.gpt_oss as stock_module

    # The stock property builds GPTOSSConfig with CUDA-only fusions on; give it the CPU values it lacks.
    host = {k: v for k, v in cpu.config_overrides().items() if k not in ("bf16", "params_dtype")}
    monkeypatch.setattr(stock_module, "GPTOSSConfig", functools.partial(stock_module.GPTOSSConfig, **host))

    hf = load_hf_config(tiny_hf)
    ours = nemo_config_from_hf(tiny_hf, **cpu.config_overrides())
    expected = {
        "hidden_size": hf["hidden_size"],
        "ffn_hidden_size": hf["intermediate_size"],
        "moe_ffn_hidden_size": hf["intermediate_size"],
        "num_attention_heads": hf["num_attention_heads"],
        "num_query_groups": hf["num_key_value_heads"],
        "kv_channels": hf["head_dim"],
        "moe_router_topk": hf["num_experts_per_tok"],
        "vocab_size": hf["vocab_size"],
    }
    assert {k: getattr(ours, k) for k in expected} == expected
    stock = stock_module.HFGPTOSSImporter(str(tiny_hf))
    stock.trust_remote_code = False
    stock_cfg = stock.config
    assert {k: getattr(stock_cfg, k) for k in expected} != expected


def _hf_expert(x, gate_up, gate_up_b, down, down_b, limit=7.0, alpha=1.702):
    """transformers' GptOssExperts for one expert: weights in [in, out], gate/up interleaved."""
    gu = x @ gate_up + gate_up_b
    gate, up = gu[..., ::2].clamp(max=limit), gu[..., 1::2].clamp(-limit, limit)
    return ((up + 1) * gate * torch.sigmoid(gate * alpha)) @ down + down_b


def _mcore_expert(x, fc1, fc1_b, fc2, fc2_b, limit=7.0, alpha=1.702):
    """megatron-core's expert MLP: weights in [out, in], [gate; up] halves, quick_gelu GLU with +1 offset."""
    h = x @ fc1.t() + fc1_b
    gate, up = torch.chunk(h, 2, dim=-1)
    gate, up = gate.clamp(max=limit), up.clamp(-limit, limit)
    return (gate * torch.sigmoid(alpha * gate) * (up + 1)) @ fc2.t() + fc2_b


@pytest.mark.parametrize("hidden,inter", [(6, 10), (8, 8)], ids=["rectangular", "square"])
def test_bf16_expert_layout_including_square(hidden, inter):
    """HF BF16 checkpoints store experts [E, in, out]; stock assumes [E, out, in]. For square down_proj
    (the real 20b: 2880 x 2880) the stock path does not even fail on shapes: it silently transposes."""
    g = torch.Generator().manual_seed(0)
    n_exp = 2
    hf = {
        "gate_up_proj": torch.randn(n_exp, hidden, 2 * inter, generator=g),
        "gate_up_proj_bias": torch.randn(n_exp, 2 * inter, generator=g),
        "down_proj": torch.randn(n_exp, inter, hidden, generator=g),
        "down_proj_bias": torch.randn(n_exp, hidden, generator=g),
    }
    cfg = type(
        "Cfg",
        (),
        dict(
            num_layers=1,
            num_moe_experts=n_exp,
            num_attention_heads=2,
            num_query_groups=1,
            kv_channels=2,
            share_embeddings_and_output_weights=False,
        ),
    )
    state = {f"model.layers.0.mlp.experts.{k}": v for k, v in hf.items()}
    state.update(
        {
            "model.embed_tokens.weight": torch.zeros(1),
            "model.norm.weight": torch.zeros(1),
            "lm_head.weight": torch.zeros(1),
            "model.layers.0.input_layernorm.weight": torch.zeros(1),
            "model.layers.0.post_attention_layernorm.weight": torch.zeros(1),
            "model.layers.0.self_attn.sinks": torch.zeros(2),
        }
    )
    for kind, shape in (("weight", (4, hidden)), ("bias", (4,))):
        for proj, rows in (("q", 4), ("k", 2), ("v", 2)):
            state[f"model.layers.0.self_attn.{proj}_proj.{kind}"] = torch.zeros((rows, *shape[1:]))
        state[f"model.layers.0.self_attn.o_proj.{kind}"] = torch.zeros(shape)
        state[f"model.layers.0.mlp.router.{kind}"] = torch.zeros(shape)
    mc = hf_to_mcore(state, cfg, McoreNames([]))
    x = torch.randn(5, hidden, generator=g)
    p = "decoder.layers.0.mlp.experts.local_experts"
    for e in range(n_exp):
        ref = _hf_expert(
            x, *(hf[k][e] for k in ("gate_up_proj", "gate_up_proj_bias", "down_proj", "down_proj_bias"))
        )
        ours = _mcore_expert(
            x, *(mc[f"{p}.{e}.linear_fc{i}.{k}"] for i in (1, 2) for k in ("weight", "bias"))
        )
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    if hidden == inter:  # stock: down_proj taken as [out, in] without a transpose
        stock_fc2 = hf["down_proj"][0]
        mc_stock = dict(mc, **{f"{p}.0.linear_fc2.weight": stock_fc2})
        stock = _mcore_expert(
            x, *(mc_stock[f"{p}.0.linear_fc{i}.{k}"] for i in (1, 2) for k in ("weight", "bias"))
        )
        ref = _hf_expert(
            x, *(hf[k][0] for k in ("gate_up_proj", "gate_up_proj_bias", "down_proj", "down_proj_bias"))
        )
        assert not torch.allclose(stock, ref, atol=1e-3)


def _hf_window_mask(n, window):
    """transformers' sliding window: query i sees keys j with i - window < j <= i (True = visible)."""
    i, j = torch.arange(n).unsqueeze(1), torch.arange(n).unsqueeze(0)
    return (j <= i) & (j > i - window)


def test_sliding_window_mapping():
    """HF sliding_window=W is megatron-core window_size=(W-1, 0); stock uses (W, 0) semantics (128 for 128)."""
    cpu.enable()
    from megatron.core.transformer.utils import get_sliding_window_causal_mask

    w, n = 8, 20
    kwargs = nemo_config_kwargs({**_min_hf(), "sliding_window": w})
    assert kwargs["window_size"] == (w - 1, 0)
    ours = ~get_sliding_window_causal_mask(n, n, kwargs["window_size"])
    assert torch.equal(ours, _hf_window_mask(n, w))
    stock = ~get_sliding_window_causal_mask(n, n, (w, 0))
    assert not torch.equal(stock, _hf_window_mask(n, w))


def test_yarn_attention_scale_matches_transformers():
    """HF scales attention by 0.1 ln(factor) + 1 without mscale keys; stock NeMo sets both mscales to 1.0
    (scale 1.0). Ours (1.0, 0.0) gives megatron-core the HF value."""
    from megatron.core.models.common.embeddings.yarn_rotary_pos_embedding import _yarn_get_mscale
    from transformers import GptOssConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    hf = _min_hf()
    _, hf_scale = ROPE_INIT_FUNCTIONS["yarn"](GptOssConfig(**hf), "cpu")
    assert hf_scale == pytest.approx(0.1 * math.log(32.0) + 1)
    k = nemo_config_kwargs(hf)
    ours = _yarn_get_mscale(k["yarn_rotary_scaling_factor"], k["yarn_mscale"]) / _yarn_get_mscale(
        k["yarn_rotary_scaling_factor"], k["yarn_mscale_all_dim"]
    )
    assert ours == pytest.approx(hf_scale)
    stock = _yarn_get_mscale(32.0, 1.0) / _yarn_get_mscale(32.0, 1.0)
    assert stock != pytest.approx(hf_scale)


def test_exporter_config_and_init(tiny_nemo, tiny_hf):
    """Stock HFGPTOSSExporter maps only layers/experts back and its init() reads an attribute apply()
    never sets; ours reproduces the source config."""
    from nemo.collections.llm.gpt.model.gpt_oss import HFGPTOSSExporter
    from nemo.lightning import io

    nemo_cfg = io.load_context(str(tiny_nemo), subpath="model.config")
    ours = hf_config_from_nemo(nemo_cfg, nemo_cfg.generation_config).to_dict()
    source = json.loads((tiny_hf / "config.json").read_text())
    for key in (
        "hidden_size",
        "intermediate_size",
        "head_dim",
        "sliding_window",
        "layer_types",
        "rope_scaling",
    ):
        assert ours[key] == source[key], key
    stock = HFGPTOSSExporter(str(tiny_nemo))
    assert stock.config.hidden_size != source["hidden_size"]
    with pytest.raises(AttributeError, match="trust_remote_code"):
        stock.init()


def test_bias_activation_fusion_is_off(tiny_hf):
    """Stock leaves bias_activation_fusion=True, which megatron-core 0.15 rejects for quick_gelu."""
    assert nemo_config_kwargs(load_hf_config(tiny_hf))["bias_activation_fusion"] is False
    from nemo.collections.llm.gpt.model.gpt_oss import GPTOSSConfig

    assert GPTOSSConfig.bias_activation_fusion is True


def _min_hf() -> dict:
    return {
        "model_type": "gpt_oss",
        "num_hidden_layers": 2,
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 32,
        "num_local_experts": 4,
        "num_experts_per_tok": 2,
        "vocab_size": 128,
        "sliding_window": 8,
        "rope_theta": 150000,
        "max_position_embeddings": 131072,
        "rope_scaling": {
            "rope_type": "yarn",
            "factor": 32.0,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "original_max_position_embeddings": 4096,
            "truncate": False,
        },
    }
