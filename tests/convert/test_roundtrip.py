"""HF -> NeMo -> HF round trip of the tiny gpt-oss, and NeMo logits against transformers."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from convert import verify
from convert.export_hf import export_hf


def _tensors(folder):
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def test_round_trip_is_bitwise_equal(tiny_hf, tiny_nemo, tmp_path):
    exported = export_hf(tiny_nemo, tmp_path / "hf")
    before, after = _tensors(tiny_hf), _tensors(exported)
    assert sorted(before) == sorted(after)
    for name, t in before.items():
        assert after[name].dtype == t.dtype, name
        assert torch.equal(after[name], t), f"{name} changed in the round trip"
    # The config survives too (stock NeMo writes 20b defaults for everything but layers and experts).
    a, b = (json.loads((d / "config.json").read_text()) for d in (tiny_hf, exported))
    for key in (
        "hidden_size",
        "intermediate_size",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "num_local_experts",
        "num_experts_per_tok",
        "sliding_window",
        "layer_types",
        "rope_scaling",
        "rope_theta",
        "vocab_size",
        "swiglu_limit",
        "max_position_embeddings",
        "eos_token_id",
        "pad_token_id",
    ):
        assert a[key] == b[key], key
    for name in ("tokenizer.json", "chat_template.jinja", "generation_config.json"):
        assert (exported / name).exists(), name


def test_nemo_logits_match_transformers(tiny_hf, tiny_nemo):
    ids = verify.probe_ids(tiny_hf)
    # Longer than the sliding window, so windowed and full layers both matter.
    assert ids.shape[1] > 4 * json.loads((tiny_hf / "config.json").read_text())["sliding_window"]
    result = verify.compare(verify.nemo_logits(tiny_nemo, ids), verify.hf_logits(tiny_hf, ids))
    assert result.logit_scale > 1.0  # logits of a random model with O(1) activations, not ~0
    assert result.max_abs_diff <= 1e-5, result
    assert result.top1_agreement == 1.0
