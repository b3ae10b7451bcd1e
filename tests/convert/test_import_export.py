"""Import and export: atomic outputs, input checks before heavy work, and the verify report."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from convert import verify
from convert.checkpoint import is_complete
from convert.export_hf import export_hf
from convert.gpt_oss import ConversionError, HFTensors, check_hf_checkpoint
from convert.import_hf import GptOssHFImporter, import_hf

# ---------------------------------------------------------------------------------------- atomic writes


# The export's interruption tests (in-process and SIGKILL) are in test_export_streaming.py.


@pytest.mark.parametrize("streaming", [True, False], ids=["streaming", "in-memory"])
def test_import_interrupted_midway_leaves_no_output(tiny_hf, tmp_path, monkeypatch, streaming):
    """Interrupted when it reads layer 1: streaming, the weight files are being written by then."""
    out = tmp_path / "nemo"
    weights = out.with_name("nemo.partial") / "weights"
    files_then = []
    real_get = HFTensors._get

    def interrupt_at_layer_1(self, name, e):
        if name.startswith("model.layers.1."):
            files_then.extend(weights.glob("*.distcp"))
            raise KeyboardInterrupt
        return real_get(self, name, e)

    monkeypatch.setattr(HFTensors, "_get", interrupt_at_layer_1)
    with pytest.raises(KeyboardInterrupt):
        import_hf(tiny_hf, out, verify=False, streaming=streaming)
    assert bool(files_then) == streaming
    assert not out.exists() and not out.with_name("nemo.partial").exists()
    monkeypatch.undo()  # the process is usable again: the next import succeeds
    assert is_complete(import_hf(tiny_hf, out, verify=False, streaming=streaming))


def test_incomplete_checkpoints_are_not_taken_for_complete(tiny_hf, tiny_nemo, tmp_path):
    assert is_complete(tiny_nemo)
    broken = shutil.copytree(tiny_nemo, tmp_path / "broken")
    (broken / "weights" / "metadata.json").unlink()
    assert not is_complete(broken)
    with pytest.raises(FileNotFoundError, match="incomplete NeMo checkpoint.*import again"):
        export_hf(broken, tmp_path / "hf")
    with pytest.raises(ConversionError, match="not a complete NeMo checkpoint; re-run with --overwrite"):
        import_hf(tiny_hf, broken)


# ----------------------------------------------------------------------------- inputs checked up front


@pytest.fixture
def no_model_build(monkeypatch):
    """Fail the test if the importer gets as far as building the target model."""

    def forbidden(self):
        raise AssertionError("the model was built before the input was checked")

    monkeypatch.setattr(GptOssHFImporter, "init", forbidden)


def _copy(tiny_hf, tmp_path, **config_changes):
    folder = shutil.copytree(tiny_hf, tmp_path / "hf")
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(config_changes)
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def test_config_disagreeing_with_tensors(tiny_hf, tmp_path, no_model_build):
    folder = _copy(tiny_hf, tmp_path, intermediate_size=128)
    with pytest.raises(ConversionError) as e:
        import_hf(folder, tmp_path / "nemo")
    msg = str(e.value)
    assert "gate_up_proj: file (4, 64, 192) vs config (4, 64, 256)" in msg
    assert "same model" in msg
    assert not (tmp_path / "nemo").exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"architectures": ["LlamaForCausalLM"]}, "architectures=.*GptOssForCausalLM"),
        ({"model_type": "llama"}, "model_type='llama'.*'gpt_oss' only"),
        ({"quantization_config": {"quant_method": "gptq"}}, "gptq.*not supported"),
        ({"num_hidden_layers": 3}, "missing.*model.layers.2"),
    ],
)
def test_unknown_models_are_refused(tiny_hf, tmp_path, no_model_build, change, message):
    with pytest.raises(ConversionError, match=message):
        import_hf(_copy(tiny_hf, tmp_path, **change), tmp_path / "nemo")


def test_missing_files(tiny_hf, tmp_path, no_model_build):
    with pytest.raises(ConversionError, match="no config.json.*convert.tiny"):
        import_hf(tmp_path, tmp_path / "nemo")
    folder = _copy(tiny_hf, tmp_path)
    index = {"weight_map": {"model.norm.weight": "model-00001-of-00002.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ConversionError, match="missing file.*incomplete.*huggingface-cli download"):
        check_hf_checkpoint(folder)


def test_pickle_weights_are_never_loaded(tiny_hf, tmp_path, no_model_build):
    folder = _copy(tiny_hf, tmp_path)
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"not to be unpickled")
    with pytest.raises(ConversionError, match="pickle weights.*never loaded.*safetensors"):
        import_hf(folder, tmp_path / "nemo")


def test_remote_code_is_not_trusted(tiny_hf, tmp_path):
    folder = _copy(tiny_hf, tmp_path)
    marker = tmp_path / "remote-code-ran"
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    tok_cfg = json.loads((folder / "tokenizer_config.json").read_text())
    tok_cfg["auto_map"] = {"AutoTokenizer": ["evil.EvilTokenizer", None]}
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    tokenizer = GptOssHFImporter(str(folder)).tokenizer  # the repository's own code is ignored
    assert not marker.exists()
    assert type(tokenizer.tokenizer).__name__ == "PreTrainedTokenizerFast"


# ------------------------------------------------------------------------------------------------ verify


def test_verify_report_on_the_tiny_import(tiny_hf, tiny_nemo):
    report = verify.verify(tiny_hf, tiny_nemo)
    assert report.failed(1e-5) == [], report.summary()
    assert report.logits.top1_agreement == 1.0 and report.logits.logit_scale > 1.0
    assert len(report.layer_cosine) == 2 and min(report.layer_cosine) > 1 - 1e-6
    fields = {c.field: c for c in report.checks}
    assert fields["window_size"].actual == "[7, 0]"  # HF window 8 keys = megatron (7, 0); stock NeMo: 128
    assert fields["yarn_mscale_all_dim"].actual == "0.0"  # stock NeMo: 1.0, attention scale off by 1.35x
    assert sum("orientation" in f for f in fields) == 4


def test_verify_catches_wrong_window_and_yarn(tiny_hf, tiny_nemo, tmp_path):
    rope = json.loads((tiny_hf / "config.json").read_text())["rope_scaling"]
    folder = _copy(tiny_hf, tmp_path, sliding_window=129, rope_scaling={**rope, "mscale_all_dim": 1.0})
    bad = {c.field for c in verify.config_checks(folder, tiny_nemo) if not c.ok}
    assert bad == {"window_size", "yarn_mscale_all_dim"}


def test_expert_orientation_check_sees_square_transposes():
    """gpt-oss-20b's down_proj is square: only the values tell a transposed expert apart."""
    g = torch.Generator().manual_seed(0)
    ref = {
        "model.layers.0.mlp.experts.gate_up_proj": torch.randn(2, 4, 6, generator=g),
        "model.layers.0.mlp.experts.down_proj": torch.randn(2, 5, 5, generator=g),
    }
    swapped = {**ref, "model.layers.0.mlp.experts.down_proj": ref["model.layers.0.mlp.experts.down_proj"].mT}
    checks = {c.field.split(".")[-1]: c for c in verify.expert_checks(ref, swapped, 1)}
    assert checks["gate_up_proj orientation"].ok
    assert not checks["down_proj orientation"].ok and checks["down_proj orientation"].actual == "transposed"


def test_export_verifies_itself_by_default(tiny_nemo, tmp_path, capsys):
    export_hf(tiny_nemo, tmp_path / "hf")
    out = capsys.readouterr().out
    assert "verify export" in out and "ok  window_size: [7, 0]" in out and "BAD" not in out
    report = verify.verify(tmp_path / "hf", tmp_path / "hf")  # HF vs HF: the same report shape
    assert report.failed(0.0) == [] and report.layer_cosine == [pytest.approx(1.0)] * 2
