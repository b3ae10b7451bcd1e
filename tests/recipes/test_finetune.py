"""llm.finetune on CPU through our recipe: LoRA and full SFT on the tiny model, then merge and export.

One run per scheme (module-scoped), shared by the assertions below.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recipes.finetune import ConfigError, compose, run_finetune, validate

STEPS = 12


def _run(tmp_path_factory, tiny_hf, tiny_nemo, peft):
    work = tmp_path_factory.mktemp(f"work-{peft}")
    cfg = compose(
        [
            f"work_dir={work}",
            f"peft={peft}",
            f"model.hf_path={tiny_hf}",
            f"model.nemo_path={tiny_nemo}",
            f"trainer.max_steps={STEPS}",
            "trainer.val_check_interval=6",
            f"trainer.checkpoint_every_n_steps={STEPS}",
        ]
    )
    return cfg, run_finetune(cfg)


@pytest.fixture(scope="module")
def lora(tmp_path_factory, tiny_hf, tiny_nemo):
    return _run(tmp_path_factory, tiny_hf, tiny_nemo, "lora")


@pytest.fixture(scope="module")
def sft(tmp_path_factory, tiny_hf, tiny_nemo):
    return _run(tmp_path_factory, tiny_hf, tiny_nemo, "none")


def _expected_lora_params(cfg) -> int:
    """LoRA A [r, in] and B [out, r] on linear_qkv and linear_proj of every layer."""
    s, r = cfg.model.tiny, cfg.peft.dim
    q = s.num_attention_heads * s.head_dim
    qkv_out = q + 2 * s.num_key_value_heads * s.head_dim
    per_layer = r * s.hidden_size + qkv_out * r + r * q + s.hidden_size * r
    return s.num_hidden_layers * per_layer


def _mean(xs):
    return sum(xs) / len(xs)


def test_lora_loss_falls(lora):
    _, summary = lora
    losses = summary["losses"]
    assert len(losses) == STEPS
    # Mean of the last three steps at least 15% below the first three (observed: ~7.3 -> ~5.4).
    assert _mean(losses[-3:]) < 0.85 * _mean(losses[:3]), losses


def test_lora_trains_only_adapters(lora):
    cfg, summary = lora
    assert summary["trainable_params"] == _expected_lora_params(cfg) == 8192
    assert all(".adapter." in name for name in summary["trainable_names"])
    assert summary["total_params"] > 30 * summary["trainable_params"]


def test_lora_export_matches_trained_model(lora):
    _, summary = lora
    result = summary["export_vs_trained_logits"]
    assert result["max_abs_diff"] <= 1e-5, result
    assert result["top1_agreement"] == 1.0
    exported = json.loads((Path(summary["hf_export"]) / "config.json").read_text())
    assert exported["eos_token_id"] is not None


def test_full_sft_loss_falls_and_everything_trains(sft):
    _, summary = sft
    losses = summary["losses"]
    assert _mean(losses[-3:]) < 0.7 * _mean(losses[:3]), losses
    assert summary["trainable_params"] == summary["total_params"]
    result = summary["export_vs_trained_logits"]
    assert result["max_abs_diff"] <= 1e-5, result


def test_validate_lists_every_problem(tmp_path):
    cfg = compose(
        [
            f"work_dir={tmp_path}",
            "parallel.expert_model_parallel_size=3",
            "data.global_batch_size=7",
            "data.micro_batch_size=2",
            "data=prepared",
            f"data.dataset_root={tmp_path}/nowhere",
            "peft.name=qlora",
        ]
    )
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    text = str(err.value)
    for needle in ("expert_model_parallel_size=3", "global_batch_size=7", "train.jsonl", "qlora"):
        assert needle in text, needle


@pytest.mark.parametrize("override", ["trainer.max_stepz=3", "trainer.max_steps=many", "peft.dim=1.5"])
def test_schema_rejects_typos_and_wrong_types(override):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException):
        compose([override])
