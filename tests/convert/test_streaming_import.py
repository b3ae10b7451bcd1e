"""The streaming import writes the checkpoint the in-memory import writes, one source tensor at a time."""

from __future__ import annotations

import json
import weakref

import pytest
import torch
from torch.distributed.checkpoint import FileSystemReader

import convert.import_hf as importer
from convert import mxfp4, verify
from convert.gpt_oss import ConversionError
from convert.import_hf import import_hf


@pytest.fixture(scope="module")
def mxfp4_twin(tmp_path_factory):
    root = tmp_path_factory.mktemp("twins")
    return mxfp4.write_tiny_twins(root / "mxfp4", root / "bf16")[0]


@pytest.fixture(scope="module")
def both_ways(mxfp4_twin, tiny_hf, tmp_path_factory):
    """Per source (the MXFP4 twin in bf16, the fp32 tiny model): its streamed and its in-memory import."""
    root = tmp_path_factory.mktemp("both-ways")
    return {
        name: tuple(
            import_hf(src, root / f"{name}-{way}", verify=False, streaming=way == "streamed")
            for way in ("streamed", "in-memory")
        )
        for name, src in (("mxfp4", mxfp4_twin), ("fp32", tiny_hf))
    }


def _loaded_state(path):
    """The model as NeMo loads the checkpoint (``nemo_load``, as export, verify and resumes do)."""
    from nemo.lightning import teardown

    from convert.checkpoint import GptOssHFExporter

    model, trainer = GptOssHFExporter(str(path)).load()
    state = {k: v.clone() for k, v in model.module.state_dict().items() if not k.endswith("_extra_state")}
    teardown(trainer, model)
    return state


@pytest.mark.parametrize("source", ["mxfp4", "fp32"])
def test_streamed_and_in_memory_imports_load_bitwise_equal(both_ways, source):
    streamed, in_memory = (_loaded_state(p) for p in both_ways[source])
    assert sorted(streamed) == sorted(in_memory)
    experts = [k for k in streamed if ".local_experts." in k]
    assert experts and len(streamed) > len(experts)
    for name, t in in_memory.items():
        assert streamed[name].dtype == t.dtype, name
        assert torch.equal(streamed[name], t), name


@pytest.mark.parametrize("source", ["mxfp4", "fp32"])
def test_streamed_and_in_memory_imports_are_the_same_files(both_ways, source):
    """Same weight files byte for byte, same common.pt, metadata.json and context/; the .metadata index
    differs only in where it was written (its storage_meta: path and save id)."""
    streamed, in_memory = both_ways[source]
    files = sorted(p.relative_to(in_memory) for p in in_memory.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(streamed) for p in streamed.rglob("*") if p.is_file())
    assert {f.name for f in files} >= {
        "__0_0.distcp",
        "__0_1.distcp",
        "common.pt",
        "metadata.json",
        "io.json",
    }
    for f in files:
        if f.name != ".metadata":
            assert (streamed / f).read_bytes() == (in_memory / f).read_bytes(), f
    a, b = (FileSystemReader(str(p / "weights")).read_metadata() for p in (streamed, in_memory))
    for field in vars(b):
        if field != "storage_meta":
            assert getattr(a, field) == getattr(b, field), field


def test_streamed_import_passes_verify(mxfp4_twin, both_ways):
    report = verify.verify(mxfp4_twin, both_ways["mxfp4"][0])
    assert report.failed(1e-5) == [], report.summary()
    assert report.logits.top1_agreement == 1.0 and report.logits.logit_scale > 1.0


def test_streaming_reads_each_tensor_once_and_holds_one_at_a_time(mxfp4_twin, tmp_path, monkeypatch):
    """The model stays on the meta device, every source is read exactly once (the two halves of a gated fc1
    weight share one read), and when a source is read no tensor read before it is still alive."""
    reads, alive_at_read, devices = {}, [], set()
    alive = weakref.WeakSet()
    real_sources, real_stream = importer.mcore_sources, importer.stream_hf_weights

    def counted(name, read):
        def read_once():
            alive_at_read.append(len(alive))
            reads[name] = reads.get(name, 0) + 1
            t = read()
            alive.add(t)
            return t

        return read_once

    def sources(hf, cfg, names):
        return {name: counted(name, read) for name, read in real_sources(hf, cfg, names).items()}

    def stream(trainer, module, hf_path, cfg):
        devices.update(p.device.type for p in module.parameters())
        return real_stream(trainer, module, hf_path, cfg)

    monkeypatch.setattr(importer, "mcore_sources", sources)
    monkeypatch.setattr(importer, "stream_hf_weights", stream)
    import_hf(mxfp4_twin, tmp_path / "nemo", verify=False)
    assert devices == {"meta"}
    hf = json.loads((mxfp4_twin / "config.json").read_text())
    # Embeddings, final norm, head; per layer two norms, qkv, proj and router (weight, bias), sinks, and per
    # expert fc1 and fc2 (weight, bias).
    assert len(reads) == 3 + hf["num_hidden_layers"] * (9 + 4 * hf["num_local_experts"])
    assert set(reads.values()) == {1}
    assert max(alive_at_read) == 0


def test_streaming_refuses_a_mapping_that_misses_a_tensor(tiny_hf, tmp_path, monkeypatch):
    real_sources = importer.mcore_sources

    def without_router(hf, cfg, names):
        sources = real_sources(hf, cfg, names)
        del sources["decoder.layers.1.mlp.router.bias"]
        return sources

    monkeypatch.setattr(importer, "mcore_sources", without_router)
    with pytest.raises(ConversionError, match=r"no mapping fills.*decoder.layers.1.mlp.router.bias"):
        import_hf(tiny_hf, tmp_path / "nemo", verify=False)
    assert not (tmp_path / "nemo").exists() and not (tmp_path / "nemo.partial").exists()


def _stored_dtypes(nemo_dir) -> dict[str, torch.dtype]:
    from convert.checkpoint import CheckpointTensors

    ckpt = CheckpointTensors(nemo_dir)
    return {k: ckpt.dtype(k) for k, md in ckpt.index.items() if hasattr(md, "properties")}


# megatron-core's local layer spec builds its norms as torch.nn.RMSNorm, whose weight is fp32 whatever
# params_dtype says (transformer/torch_norm.py); a BF16 source's norm weights are widened exactly into it.
NORMS = {
    "module.decoder.layers.self_attention.linear_qkv.layer_norm_weight",
    "module.decoder.layers.mlp.linear_fc1.layer_norm_weight",
    "module.decoder.final_layernorm.weight",
}


def test_import_keeps_the_source_dtype_on_a_host_without_cuda(mxfp4_twin, both_ways, tmp_path):
    """The MXFP4 twin (its config says bfloat16) is stored in BF16 on this host, which trains in fp32; the
    model loaded from it computes in fp32 and holds the stored values exactly; --dtype float32 stores fp32."""
    from convert.checkpoint import CheckpointTensors
    from convert.gpt_oss import load_hf_config

    assert load_hf_config(mxfp4_twin)["torch_dtype"] == "bfloat16"
    streamed = both_ways["mxfp4"][0]
    stored = _stored_dtypes(streamed)
    assert {k for k, d in stored.items() if d != torch.bfloat16} == NORMS
    assert {stored[k] for k in NORMS} == {torch.float32}
    loaded = _loaded_state(streamed)
    assert {t.dtype for t in loaded.values()} == {torch.float32}
    ckpt = CheckpointTensors(streamed)
    qkv = ckpt.read("module.decoder.layers.self_attention.linear_qkv.weight", (0,))
    assert qkv.dtype == torch.bfloat16
    assert torch.equal(loaded["decoder.layers.0.self_attention.linear_qkv.weight"], qkv.float())

    wide = import_hf(mxfp4_twin, tmp_path / "fp32", verify=False, dtype="float32")
    assert set(_stored_dtypes(wide).values()) == {torch.float32}
    with pytest.raises(ConversionError, match="use one of source, bfloat16, float32"):
        import_hf(mxfp4_twin, tmp_path / "fp16", verify=False, dtype="float16")
