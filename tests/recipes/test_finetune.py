"""llm.finetune on CPU through our recipe: LoRA and full SFT on the tiny model, then merge and export.

One run per scheme (module-scoped), shared by the assertions below.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from recipes.finetune import ConfigError, build, compose, run_finetune, step_intervals, validate

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
def lora_experts(tmp_path_factory, tiny_hf, tiny_nemo):
    return _run(tmp_path_factory, tiny_hf, tiny_nemo, "lora_experts")


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
    # Mean of the last three steps at least 10% below the first three. Observed: 7.71 -> 6.79 (-12%) on the
    # built-in data with its stage-2 conversations (longer answers' prompts, a 1,024-token vocabulary); the
    # stage-1-only data fell 7.3 -> 5.4. A model that learns nothing stays at its first value.
    assert _mean(losses[-3:]) < 0.90 * _mean(losses[:3]), losses


def test_lora_trains_only_adapters(lora):
    cfg, summary = lora
    assert summary["trainable_params"] == _expected_lora_params(cfg) == 8192
    assert all(".adapter." in name for name in summary["trainable_names"])
    assert summary["total_params"] > 30 * summary["trainable_params"]
    assert summary["trainable_by_part"] == {
        "attention": 8192,
        "router": 0,
        "experts": 0,
        "embeddings/norms/output": 0,
    }


def test_lora_on_experts_trains_one_adapter_pair_per_expert_and_exports_exactly(lora_experts):
    cfg, summary = lora_experts
    s, r = cfg.model.tiny, cfg.peft.dim
    h, i = s.hidden_size, s.intermediate_size
    # Per expert: fc1 A [r, H] + B [2I, r] (gate and up fused), fc2 A [r, I] + B [H, r].
    per_expert = r * h + 2 * i * r + r * i + h * r
    experts = s.num_hidden_layers * s.num_local_experts * per_expert
    assert summary["trainable_by_part"] == {
        "attention": 8192,
        "router": 0,
        "experts": experts,
        "embeddings/norms/output": 0,
    }
    assert experts == 26_624 and summary["trainable_params"] == 34_816
    assert _mean(summary["losses"][-3:]) < 0.85 * _mean(summary["losses"][:3])
    # The merge folds every expert's adapters into its weights; the export still equals the trained model.
    result = summary["export_vs_trained_logits"]
    assert result["max_abs_diff"] <= 1e-5 and result["top1_agreement"] == 1.0, result


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
    parts = summary["trainable_by_part"]
    assert min(parts.values()) > 0 and sum(parts.values()) == summary["total_params"]
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


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["peft=lora", "peft.target_modules=[linear_q,linear_proj]"], "['linear_q'] match no gpt-oss module"),
        (
            ["peft=none", "precision=fp8_base"],
            "precision=fp8_base freezes the base weights in FP8: it needs peft=lora",
        ),
        (["precision=fp8_base", "precision.fp8_recipe=fp4"], "precision.fp8_recipe='fp4' is unknown"),
        (
            ["trainer.stop_at_step=40", "trainer.max_steps=30"],
            "trainer.stop_at_step=40 must lie in 1..trainer.max_steps=30",
        ),
    ],
)
def test_validate_names_the_fix(overrides, needle, tmp_path):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        validate(compose([f"work_dir={tmp_path}", *overrides]))


@pytest.mark.parametrize("override", ["trainer.max_stepz=3", "trainer.max_steps=many", "peft.dim=1.5"])
def test_schema_rejects_typos_and_wrong_types(override):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException):
        compose([override])


PARALLEL = sorted(p.stem for p in (Path(__file__).resolve().parents[2] / "conf" / "parallel").glob("*.yaml"))


@pytest.mark.parametrize("parallel", PARALLEL)
def test_every_parallel_layout_validates_and_builds_for_20b_on_eight_gpus(parallel, monkeypatch):
    configs = Path(__file__).resolve().parents[3] / "shared" / "data" / "gpt-oss" / "configs" / "gpt-oss-20b"
    if not configs.is_dir():
        pytest.skip(f"real gpt-oss-20b config not present at {configs}")
    monkeypatch.setenv("GPT_OSS_20B", str(configs))
    # Tensor parallel without expert parallel cannot train the experts (the planner refuses it: see
    # tests/launch/test_launch.py); with it the experts stay frozen: attention LoRA.
    peft = ["peft=lora"] if parallel == "tp2" else []
    cfg = compose(
        ["model=gpt_oss_20b", f"parallel={parallel}", "cluster=h100_8x", "data.global_batch_size=64", *peft]
    )
    validate(cfg)
    strategy = build(cfg, cuda=True).trainer.strategy
    p = cfg.parallel
    assert (strategy.tensor_model_parallel_size, strategy.expert_model_parallel_size) == (
        p.tensor_model_parallel_size,
        p.expert_model_parallel_size,
    )
    assert strategy.sequence_parallel == p.sequence_parallel


def test_a_run_shorter_than_its_intervals_validates_and_checkpoints_at_its_end(tiny_hf):
    cfg = compose([f"model.hf_path={tiny_hf}", "trainer=smoke", "trainer.max_steps=4"])
    assert (cfg.trainer.val_check_interval, cfg.trainer.checkpoint_every_n_steps) == (
        10,
        30,
    )  # conf/trainer/smoke
    validate(cfg)  # derivable: not a problem
    intervals, note = step_intervals(cfg)
    assert intervals == {"val_check_interval": 4, "checkpoint_every_n_steps": 4}
    assert note == (
        "a run of 4 steps validates and checkpoints at its end: "
        "trainer.val_check_interval=10 -> 4, trainer.checkpoint_every_n_steps=30 -> 4"
    )
    recipe = build(cfg, cuda=False)
    assert (recipe.trainer.max_steps, recipe.trainer.val_check_interval) == (4, 4)
    assert recipe.log.ckpt.every_n_train_steps == 4


def test_intervals_that_fit_the_run_are_kept(tiny_hf):
    cfg = compose(
        [f"model.hf_path={tiny_hf}", "trainer=smoke", "trainer.max_steps=30", "trainer.val_check_interval=7"]
    )
    assert step_intervals(cfg) == ({"val_check_interval": 7, "checkpoint_every_n_steps": 30}, None)
    # Only what is longer than the run is shortened, and the note names only that.
    short = compose(["trainer=smoke", "trainer.max_steps=8", "trainer.checkpoint_every_n_steps=4"])
    assert step_intervals(short) == (
        {"val_check_interval": 8, "checkpoint_every_n_steps": 4},
        "a run of 8 steps validates at its end: trainer.val_check_interval=10 -> 8",
    )
    recipe = build(cfg, cuda=False)
    assert (recipe.trainer.val_check_interval, recipe.log.ckpt.every_n_train_steps) == (7, 30)


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (
            ["trainer.max_steps=30", "trainer.warmup_steps=30"],
            "trainer.warmup_steps=30 must lie in 0..trainer.max_steps-1=29, or the learning rate never decays; "
            "e.g. trainer.warmup_steps=3",
        ),
        (["trainer.warmup_steps=-1"], "trainer.warmup_steps=-1 must lie in 0..trainer.max_steps-1=29"),
        (["trainer.val_check_interval=0"], "trainer.val_check_interval=0 must be >= 1"),
        (["trainer.checkpoint_every_n_steps=-5"], "trainer.checkpoint_every_n_steps=-5 must be >= 1"),
        (["trainer.log_every_n_steps=0"], "trainer.log_every_n_steps=0 must be >= 1"),
        (["trainer.limit_val_batches=-1"], "trainer.limit_val_batches=-1 must be >= 0"),
        (["peft.lr=1e-4", "trainer.min_lr=1e-3"], "trainer.min_lr=0.001 is above the peak peft.lr=0.0001"),
    ],
)
def test_validate_names_the_step_setting_that_fixes_it(overrides, needle, tmp_path):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        validate(compose([f"work_dir={tmp_path}", *overrides]))
