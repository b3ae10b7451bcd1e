"""The HF <-> megatron-core weight map is one table: both directions, the checkpoint check and the counts
derive from `convert.gpt_oss.WEIGHT_MAP`."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch

from convert import gpt_oss
from convert.gpt_oss import (
    COPY,
    HFTensors,
    McoreNames,
    ModelShape,
    expected_hf_shapes,
    hf_to_mcore,
    load_hf_config,
    mcore_to_hf,
    name_map,
    nemo_config_kwargs,
)

TE_LAYOUT = ["x.self_attention.linear_qkv.layer_norm_weight", "x.mlp.experts.linear_fc1.weight0"]


def _cfg(tiny_hf, **changes):
    return SimpleNamespace(**{**nemo_config_kwargs(load_hf_config(tiny_hf)), **changes})


@pytest.mark.parametrize("layout", [[], TE_LAYOUT], ids=["local", "transformer_engine"])
def test_every_hf_name_maps_to_megatron_and_back_to_itself(tiny_hf, layout):
    hf = HFTensors(tiny_hf)
    cfg, names = _cfg(tiny_hf), McoreNames(layout)
    to_hf = name_map(cfg, names)
    covered = {h for hs in to_hf.values() for h in hs}
    assert covered == set(hf) == set(expected_hf_shapes(load_hf_config(tiny_hf)))
    mc = hf_to_mcore(hf, cfg, names)
    assert set(mc) == set(to_hf)
    back = mcore_to_hf(mc, cfg, names)
    assert sorted(back) == sorted(hf)
    for name in hf:
        assert torch.equal(back[name], hf[name]), name


def test_tied_embeddings_drop_the_output_layer_and_export_the_embedding(tiny_hf):
    hf, cfg, names = (
        HFTensors(tiny_hf),
        _cfg(tiny_hf, share_embeddings_and_output_weights=True),
        McoreNames([]),
    )
    mc = hf_to_mcore(hf, cfg, names)
    assert "output_layer.weight" not in mc
    assert torch.equal(mcore_to_hf(mc, cfg, names)["lm_head.weight"], hf["model.embed_tokens.weight"])


def test_a_new_row_shows_up_in_both_directions_and_in_the_counts(tiny_hf, monkeypatch):
    extra = gpt_oss.WeightRule(
        "decoder.layers.{i}.extra.weight",
        ("model.layers.{i}.extra.weight",),
        COPY,
        "router, norms",
        lambda s: ((s.hidden,),),
    )
    shape = ModelShape.from_hf(tiny_hf)
    before = shape.total()
    monkeypatch.setattr(gpt_oss, "WEIGHT_MAP", (*gpt_oss.WEIGHT_MAP, extra))
    cfg, names = _cfg(tiny_hf), McoreNames([])
    hf = {k: v for k, v in HFTensors(tiny_hf).items()}
    hf.update(
        {f"model.layers.{i}.extra.weight": torch.full((shape.hidden,), float(i)) for i in range(shape.layers)}
    )
    mc = hf_to_mcore(hf, cfg, names)
    assert torch.equal(mc["decoder.layers.1.extra.weight"], hf["model.layers.1.extra.weight"])
    assert torch.equal(
        mcore_to_hf(mc, cfg, names)["model.layers.1.extra.weight"], hf["model.layers.1.extra.weight"]
    )
    assert "model.layers.0.extra.weight" in expected_hf_shapes(shape)
    assert shape.total() == before + shape.layers * shape.hidden


def test_counts_by_part_add_up_to_the_tensors(tiny_hf):
    shape = ModelShape.from_hf(tiny_hf)
    total = sum(t.numel() for t in HFTensors(tiny_hf).values())
    assert shape.total() == total == gpt_oss.count_parameters(tiny_hf)
    assert dataclasses.asdict(shape)["experts"] == 4
