"""MXFP4 (OCP Microscaling, FP4 E2M1 elements with an E8M0 scale per 32) as gpt-oss checkpoints store it.

A block of 32 values is 16 bytes (two E2M1 codes per byte, the element with the lower index in the low
nibble) and one scale byte ``s``: value = e2m1(code) * 2**(s - 127). gpt-oss quantises only the expert
matrices, along their input dimension: for the dense ``[E, out, in]`` weight, ``*_blocks`` is
``[E, out, in / 32, 16]`` and ``*_scales`` is ``[E, out, in / 32]``.

Scale byte 255 is NaN in E8M0 (the spec makes the whole block NaN). A checkpoint holding one is corrupt
or not MXFP4, so `dequantize` refuses it and names the tensor rather than propagating NaN into training.
Scale 254 times an element of magnitude >= 2 exceeds the float32 and bfloat16 range and gives inf, as an
IEEE conversion of the exact value does.

`write_tiny_twins` writes the tiny gpt-oss twice: as an MXFP4 checkpoint with the tensor names, dtypes and
layouts of ``openai/gpt-oss-20b``, and as a BF16 checkpoint holding exactly the dequantised values, so the
two must import to bitwise identical weights.

Examples:
    python -m convert.mxfp4 --mxfp4 work/models/gpt-oss-tiny-mxfp4 --bf16 work/models/gpt-oss-tiny-bf16
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import torch

BLOCK = 32
SCALE_BIAS = 127
NAN_SCALE = 255
# E2M1 code -> value; code bit 3 is the sign, bits 2-1 the exponent (bias 1), bit 0 the mantissa.
FP4_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
# Tensors the real checkpoint keeps in BF16 (its config's quantization_config).
NOT_QUANTIZED = ["model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]
EXPERT_MATRICES = ("gate_up_proj", "down_proj")
# Rows of 16 bytes dequantised at once: bounds the index temporaries at 2**18 * 32 * 8 B = 64 MiB.
_ROWS_PER_CHUNK = 1 << 18
# Halfway between neighbouring E2M1 magnitudes (0, 0.5, 1, 1.5, 2, 3, 4, 6).
_MIDPOINTS = torch.tensor([(a + b) / 2 for a, b in zip(FP4_VALUES[:7], FP4_VALUES[1:8], strict=True)])


class MXFP4Error(ValueError):
    """MXFP4 blocks and scales that cannot be dequantised."""


def dequantize(
    blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.bfloat16, name: str = "tensor"
) -> torch.Tensor:
    """MXFP4 -> dense: ``blocks [..., G, 16]`` and ``scales [..., G]`` (uint8) -> ``[..., G * 32]``.

    Works in chunks of rows, so temporaries stay small whatever the tensor size (transformers and stock
    NeMo index a 32-entry table with an int64 tensor as large as the output).

    Args:
        blocks: Packed E2M1 codes, low nibble first.
        scales: E8M0 exponents, bias 127; 255 (NaN) is refused.
        dtype: Output dtype; every finite MXFP4 value is exact in bfloat16 and float32.
        name: Tensor name for error messages.

    Examples:
        python -c "import torch; from convert.mxfp4 import dequantize; print(dequantize(torch.tensor([[0x21] * 16], dtype=torch.uint8), torch.tensor([127], dtype=torch.uint8)))"
    """
    if blocks.dtype != torch.uint8 or scales.dtype != torch.uint8:
        raise MXFP4Error(
            f"{name}: MXFP4 blocks and scales must be uint8, got {blocks.dtype} and {scales.dtype}"
        )
    if blocks.shape[-1:] != (BLOCK // 2,) or blocks.shape[:-1] != scales.shape:
        raise MXFP4Error(
            f"{name}: blocks {tuple(blocks.shape)} and scales {tuple(scales.shape)} are not an MXFP4 pair "
            f"(expected blocks [..., G, {BLOCK // 2}] and scales [..., G])"
        )
    if bool((scales == NAN_SCALE).any()):
        raise MXFP4Error(
            f"{name}: scale byte 255 is NaN in E8M0; the checkpoint is corrupt or not MXFP4 "
            "(re-download it, or convert from a BF16 copy)"
        )
    lut = torch.tensor(FP4_VALUES, dtype=torch.float32)
    rows_b = blocks.reshape(-1, BLOCK // 2)
    rows_s = scales.reshape(-1, 1)
    out = torch.empty(rows_b.shape[0], BLOCK, dtype=dtype)
    for r0 in range(0, rows_b.shape[0], _ROWS_PER_CHUNK):
        b = rows_b[r0 : r0 + _ROWS_PER_CHUNK]
        vals = torch.stack((lut[(b & 0x0F).int()], lut[(b >> 4).int()]), dim=-1).flatten(-2)
        # 2**(s - 127) for s in 0..254 is a normal or subnormal float32: the product is exact or overflows.
        exp = rows_s[r0 : r0 + _ROWS_PER_CHUNK].int() - SCALE_BIAS
        out[r0 : r0 + _ROWS_PER_CHUNK] = torch.ldexp(vals, exp).to(dtype)
    return out.reshape(*scales.shape[:-1], scales.shape[-1] * BLOCK)


def quantize(dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense ``[..., K]`` (K a multiple of 32) -> MXFP4 ``(blocks [..., K/32, 16], scales [..., K/32])``.

    The OCP MX recipe: the block's shared exponent is ``floor(log2(max |x|)) - 2`` (2 being E2M1's largest
    exponent), each element is rounded to the nearest E2M1 value and saturates at +-6.

    Examples:
        python -c "import torch; from convert.mxfp4 import quantize; print(quantize(torch.linspace(-6, 6, 32)))"
    """
    if dense.shape[-1] % BLOCK:
        raise MXFP4Error(f"last dimension {dense.shape[-1]} is not a multiple of {BLOCK}")
    x = dense.float().reshape(*dense.shape[:-1], -1, BLOCK)
    amax = x.abs().amax(-1, keepdim=True)
    exp = torch.where(amax > 0, torch.floor(torch.log2(amax)) - 2, torch.full_like(amax, -SCALE_BIAS))
    exp = exp.clamp(-SCALE_BIAS, NAN_SCALE - 1 - SCALE_BIAS)
    scaled = x / torch.exp2(exp)
    # Nearest magnitude, ties to the smaller: the number of midpoints between neighbours below |x| (each
    # midpoint is exact in float32, so this equals an argmin over the eight distances, without the eight-fold
    # temporary: half the time on a 20b expert).
    code = torch.bucketize(scaled.abs(), _MIDPOINTS)
    code = code | ((scaled < 0).long() << 3)
    code = code.to(torch.uint8)
    blocks = code[..., 0::2] | (code[..., 1::2] << 4)
    return blocks.contiguous(), (exp.squeeze(-1) + SCALE_BIAS).to(torch.uint8)


def _copy_side_files(src: Path, dst: Path) -> None:
    for f in src.iterdir():
        if f.is_file() and f.suffix != ".safetensors" and f.name not in ("config.json",):
            shutil.copy2(f, dst / f.name)


def write_tiny_twins(
    mxfp4_dir: str | Path, bf16_dir: str | Path, shape: dict | None = None, seed: int | None = None
) -> tuple[Path, Path]:
    """Write the tiny gpt-oss as an MXFP4 checkpoint and as its exact BF16 twin; return both folders.

    The MXFP4 folder mirrors ``openai/gpt-oss-20b``: its three files ``model-0000{0,1,2}-of-00002`` with an
    index (layers in the first two, embeddings, final norm and head in the last), expert matrices as
    ``*_blocks``/``*_scales`` uint8 pairs, every other tensor BF16, and ``quantization_config`` in
    ``config.json``. The BF16 folder holds the dequantised experts in transformers' layout
    (``[E, in, out]``), so both describe the same function bit for bit.

    Args:
        mxfp4_dir: Folder for the MXFP4 checkpoint (replaced).
        bf16_dir: Folder for the BF16 twin (replaced).
        shape: Model shape; defaults to ``conf/model/gpt_oss_tiny.yaml``.
        seed: Weight seed; defaults to the shape's.

    Examples:
        python -m convert.mxfp4 --mxfp4 /tmp/tiny-mxfp4 --bf16 /tmp/tiny-bf16
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    from convert.tiny import build

    mxfp4_dir, bf16_dir = Path(mxfp4_dir), Path(bf16_dir)
    mxfp4_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=mxfp4_dir.parent) as scratch:
        src = build(Path(scratch) / "bf16-source", shape=shape, dtype=torch.bfloat16, seed=seed)
        with safe_open(str(src / "model.safetensors"), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        dense, packed = {}, {}
        for name, t in tensors.items():
            if name.rsplit(".", 1)[-1] in EXPERT_MATRICES:
                # transformers' [E, in, out] -> the [E, out, in] that MXFP4 blocks along `in`.
                blocks, scales = quantize(t.transpose(1, 2))
                packed[f"{name}_blocks"], packed[f"{name}_scales"] = blocks, scales
                exact = dequantize(blocks, scales, torch.bfloat16, name)
                dense[name] = exact.transpose(1, 2).contiguous()
            else:
                dense[name] = packed[name] = t.to(torch.bfloat16).contiguous()
        config = json.loads((src / "config.json").read_text())

        for out, write in ((bf16_dir, _write_single), (mxfp4_dir, _write_like_20b)):
            tmp = out.with_name(out.name + ".partial")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            _copy_side_files(src, tmp)
            cfg = dict(config, torch_dtype="bfloat16")
            if out == mxfp4_dir:
                cfg["quantization_config"] = {
                    "modules_to_not_convert": NOT_QUANTIZED,
                    "quant_method": "mxfp4",
                }
            write(tmp, dense if out == bf16_dir else packed, save_file)
            (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
            shutil.rmtree(out, ignore_errors=True)
            tmp.rename(out)
    return mxfp4_dir, bf16_dir


def _write_single(folder: Path, tensors: dict, save_file) -> None:
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


def _write_like_20b(folder: Path, tensors: dict, save_file) -> None:
    # The real checkpoint's three files: layers in the first two, embeddings, final norm and head in the last.
    files = [f"model-0000{i}-of-00002.safetensors" for i in range(3)]
    shards = {f: {} for f in files}
    for name, t in tensors.items():
        layer = int(name.split(".")[2]) if name.startswith("model.layers.") else None
        shards[files[2] if layer is None else files[layer % 2]][name] = t
    weight_map = {}
    for file, part in shards.items():
        save_file(part, str(folder / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, file))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Write the tiny gpt-oss as MXFP4 and as its exact BF16 twin."
    )
    parser.add_argument("--mxfp4", default="work/models/gpt-oss-tiny-mxfp4", help="MXFP4 checkpoint folder")
    parser.add_argument("--bf16", default="work/models/gpt-oss-tiny-bf16", help="BF16 twin folder")
    args = parser.parse_args()
    for path in write_tiny_twins(args.mxfp4, args.bf16):
        print(f"written {path}")


if __name__ == "__main__":
    main()
