"""MXFP4: dequantisation against the OCP MX spec, and MXFP4 vs BF16 twins of the tiny model end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import SHARED_DATA
from safetensors import safe_open

from convert import mxfp4
from convert.gpt_oss import ConversionError, HFTensors, check_hf_checkpoint, read_header

REAL_INDEX = SHARED_DATA / "gpt-oss" / "configs" / "gpt-oss-20b" / "model.safetensors.index.json"
REAL_CONFIG = REAL_INDEX.with_name("config.json")


def spec_e2m1(code: int) -> float:
    """OCP MX v1.0, FP4 E2M1: 1 sign bit, 2 exponent bits (bias 1), 1 mantissa bit, subnormal when E=0."""
    sign = -1.0 if code & 0b1000 else 1.0
    e, m = (code >> 1) & 0b11, code & 0b1
    if e == 0:
        return sign * math.ldexp(m / 2, 0)  # subnormal: 2^(1 - bias) * 0.m
    return sign * math.ldexp(1 + m / 2, e - 1)


def spec_dequantize(blocks: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Element by element in float64: X = 2^(s - 127) (E8M0), P_i from the byte's low nibble first."""
    flat_b = blocks.reshape(-1, 16).tolist()
    flat_s = scales.reshape(-1).tolist()
    out = []
    for row, s in zip(flat_b, flat_s, strict=True):
        x = math.ldexp(1.0, s - 127)
        for byte in row:
            out += [spec_e2m1(byte & 0xF) * x, spec_e2m1(byte >> 4) * x]
    return torch.tensor(out, dtype=torch.float64).reshape(*scales.shape[:-1], scales.shape[-1] * 32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dequantize_matches_the_spec_on_random_blocks(dtype):
    g = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, 256, (3, 5, 4, 16), generator=g, dtype=torch.uint8)
    scales = torch.randint(100, 150, (3, 5, 4), generator=g, dtype=torch.uint8)
    ours = mxfp4.dequantize(blocks, scales, dtype)
    assert ours.dtype == dtype and ours.shape == (3, 5, 128)
    assert torch.equal(ours, spec_dequantize(blocks, scales).to(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dequantize_edge_exponents(dtype):
    # Every code in every block, at the extreme and middle scales: 0 (2^-127, subnormal floats),
    # 1, 126, 127 (2^0), 128, 253 and 254 (2^127: magnitudes >= 2 overflow to inf, as the exact value does).
    codes = torch.arange(16, dtype=torch.uint8)
    block = (codes[0::2] | (codes[1::2] << 4)).repeat(2)  # 16 bytes = codes 0..15 twice
    edge = torch.tensor([0, 1, 126, 127, 128, 253, 254], dtype=torch.uint8).unsqueeze(-1)
    blocks = block.expand(len(edge), 1, 16).contiguous()
    ours = mxfp4.dequantize(blocks, edge, dtype)
    ref = spec_dequantize(blocks, edge).to(dtype)
    assert torch.equal(ours, ref)
    assert ours[0, 1].item() == math.ldexp(0.5, -127)  # smallest non-zero value, exact
    assert torch.isinf(ours[-1]).sum() == 16  # +-2, 3, 4, 6 times 2^127, in both copies of the codes
    assert ours[-1, 3].item() == math.ldexp(1.5, 127)  # largest finite


def test_nan_scale_is_refused_with_its_name():
    blocks = torch.zeros(2, 16, dtype=torch.uint8)
    with pytest.raises(mxfp4.MXFP4Error, match=r"layer\.x.*255 is NaN.*re-download"):
        mxfp4.dequantize(blocks, torch.tensor([127, 255], dtype=torch.uint8), name="layer.x")


def test_malformed_pairs_are_refused():
    with pytest.raises(mxfp4.MXFP4Error, match="not an MXFP4 pair"):
        mxfp4.dequantize(torch.zeros(2, 8, dtype=torch.uint8), torch.zeros(2, dtype=torch.uint8))
    with pytest.raises(mxfp4.MXFP4Error, match="uint8"):
        mxfp4.dequantize(torch.zeros(2, 16), torch.zeros(2, dtype=torch.uint8))


def test_quantize_is_nearest_and_idempotent():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 256, generator=g) * torch.logspace(-3, 3, 6).unsqueeze(-1)
    b, s = mxfp4.quantize(x)
    y = mxfp4.dequantize(b, s, torch.float32)
    # The spec's shared exponent floor(log2(amax)) - 2 puts |x| / scale in [0, 8); below 6 the error is at
    # most half a gap (<= 1 scale), above it the value saturates at 6 (< 2 scales).
    scale = torch.exp2(s.float() - 127).repeat_interleave(32, dim=-1)
    small = (x / scale).abs() <= 6
    assert ((x - y).abs()[small] <= scale[small]).all()
    assert ((x - y).abs() < 2 * scale).all()
    assert (y.reshape(6, 8, 32).abs().amax(-1) > 0).all()
    assert torch.equal(mxfp4.dequantize(*mxfp4.quantize(y), torch.float32), y)


def spec_codes(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The OCP MX rounding spelt out: for each value the nearest of the eight E2M1 magnitudes by an argmin over
    the distances (ties to the first, the smaller), the sign as bit 3; codes unpacked, and the scale bytes."""
    x = x.float().reshape(*x.shape[:-1], -1, 32)
    amax = x.abs().amax(-1, keepdim=True)
    exp = torch.where(amax > 0, torch.floor(torch.log2(amax)) - 2, torch.full_like(amax, -127.0)).clamp(
        -127, 127
    )
    scaled = x / torch.exp2(exp)
    code = (scaled.abs().unsqueeze(-1) - torch.tensor(mxfp4.FP4_VALUES[:8])).abs().argmin(-1)
    return code | ((scaled < 0).long() << 3), (exp.squeeze(-1) + 127).to(torch.uint8)


def test_quantize_rounds_as_the_spec_at_every_tie_and_edge():
    """Every midpoint between magnitudes (a tie), a hair either side, the magnitudes, saturation, zeros and
    signs, at the extreme exponents, plus random blocks over 80 binades: the same codes and scales as the
    argmin of the spec."""
    mags = torch.tensor(mxfp4.FP4_VALUES[:8])
    mids = (mags[1:] + mags[:-1]) / 2
    pattern = torch.cat(
        [mags, mids, mids * (1 + 2**-20), mids * (1 - 2**-20), torch.tensor([6.5, 0.0, -0.0])]
    )
    pattern = torch.cat([pattern, -pattern])  # two blocks of 32, |6.5| the largest: scale 2**0, 6.5 saturates
    g = torch.Generator().manual_seed(3)
    x = torch.cat(
        [pattern.reshape(2, 32) * 2.0**e for e in (-127, -126, -20, 0, 3, 125)]
        + [
            torch.randn(512, 32, generator=g)
            * torch.exp2(torch.randint(-40, 40, (512, 1), generator=g).float())
        ]
    )
    blocks, scales = mxfp4.quantize(x)
    codes, spec_scales = spec_codes(x)
    assert torch.equal(scales, spec_scales)
    assert torch.equal(blocks & 0x0F, codes[..., 0::2].to(torch.uint8))
    assert torch.equal(blocks >> 4, codes[..., 1::2].to(torch.uint8))


# ------------------------------------------------------------------------- tiny MXFP4 / BF16 twins


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    root = tmp_path_factory.mktemp("twins")
    return mxfp4.write_tiny_twins(root / "mxfp4", root / "bf16")


def _layer_pattern(name: str) -> str:
    parts = name.split(".")
    return ".".join("N" if p.isdigit() else p for p in parts)


def test_twins_follow_the_real_checkpoint_layout(twins):
    mx, bf = twins
    if not REAL_INDEX.exists():
        pytest.skip(f"real gpt-oss-20b index not present at {REAL_INDEX}")
    real = json.loads(REAL_INDEX.read_text())
    index = json.loads((mx / "model.safetensors.index.json").read_text())
    assert {_layer_pattern(k) for k in index["weight_map"]} == {_layer_pattern(k) for k in real["weight_map"]}
    assert set(index["weight_map"].values()) == set(real["weight_map"].values())
    for name in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
        assert index["weight_map"][name] == real["weight_map"][name], name
    cfg = json.loads((mx / "config.json").read_text())
    assert cfg["quantization_config"] == json.loads(REAL_CONFIG.read_text())["quantization_config"]

    headers = {}
    for f in sorted(mx.glob("*.safetensors")):
        headers.update(read_header(f))
    e, h, inter = cfg["num_local_experts"], cfg["hidden_size"], cfg["intermediate_size"]
    assert headers["model.layers.0.mlp.experts.gate_up_proj_blocks"] == ("uint8", (e, 2 * inter, h // 32, 16))
    assert headers["model.layers.0.mlp.experts.gate_up_proj_scales"] == ("uint8", (e, 2 * inter, h // 32))
    assert headers["model.layers.0.mlp.experts.down_proj_blocks"] == ("uint8", (e, h, inter // 32, 16))
    assert headers["model.layers.0.mlp.experts.down_proj_scales"] == ("uint8", (e, h, inter // 32))
    others = {k: v for k, v in headers.items() if not k.endswith(("_blocks", "_scales"))}
    assert {dtype for dtype, _ in others.values()} == {"bfloat16"}
    assert index["metadata"]["total_size"] == sum(
        math.prod(shape) * (1 if dtype == "uint8" else 2) for dtype, shape in headers.values()
    )
    check_hf_checkpoint(mx)
    check_hf_checkpoint(bf)


def test_bf16_twin_is_the_dequantised_mxfp4(twins):
    mx, bf = twins
    ours = HFTensors(mx)
    with safe_open(str(bf / "model.safetensors"), framework="pt") as f:
        assert sorted(f.keys()) == sorted(ours)
        for name in f.keys():
            assert torch.equal(f.get_tensor(name), ours[name]), name
    # The MXFP4 experts carry real values (not all zero, more than one exponent).
    scales = HFTensors(mx)._file["model.layers.0.mlp.experts.down_proj_scales"]
    with safe_open(str(scales), framework="pt") as f:
        assert f.get_tensor("model.layers.0.mlp.experts.down_proj_scales").unique().numel() > 1


def test_transformers_reads_the_mxfp4_twin_as_the_bf16_twin(twins):
    """transformers' own MXFP4 loader (it dequantises on a host without a GPU) sees our layout as we do."""
    from convert import verify

    ids = verify.probe_ids(twins[1])
    a, b = (verify.hf_logits(p, ids) for p in twins)
    assert b.abs().max() > 1.0
    assert torch.equal(a, b)


@pytest.fixture(scope="module")
def twin_imports(twins, tmp_path_factory):
    from convert.import_hf import import_hf

    root = tmp_path_factory.mktemp("twin-imports")
    return tuple(import_hf(p, root / p.name) for p in twins)


def _nemo_state(path):
    from nemo.lightning import teardown

    from convert.checkpoint import GptOssHFExporter

    model, trainer = GptOssHFExporter(str(path)).load()
    state = {k: v.clone() for k, v in model.module.state_dict().items() if not k.endswith("_extra_state")}
    teardown(trainer, model)
    return state


def test_mxfp4_and_bf16_import_to_identical_nemo_weights(twin_imports):
    a, b = (_nemo_state(p) for p in twin_imports)
    assert sorted(a) == sorted(b)
    experts = [k for k in a if ".local_experts." in k or ".experts.linear_fc" in k]
    assert experts
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_mxfp4_import_exports_to_transformers_with_equal_logits(twins, twin_imports, tmp_path):
    from convert import verify
    from convert.export_hf import export_hf

    exported = export_hf(twin_imports[0], tmp_path / "hf", verify=False)
    ids = verify.probe_ids(twins[0])
    reference = verify.hf_logits(twins[0], ids)  # transformers on the MXFP4 source
    result = verify.compare(verify.hf_logits(exported, ids), reference)
    assert result.logit_scale > 1.0
    assert result.max_abs_diff <= 1e-5, result
    assert result.top1_agreement == 1.0
    # And the exported weights are the BF16 twin's values exactly.
    src, out = HFTensors(twins[1], torch.float32), HFTensors(exported, torch.float32)
    for name in src:
        assert torch.equal(src[name], out[name]), name


def test_nan_scale_in_a_checkpoint_names_the_file(twins, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    bad = shutil.copytree(twins[0], tmp_path / "bad")
    shard = bad / "model-00001-of-00002.safetensors"  # layer 1
    tensors = load_file(shard)
    tensors["model.layers.1.mlp.experts.down_proj_scales"][0, 0, 0] = 255
    save_file(tensors, shard, metadata={"format": "pt"})
    with pytest.raises(
        ConversionError,
        match=r"model-00001-of-00002.safetensors: model.layers.1.mlp.experts.down_proj_scales.*NaN",
    ):
        HFTensors(bad)["model.layers.1.mlp.experts.down_proj"]
