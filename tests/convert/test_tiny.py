"""The tiny gpt-oss builder: deterministic, real architecture, harmony template identical to the official one."""

from __future__ import annotations

import hashlib
import json

import pytest
from transformers import AutoTokenizer

from convert.tiny import build, tiny_shape

CONVERSATIONS = [
    [{"role": "user", "content": "Hello"}],
    [
        {"role": "system", "content": "You are an HR analytics expert."},
        {"role": "user", "content": "Employee Profile:\n- Title: Engineer\n\nPredict: attrition risk"},
        {"role": "assistant", "content": "Attrition risk: Low"},
    ],
    [
        {"role": "developer", "content": "Answer in JSON."},
        {"role": "user", "content": "Queue?"},
        {"role": "assistant", "content": '{"queue": "Billing"}', "thinking": "It mentions an invoice."},
    ],
    [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
    ],
]


def _render(tok, messages, add_generation_prompt):
    return tok.apply_chat_template(
        messages,
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
        strftime_now=lambda fmt: "2025-06-01",
        reasoning_effort="high",
    )


def test_same_seed_same_bytes(tiny_hf, tmp_path):
    again = build(tmp_path / "again")
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        assert (
            hashlib.sha256((again / name).read_bytes()).digest()
            == hashlib.sha256((tiny_hf / name).read_bytes()).digest()
        ), name


def test_architecture_features(tiny_hf):
    cfg = json.loads((tiny_hf / "config.json").read_text())
    shape = tiny_shape()
    assert cfg["model_type"] == "gpt_oss"
    assert cfg["layer_types"] == ["sliding_attention", "full_attention"] * (shape["num_hidden_layers"] // 2)
    assert cfg["rope_scaling"]["rope_type"] == "yarn"
    assert cfg["tie_word_embeddings"] is False
    assert cfg["num_local_experts"] > cfg["num_experts_per_tok"] > 1
    assert cfg["intermediate_size"] != cfg["hidden_size"]
    assert cfg["num_attention_heads"] * cfg["head_dim"] != cfg["hidden_size"]
    tok = AutoTokenizer.from_pretrained(tiny_hf)
    assert cfg["vocab_size"] >= len(tok) and cfg["vocab_size"] % 128 == 0
    assert tok.convert_tokens_to_ids("<|return|>") == cfg["eos_token_id"]


@pytest.mark.parametrize("i", range(len(CONVERSATIONS)))
@pytest.mark.parametrize("gen", [False, True], ids=["training", "generation"])
def test_template_equals_official(tiny_hf, real_tokenizer, i, gen):
    messages = CONVERSATIONS[i]
    if gen and messages[-1]["role"] == "assistant":
        messages = messages[:-1]
    ours = AutoTokenizer.from_pretrained(tiny_hf)
    official = AutoTokenizer.from_pretrained(real_tokenizer)
    assert _render(ours, messages, gen) == _render(official, messages, gen)


def test_builds_with_the_real_tokenizer(real_tokenizer, tmp_path):
    from transformers import GptOssForCausalLM

    path = build(tmp_path / "tiny-real-tok", tokenizer_dir=real_tokenizer)
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["vocab_size"] == 200064  # 200,019 tokens padded to a multiple of 128
    assert cfg["eos_token_id"] == 200002
    model = GptOssForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    ids = tok.apply_chat_template(CONVERSATIONS[1], return_tensors="pt")
    assert model(ids).logits.shape == (1, ids.shape[1], 200064)
