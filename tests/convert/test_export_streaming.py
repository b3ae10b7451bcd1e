"""The streaming export: equal to the whole-model path bit for bit, LoRA merged as NeMo merges it, MXFP4 output
that copies untouched experts byte for byte, a disk preflight, and nothing published on failure.

Short real runs of the recipe on the tiny model make the checkpoints (LoRA on attention and experts, trained at
a higher learning rate so that every adapter moves its weights).
"""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from convert import mxfp4, verify
from convert.checkpoint import CheckpointTensors, GptOssHFExporter, TrainedTensors, checkpoint_key
from convert.export_hf import Producer, SafetensorsWriter, export_hf
from convert.gpt_oss import ConversionError, read_header

TOLERANCE = 1e-5  # fp32 logits of two faithful implementations agree to a few 1e-6 on the tiny model


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for file in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(file), "pt") as f:
            out.update({k: f.get_tensor(k) for k in f.keys()})
    return out


def assert_bitwise_equal(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert torch.equal(a[name].view(torch.uint8), b[name].view(torch.uint8)), name


def whole_model_export(nemo: Path, out: Path) -> Path:
    """The reference: the checkpoint loaded into a NeMo model, its state dict mapped and saved by transformers."""
    GptOssHFExporter(str(nemo)).apply(out)
    return out


@pytest.fixture(scope="module")
def lora_experts_run(tmp_path_factory, tiny_hf, tiny_nemo):
    from recipes.finetune import compose, run_finetune

    work = tmp_path_factory.mktemp("lora-experts")
    steps = 3
    cfg = compose(
        [
            f"work_dir={work}",
            "peft=lora_experts",
            "peft.lr=5e-3",
            f"model.hf_path={tiny_hf}",
            f"model.nemo_path={tiny_nemo}",
            f"trainer.max_steps={steps}",
            f"trainer.val_check_interval={steps}",
            "trainer.limit_val_batches=1",
            f"trainer.checkpoint_every_n_steps={steps}",
            "export.enabled=false",
        ]
    )
    return Path(run_finetune(cfg)["checkpoint"])


# ---------------------------------------------------------------------------------------------- reading


def test_every_parameter_reads_as_the_loaded_model_holds_it(tiny_nemo):
    """The checkpoint reader and `checkpoint_key` give each parameter exactly as NeMo's own load does."""
    from nemo.lightning import teardown

    model, trainer = GptOssHFExporter(str(tiny_nemo)).load()
    loaded = {k: v.clone() for k, v in model.module.state_dict().items() if not k.endswith("_extra_state")}
    teardown(trainer, model)
    trained = TrainedTensors(tiny_nemo)
    assert any(".local_experts." in k for k in loaded)
    for name, value in loaded.items():
        assert torch.equal(trained[name], value), name
    assert trained.changed is None  # a full checkpoint: nothing merged


def test_checkpoint_key_follows_megatron_core():
    assert checkpoint_key("embedding.word_embeddings.weight") == (
        "module.embedding.word_embeddings.weight",
        (),
    )
    assert checkpoint_key("decoder.layers.3.input_layernorm.weight") == (
        "module.decoder.layers.self_attention.linear_qkv.layer_norm_weight",
        (3,),
    )
    assert checkpoint_key("decoder.layers.1.mlp.experts.local_experts.2.linear_fc1.bias") == (
        "module.decoder.layers.mlp.experts.experts.linear_fc1.bias",
        (1, 2),
    )


def test_reading_outside_a_tensor_is_refused(tiny_nemo):
    tensors_ = CheckpointTensors(tiny_nemo)
    with pytest.raises(ConversionError, match="outside"):
        tensors_.read("module.decoder.layers.self_attention.linear_qkv.weight", (99,))
    with pytest.raises(ConversionError, match="no tensor"):
        tensors_.read("module.decoder.layers.nothing.weight", (0,))


# ---------------------------------------------------------------------------------------------- dense


def test_streaming_export_is_the_whole_model_export_bit_for_bit(tiny_nemo, tmp_path):
    streamed = export_hf(tiny_nemo, tmp_path / "streamed", verify=False)
    reference = whole_model_export(tiny_nemo, tmp_path / "whole")
    assert_bitwise_equal(tensors(streamed), tensors(reference))
    mine, theirs = (json.loads((p / "config.json").read_text()) for p in (streamed, reference))
    mine.pop("transformers_version"), theirs.pop("transformers_version")
    assert mine == theirs
    for side_file in ("generation_config.json", "tokenizer.json", "chat_template.jinja"):
        assert (streamed / side_file).read_bytes() == (reference / side_file).read_bytes(), side_file
    report = json.loads((streamed / "export_report.json").read_text())
    assert report["format"] == "dense" and report["dtype"] == "float32" and report["lora_merged"] is None


def test_lora_is_merged_as_nemo_merges_it(lora_experts_run, tmp_path):
    """Streaming export of the LoRA checkpoint == NeMo's LoRAMerge (convert.merge_lora) then the whole-model
    export, bit for bit; and every expert's adapter was merged."""
    from convert.merge_lora import merge_lora

    streamed = export_hf(lora_experts_run, tmp_path / "streamed", verify=False)
    merged = merge_lora(lora_experts_run, tmp_path / "merged")
    reference = whole_model_export(merged, tmp_path / "whole")
    assert_bitwise_equal(tensors(streamed), tensors(reference))
    report = json.loads((streamed / "export_report.json").read_text())
    cfg = TrainedTensors(lora_experts_run).config
    # qkv and proj per layer, fc1 and fc2 per expert per layer.
    assert report["lora_merged"] == cfg.num_layers * (2 + 2 * cfg.num_moe_experts)
    base, after = (
        tensors(whole_model_export(json_base(lora_experts_run), tmp_path / "base")),
        tensors(streamed),
    )
    moved = [k for k in base if not torch.equal(base[k], after[k])]
    for part in (
        "mlp.experts.gate_up_proj",
        "mlp.experts.down_proj",
        "self_attn.q_proj.weight",
        "o_proj.weight",
    ):
        assert any(part in k for k in moved), part


def json_base(lora: Path) -> Path:
    return Path(json.loads((lora / "weights" / "adapter_metadata.json").read_text())["model_ckpt_path"])


def test_dense_export_of_lora_reproduces_the_trained_model(lora_experts_run, tmp_path):
    from convert.export_peft import lora_logits

    streamed = export_hf(lora_experts_run, tmp_path / "hf", verify=False)
    ids = verify.probe_ids(streamed)
    trained = lora_logits(lora_experts_run, ids)
    result = verify.compare(verify.hf_logits(streamed, ids), trained)
    assert result.logit_scale > 1.0
    assert result.max_abs_diff <= TOLERANCE, result
    assert result.top1_agreement == 1.0


# ---------------------------------------------------------------------------------------------- MXFP4


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    """The tiny MXFP4 checkpoint and its NeMo import (which records its source)."""
    from convert.import_hf import import_hf

    root = tmp_path_factory.mktemp("twin")
    mx, _ = mxfp4.write_tiny_twins(root / "mxfp4", root / "bf16")
    return mx, import_hf(mx, root / "nemo")


def test_mxfp4_round_trip_without_training_is_byte_identical(twin, tmp_path):
    source, nemo = twin
    out = export_hf(nemo, tmp_path / "hf", verify=False)  # the recorded source is MXFP4: so is the default
    assert_bitwise_equal(tensors(out), tensors(source))
    config = json.loads((out / "config.json").read_text())
    assert (
        config["quantization_config"]
        == json.loads((source / "config.json").read_text())["quantization_config"]
    )
    report = json.loads((out / "export_report.json").read_text())
    assert {r["quantized"] for r in report["experts"].values()} == {0}
    assert sum(r["copied"] for r in report["experts"].values()) == 2 * 2 * 4  # layers x matrices x experts


def test_attention_lora_on_an_mxfp4_base_copies_every_expert(twin, lora_experts_run, tmp_path):
    """A LoRA checkpoint whose adapters touch attention only (the expert adapters removed from a copy of the
    run's checkpoint, its base pointed at the MXFP4 import): experts copied, attention changed and BF16."""
    source, nemo = twin
    lora = shutil.copytree(lora_experts_run, tmp_path / "lora")
    _rewrite_adapters(lora, nemo)
    out = export_hf(lora, tmp_path / "hf", verify=False, fmt="mxfp4")
    got, src = tensors(out), tensors(source)
    experts = [k for k in src if k.endswith(("_blocks", "_scales"))]
    for name in experts:
        assert torch.equal(got[name], src[name]), name
    assert not torch.equal(
        got["model.layers.0.self_attn.q_proj.weight"], src["model.layers.0.self_attn.q_proj.weight"]
    )
    assert got["model.layers.0.self_attn.q_proj.weight"].dtype == torch.bfloat16


def _rewrite_adapters(lora: Path, base: Path, extra: dict | None = None) -> None:
    """Rewrite a copied LoRA checkpoint: only its attention adapters (plus ``extra`` tensors), base ``base``."""
    import torch.distributed.checkpoint as dcp

    reader = CheckpointTensors(lora)
    keep = [k for k in reader.index if ".adapter." in k and "self_attention" in k]
    kept = {k: reader.read(k) for k in keep if "_extra_state" not in k and not k.startswith("optimizer.")}
    weights = lora / "weights"
    for f in weights.iterdir():
        f.unlink()
    dcp.save({**kept, **(extra or {})}, checkpoint_id=str(weights), no_dist=True)
    (weights / "metadata.json").write_text(json.dumps({"sharded_backend": "torch_dist"}))
    (weights / "adapter_metadata.json").write_text(json.dumps({"model_ckpt_path": str(base)}))


def test_mxfp4_export_after_expert_lora_is_the_quantised_trained_model(lora_experts_run, tmp_path):
    """The MXFP4 export of a model whose experts were trained: its logits equal the trained model's with the
    experts quantised (the format's own error, measured here), and the error is reported per tensor."""
    from convert.export_peft import lora_logits

    dense = export_hf(lora_experts_run, tmp_path / "dense", verify=False)
    out = export_hf(lora_experts_run, tmp_path / "mxfp4", verify=False, fmt="mxfp4")
    # The same model quantised in memory: the dense export with its experts through quantize -> dequantize
    # and every other tensor in BF16, as the MXFP4 format keeps them.
    simulated = shutil.copytree(dense, tmp_path / "simulated")
    weights = tensors(dense)
    for name, t in weights.items():
        if name.endswith(("gate_up_proj", "down_proj")):  # quantised from the trained (fp32) values
            blocks, scales = mxfp4.quantize(t.transpose(1, 2))
            t = mxfp4.dequantize(blocks, scales, torch.bfloat16).transpose(1, 2)
        weights[name] = t.to(torch.bfloat16).contiguous()
    from safetensors.torch import save_file

    save_file(weights, str(simulated / "model.safetensors"), metadata={"format": "pt"})
    ids = verify.probe_ids(out)
    trained = lora_logits(lora_experts_run, ids)
    exported = verify.hf_logits(out, ids)
    assert verify.compare(exported, verify.hf_logits(simulated, ids)).max_abs_diff <= TOLERANCE
    # The format's error on this model (reported, not bounded: the tiny model's experts are random Gaussians,
    # far from the MXFP4 grid, where a real gpt-oss's are on it).
    error = verify.compare(exported, trained)
    assert error.max_abs_diff > 0
    print(f"MXFP4 export vs trained model: {error}")
    report = json.loads((out / "export_report.json").read_text())
    assert all(r["quantized"] == 4 and r["copied"] == 0 for r in report["experts"].values())
    # The reported per-tensor error is the one computed here from the dense export.
    for name, r in report["experts"].items():
        trained_w, quantised_w = tensors(dense)[name].double(), weights[name].double()
        expected = ((quantised_w - trained_w).norm() / trained_w.norm()).item()
        assert r["rel_rms_error"] == pytest.approx(expected, rel=1e-6), name


# ---------------------------------------------------------------------------------------------- safety


def test_too_little_disk_is_refused_with_both_figures(tiny_nemo, tmp_path, monkeypatch):
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=1000))
    with pytest.raises(ConversionError, match=r"needs 0\.\d\d GiB and .* has 0\.00 GiB free"):
        export_hf(tiny_nemo, tmp_path / "hf", verify=False)
    assert not any(tmp_path.iterdir())


def test_merge_with_too_little_disk_is_refused(lora_experts_run, tmp_path, monkeypatch):
    from convert.merge_lora import merge_lora

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=1000))
    with pytest.raises(ConversionError, match=r"needs 0\.\d\d GiB and .* has 0\.00 GiB free"):
        merge_lora(lora_experts_run, tmp_path / "merged")
    assert not any(tmp_path.iterdir())


def test_interrupted_export_leaves_the_previous_output(tiny_nemo, tmp_path, monkeypatch):
    out = export_hf(tiny_nemo, tmp_path / "hf", verify=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    calls = []
    real = Producer.write

    def interrupt_at_the_fifth_tensor(self, unit, writer):
        calls.append(unit)
        if len(calls) == 5:
            raise KeyboardInterrupt
        real(self, unit, writer)

    monkeypatch.setattr(Producer, "write", interrupt_at_the_fifth_tensor)
    with pytest.raises(KeyboardInterrupt):
        export_hf(tiny_nemo, out, verify=False, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not out.with_name("hf.partial").exists()
    with pytest.raises(FileExistsError, match="overwrite"):
        export_hf(tiny_nemo, out, verify=False)


def test_export_killed_midway_leaves_the_previous_output(tiny_nemo, tmp_path, kill_when_started):
    out = export_hf(tiny_nemo, tmp_path / "hf", verify=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    started = tmp_path / "writing"
    script = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from convert.export_hf import SafetensorsWriter, export_hf

        real = SafetensorsWriter.write
        def slow(self, *args, **kwargs):
            real(self, *args, **kwargs)
            Path({str(started)!r}).touch()
            time.sleep(300)
        SafetensorsWriter.write = slow
        export_hf({str(tiny_nemo)!r}, {str(out)!r}, verify=False, overwrite=True)
        """
    )
    kill_when_started(script, started, "the export never reached the weight write")
    assert any(out.with_name("hf.partial").glob("*.safetensors"))  # killed while writing ...
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # ... the previous export intact
    export_hf(tiny_nemo, out, verify=False, overwrite=True)
    assert not out.with_name("hf.partial").exists()


def test_writer_refuses_short_or_misshapen_writes(tmp_path):
    writer = SafetensorsWriter(tmp_path / "x.safetensors", [("a", torch.float32, (2, 3))])
    with pytest.raises(ConversionError, match="writing"):
        writer.write("a", torch.zeros(2, 4))
    writer.write("a", torch.ones(1, 3), first=1)
    with pytest.raises(ConversionError, match="not written exactly once"):
        writer.close()


def test_writer_output_is_read_by_safetensors(tmp_path):
    a, b = torch.arange(6, dtype=torch.float32).reshape(2, 3), torch.ones(5, dtype=torch.bfloat16)
    writer = SafetensorsWriter(
        tmp_path / "x.safetensors", [("a", torch.float32, (2, 3)), ("b", torch.bfloat16, (5,))]
    )
    writer.write("b", b)
    writer.write("a", a[1:], first=1)
    writer.write("a", a[:1])
    writer.close()
    got = tensors(tmp_path)
    assert torch.equal(got["a"], a) and torch.equal(got["b"], b)
    assert read_header(tmp_path / "x.safetensors") == {"a": ("float32", (2, 3)), "b": ("bfloat16", (5,))}


def test_unused_adapters_are_refused(twin, lora_experts_run, tmp_path):
    """An adapter the model has no parameter for (another model, or a renamed module) stops the export."""
    lora = shutil.copytree(lora_experts_run, tmp_path / "lora")
    mystery = "module.decoder.layers.self_attention.linear_mystery.adapter.linear_in.weight"
    _rewrite_adapters(lora, twin[1], {mystery: torch.zeros(2, 8, 64)})
    with pytest.raises(ConversionError, match="match no parameter.*linear_mystery"):
        export_hf(lora, tmp_path / "hf", verify=False)
    assert not (tmp_path / "hf").exists() and not (tmp_path / "hf.partial").exists()


# ---------------------------------------------------------------------------------------------- merge


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    reader = CheckpointTensors(ckpt)
    return {
        k: reader.read(k) for k in reader.index if "_extra_state" not in k and not k.startswith("optimizer.")
    }


def test_streaming_merge_equals_the_in_memory_merge(lora_experts_run, tmp_path):
    from convert.merge_lora import merge_lora

    streamed = merge_lora(lora_experts_run, tmp_path / "streamed")
    in_memory = merge_lora(lora_experts_run, tmp_path / "in-memory", streaming=False)
    a, b = _weights(streamed), _weights(in_memory)
    assert sorted(a) == sorted(b) and not any(".adapter." in k for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # A merged checkpoint is a full one: it exports to what the LoRA checkpoint exports to.
    assert_bitwise_equal(
        tensors(export_hf(streamed, tmp_path / "hf-merged", verify=False)),
        tensors(export_hf(lora_experts_run, tmp_path / "hf-lora", verify=False)),
    )


def test_merge_keeps_an_existing_output_unless_told(lora_experts_run, tmp_path, monkeypatch):
    from convert.merge_lora import merge_lora

    out = merge_lora(lora_experts_run, tmp_path / "merged")
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(FileExistsError, match="overwrite"):
        merge_lora(lora_experts_run, out)
    calls = []
    real = TrainedTensors.read

    def interrupt_at_the_tenth_tensor(self, name):
        calls.append(name)
        if len(calls) == 10:
            raise KeyboardInterrupt
        return real(self, name)

    monkeypatch.setattr(TrainedTensors, "read", interrupt_at_the_tenth_tensor)
    with pytest.raises(KeyboardInterrupt):
        merge_lora(lora_experts_run, out, overwrite=True)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert not out.with_name("merged.partial").exists()


def test_merge_killed_midway_leaves_the_previous_output(lora_experts_run, tmp_path, kill_when_started):
    from convert.merge_lora import merge_lora

    out = merge_lora(lora_experts_run, tmp_path / "merged")
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    started = tmp_path / "writing"
    script = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from convert.checkpoint import TrainedTensors
        from convert.merge_lora import merge_lora

        real, calls = TrainedTensors.read, []
        def slow(self, name):
            calls.append(name)
            if len(calls) == 10:
                Path({str(started)!r}).touch()
                time.sleep(300)
            return real(self, name)
        TrainedTensors.read = slow
        merge_lora({str(lora_experts_run)!r}, {str(out)!r}, overwrite=True)
        """
    )
    kill_when_started(script, started, "the merge never reached its tenth tensor")
    assert any(out.with_name("merged.partial").rglob("*.distcp"))  # killed while writing weights ...
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_nemo_export_api_streams(tiny_nemo, tmp_path):
    """``llm.export_ckpt(..., target="hf")`` uses the registered exporter: this streaming one."""
    from nemo.collections import llm

    import convert.export_hf  # noqa: F401  (registers it)

    out = llm.export_ckpt(path=tiny_nemo, target="hf", output_path=tmp_path / "hf")
    assert (Path(out) / "export_report.json").exists()
    assert_bitwise_equal(tensors(out), tensors(export_hf(tiny_nemo, tmp_path / "cli", verify=False)))
