"""LoRA adapters -> Hugging Face PEFT adapter: exact logits, the q/k/v split, refusals, atomic writes.

Short real runs of the recipe on the tiny model make the checkpoints: attention LoRA (trained at a higher learning
rate so that B is far from zero, merged and exported by the recipe as the reference), LoRA on the experts and
a full fine-tune (one step each, for the refusals).
"""

from __future__ import annotations

import contextlib
import io
import json
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from convert import verify
from convert.export_peft import (
    ADAPTER_FILE,
    CONFIG_FILE,
    export_peft,
    inspect_lora,
    peft_logits,
    read_adapters,
)
from convert.gpt_oss import ConversionError
from convert.tiny import tiny_shape
from recipes.finetune import compose, run_finetune

TOLERANCE = 1e-5  # fp32 logits of two faithful implementations agree to a few 1e-6 on the tiny model


def _train(tmp_path_factory, tiny_hf, tiny_nemo, peft, steps, *overrides):
    work = tmp_path_factory.mktemp(f"peft-{peft}")
    cfg = compose(
        [
            f"work_dir={work}",
            f"peft={peft}",
            f"model.hf_path={tiny_hf}",
            f"model.nemo_path={tiny_nemo}",
            f"trainer.max_steps={steps}",
            f"trainer.val_check_interval={steps}",
            "trainer.limit_val_batches=1",
            f"trainer.checkpoint_every_n_steps={steps}",
            *overrides,
        ]
    )
    return run_finetune(cfg)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_hf, tiny_nemo):
    """Attention LoRA, 8 steps at lr 5e-3, merged and exported by the recipe (the merged reference), which
    checks that export against the trained model's logits."""
    return _train(tmp_path_factory, tiny_hf, tiny_nemo, "lora", 8, "peft.lr=5e-3")


@pytest.fixture(scope="module")
def exported(lora_run, tiny_hf, tmp_path_factory):
    """The adapter exported with --base (so verified by default) and what the export printed."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        path = export_peft(lora_run["checkpoint"], tmp_path_factory.mktemp("peft") / "adapter", base=tiny_hf)
    return path, printed.getvalue()


@pytest.fixture
def adapter(exported):
    return exported[0]


def _forbid_tensor_reads(monkeypatch):
    """Fail if the export reads any tensor: a refusal must come from the checkpoint's context and index."""

    def forbidden(*args, **kwargs):
        raise AssertionError("a tensor was read before the checkpoint was refused")

    monkeypatch.setattr("convert.export_peft.read_adapters", forbidden)


# ------------------------------------------------------------------------------------------ exact export


def test_peft_model_reproduces_the_merged_export(lora_run, adapter, tiny_hf):
    ids = verify.probe_ids(tiny_hf)
    with_adapter, without, mismatched = peft_logits(tiny_hf, adapter, ids)
    assert mismatched == []  # PEFT loaded every tensor exactly as written, under the names it expects
    # The reference: NeMo's LoRAMerge, then our HF export, itself checked against the trained model.
    assert lora_run["export_vs_trained_logits"]["max_abs_diff"] <= TOLERANCE
    merged = verify.hf_logits(lora_run["hf_export"], ids)
    result = verify.compare(with_adapter, merged)
    assert result.max_abs_diff <= TOLERANCE, result
    assert result.top1_agreement == 1.0
    # The adapter is not a no-op: without it the logits are far outside the tolerance.
    assert (without - merged).abs().max().item() > 1000 * TOLERANCE


def test_export_verifies_against_the_nemo_lora_model(exported):
    _, printed = exported
    assert "NeMo LoRA model as reference" in printed and "top-1 agreement 100.0%" in printed, printed
    assert float(printed.split("logits: max |diff| ")[1].split()[0]) <= TOLERANCE
    # The adapter moves the logits far more than the tolerance: the comparison is not of two base models.
    assert float(printed.split("moves the logits by up to ")[1].split()[0]) > 1000 * TOLERANCE


def test_qkv_rows_are_de_interleaved_per_query_group(lora_run, adapter, tiny_hf):
    """Each projection's scale * B_p A_p equals the change of its weight in the merged export.

    The base weights here are the original HF file's, not our export's, so a wrong split of B shows. With two
    query groups megatron's row order (group 0: q q k v, group 1: q q k v) differs from [q; k; v], and the
    test checks that a plain split of the same B would indeed fail.
    """
    shape = tiny_shape()
    assert shape["num_key_value_heads"] > 1  # with one query group, interleaved and plain orders coincide
    cfg = json.loads((adapter / CONFIG_FILE).read_text())
    scale = cfg["lora_alpha"] / cfg["r"]
    peft = load_file(adapter / ADAPTER_FILE)
    base = load_file(tiny_hf / "model.safetensors")
    merged = load_file(Path(lora_run["hf_export"]) / "model.safetensors")
    ckpt = inspect_lora(lora_run["checkpoint"])
    fused_b = read_adapters(ckpt)[ckpt.keys["self_attention.linear_qkv"]["linear_out"]]
    q_rows = shape["num_attention_heads"] * shape["head_dim"]
    for i in range(shape["num_hidden_layers"]):
        delta = {}
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            name = f"model.layers.{i}.self_attn.{proj}"
            delta[proj] = merged[f"{name}.weight"] - base[f"{name}.weight"]
            assert delta[proj].abs().max() > 1e-3, f"{name}: the adapter barely moved it"
            lora = f"base_model.model.{name}"
            ba = scale * peft[f"{lora}.lora_B.weight"] @ peft[f"{lora}.lora_A.weight"]
            torch.testing.assert_close(ba, delta[proj], rtol=0, atol=1e-6, msg=name)
        a = peft[f"base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight"]
        plain_q = scale * fused_b[i, :q_rows] @ a
        assert (plain_q - delta["q_proj"]).abs().max() > 1e-3  # the plain split would have been caught


def test_adapter_config_and_tensors(lora_run, adapter, tiny_hf):
    cfg = json.loads((adapter / CONFIG_FILE).read_text())
    peft_conf = compose(["peft=lora"]).peft
    assert cfg["peft_type"] == "LORA" and cfg["task_type"] == "CAUSAL_LM"
    assert (cfg["r"], cfg["lora_alpha"], cfg["lora_dropout"]) == (peft_conf.dim, peft_conf.alpha, 0.0)
    assert sorted(cfg["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    assert cfg["base_model_name_or_path"] == str(Path(tiny_hf).resolve())
    assert not cfg["use_dora"] and not cfg["use_rslora"]  # PEFT's scale is then lora_alpha / r, as NeMo's
    shape, r = tiny_shape(), peft_conf.dim
    h, q, kv = (
        shape["hidden_size"],
        shape["num_attention_heads"] * shape["head_dim"],
        shape["num_key_value_heads"] * shape["head_dim"],
    )
    want = {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h)}  # (in, out)
    tensors = load_file(adapter / ADAPTER_FILE)
    assert len(tensors) == shape["num_hidden_layers"] * 4 * 2
    for i in range(shape["num_hidden_layers"]):
        for proj, (n_in, n_out) in want.items():
            prefix = f"base_model.model.model.layers.{i}.self_attn.{proj}"
            assert tensors[f"{prefix}.lora_A.weight"].shape == (r, n_in)
            assert tensors[f"{prefix}.lora_B.weight"].shape == (n_out, r)
            assert tensors[f"{prefix}.lora_B.weight"].dtype == torch.float32  # as trained
        a = [tensors[f"base_model.model.model.layers.{i}.self_attn.{p}_proj.lora_A.weight"] for p in "qkv"]
        assert torch.equal(a[0], a[1]) and torch.equal(a[0], a[2])  # one fused adapter: one A for q, k and v
    assert sorted(p.name for p in adapter.iterdir()) == [CONFIG_FILE, ADAPTER_FILE]


# --------------------------------------------------------------------------------------------- refusals


def test_expert_adapters_are_refused_before_anything_is_written(
    tmp_path_factory, tiny_hf, tiny_nemo, tmp_path, monkeypatch
):
    run = _train(tmp_path_factory, tiny_hf, tiny_nemo, "lora_experts", 1, "export.enabled=false")
    _forbid_tensor_reads(monkeypatch)
    out = tmp_path / "adapter"
    with pytest.raises(ConversionError) as e:
        export_peft(run["checkpoint"], out, base=tiny_hf)
    msg = str(e.value)
    assert "experts" in msg and "fused 3-D parameters" in msg and "not nn.Linear" in msg
    assert f"python -m convert.export_hf --nemo {run['checkpoint']}" in msg
    assert not out.exists() and not out.with_name("adapter.partial").exists()


def test_full_fine_tune_is_refused_and_pointed_to_export_hf(
    tmp_path_factory, tiny_hf, tiny_nemo, tmp_path, monkeypatch
):
    run = _train(tmp_path_factory, tiny_hf, tiny_nemo, "none", 1, "export.enabled=false")
    _forbid_tensor_reads(monkeypatch)
    for ckpt in (run["checkpoint"], tiny_nemo):  # a full SFT and an imported model: no adapters
        with pytest.raises(ConversionError, match=r"not a LoRA checkpoint.*python -m convert\.export_hf"):
            export_peft(ckpt, tmp_path / "adapter")
    assert not any(tmp_path.iterdir())


def test_other_adapter_kinds_are_refused(lora_run, tmp_path, monkeypatch):
    from nemo.collections.llm.peft import DoRA

    import convert.export_peft as ep

    transform, config = ep._context(Path(lora_run["checkpoint"]))
    monkeypatch.setattr(ep, "_context", lambda path: (DoRA(), config))
    with pytest.raises(ConversionError, match=r"trained with DoRA.*neither.*peft=lora"):
        inspect_lora(lora_run["checkpoint"])
    transform.target_modules = ["*.layers.0.*.linear_qkv"]
    monkeypatch.setattr(ep, "_context", lambda path: (transform, config))
    with pytest.raises(ConversionError, match=r"(?s)not mapped.*python -m convert\.export_hf --nemo"):
        inspect_lora(lora_run["checkpoint"])


# ---------------------------------------------------------------------------------------- atomic writes


def test_existing_output_needs_overwrite(lora_run, adapter):
    with pytest.raises(FileExistsError, match="--overwrite"):
        export_peft(lora_run["checkpoint"], adapter, verify=False)
    assert (adapter / CONFIG_FILE).exists()


def test_interrupted_export_publishes_nothing(lora_run, tiny_hf, tmp_path, monkeypatch):
    import convert.export_peft as ep

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ep, "verify_adapter", interrupt)  # after both files are written
    out = tmp_path / "adapter"
    with pytest.raises(KeyboardInterrupt):
        export_peft(lora_run["checkpoint"], out, verify=True, base=tiny_hf)
    assert not out.exists() and not out.with_name("adapter.partial").exists()


def test_export_killed_midway_leaves_no_adapter(lora_run, tmp_path, kill_when_started):
    """A real interruption: the process is killed (SIGKILL) once the weights are written, before the config."""
    out, started = tmp_path / "adapter", tmp_path / "writing"
    script = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        import convert.export_peft as ep
        from safetensors.torch import save_file as real

        def slow_save(*args, **kwargs):
            real(*args, **kwargs)
            Path({str(started)!r}).touch()
            time.sleep(300)

        import safetensors.torch
        safetensors.torch.save_file = slow_save
        ep.export_peft({lora_run["checkpoint"]!r}, {str(out)!r}, verify=False)
        """
    )
    kill_when_started(script, started, "the export never wrote its weights")
    partial = out.with_name("adapter.partial")
    assert (partial / ADAPTER_FILE).exists() and not (partial / CONFIG_FILE).exists()  # PEFT cannot load it
    assert not out.exists()
    export_peft(lora_run["checkpoint"], out, verify=False)  # the next export replaces the partial folder
    assert (out / CONFIG_FILE).exists() and not partial.exists()
