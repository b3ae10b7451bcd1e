"""Export a NeMo 2 gpt-oss checkpoint (full SFT, LoRA, or an import) to Hugging Face safetensors, streaming.

The checkpoint is read a tensor at a time (one layer's tensor, one expert's matrix: `CheckpointTensors`),
LoRA adapters are merged into each tensor as it is read, exactly as NeMo's merge does (`TrainedTensors`), and
each tensor is mapped to its Hugging Face name and layout (`convert.gpt_oss.WEIGHT_MAP`) and written into
safetensors shards whose headers were laid out from the shapes beforehand. Nothing is built: no NeMo model, no
state dict, no transformers model. Peak memory is the process plus the largest tensor in flight (20b: the
embeddings), whatever the number of layers.

Formats:
- ``dense``: every tensor in ``--dtype`` (default: the Hugging Face source's dtype, else the checkpoint's).
- ``mxfp4``: the expert matrices in OpenAI's MXFP4 layout (``*_blocks``/``*_scales``, ``quantization_config``),
  everything else BF16, the way ``openai/gpt-oss-*`` ships (120b: ~65 GB, servable on one Spark or one 80 GB
  GPU). An expert equal to its source expert (untouched by training) is copied byte for byte from the MXFP4
  source; every other expert is quantised (`convert.mxfp4.quantize`) and its error reported per tensor in
  ``export_report.json``. The default when the source (``--source``, or the one the import recorded) is MXFP4.

Before writing, the output size (from the shapes) is checked against the free space of its file system. The
output appears only when complete and (for small models) verified: it is written to ``<out>.partial`` and
renamed.

Examples:
    python -m convert.export_hf --nemo work/runs/<run>/checkpoints/<name>-last --out /tmp/exported-hf
    python -m convert.export_hf --nemo work/models/gpt-oss-tiny-nemo --out /tmp/tiny-mxfp4 --format mxfp4
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from nemo.collections.llm.gpt.model.gpt_oss import GPTOSSModel
from nemo.lightning import io

from convert import mxfp4
from convert import verify as verification
from convert.checkpoint import GptOssHFExporter, TrainedTensors, find_source, publishing
from convert.gpt_oss import (
    ARCHITECTURE,
    WEIGHT_MAP,
    ConversionError,
    HFTensors,
    McoreNames,
    ModelShape,
    WeightRule,
    _rules,
    hf_config_from_nemo,
    load_hf_config,
)

FORMATS = ("dense", "mxfp4")
# Shards of at most this many bytes (transformers' own default, 5 GB).
MAX_SHARD_BYTES = 5 * 10**9
_ST_CODES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.uint8: "U8"}


@dataclass
class ExpertReport:
    """What happened to one expert-matrix tensor (all experts of one layer) in an MXFP4 export."""

    copied: int = 0  # experts copied byte for byte from the source
    quantized: int = 0  # experts quantised from the trained weights
    max_abs_error: float = 0.0  # of the quantised experts: max |dequantised - trained|
    rel_rms_error: float = 0.0  # of the quantised experts: ||dequantised - trained|| / ||trained||
    # With an MXFP4 source: ||dequantised - trained|| / ||trained - source||, the rounding error against the
    # update training made. Near or above 1, re-quantisation has rounded the update away (the source's values
    # are on the MXFP4 grid, so an update smaller than the grid step rounds back to them).
    error_vs_update: float | None = None
    _sq: dict = field(default_factory=lambda: {"err": 0.0, "ref": 0.0, "update": 0.0}, repr=False)

    def add(self, trained: torch.Tensor, dequantized: torch.Tensor, original: torch.Tensor | None) -> None:
        diff = (dequantized.float() - trained.float()).double()
        self.quantized += 1
        self.max_abs_error = max(self.max_abs_error, float(diff.abs().max()))
        self._sq["err"] += float(diff.square().sum())
        self._sq["ref"] += float(trained.double().square().sum())
        self.rel_rms_error = math.sqrt(self._sq["err"] / self._sq["ref"]) if self._sq["ref"] else 0.0
        if original is not None:
            self._sq["update"] += float((trained.double() - original.double()).square().sum())
            self.error_vs_update = math.sqrt(self._sq["err"] / self._sq["update"])


@dataclass
class ExportReport:
    """``export_report.json``: how the export was made and what it changed."""

    checkpoint: str
    source: str | None
    format: str
    dtype: str
    lora_merged: int | None  # parameters an adapter delta was merged into (None: not a LoRA checkpoint)
    bytes: int
    experts: dict[str, ExpertReport] = field(default_factory=dict)

    def to_json(self) -> str:
        data = asdict(self)
        for r in data["experts"].values():
            r.pop("_sq")
        return json.dumps(data, indent=2) + "\n"

    def summary(self) -> str:
        lines = [f"{self.format} export in {self.dtype}, {self.bytes / 2**30:.2f} GiB of weights"]
        if self.lora_merged is not None:
            lines.append(f"LoRA adapters merged into {self.lora_merged} parameters")
        if self.experts:
            copied = sum(r.copied for r in self.experts.values())
            quantized = sum(r.quantized for r in self.experts.values())
            lines.append(
                f"experts: {copied} copied from the MXFP4 source byte for byte, {quantized} quantised"
            )
            if quantized:
                name, worst = max(self.experts.items(), key=lambda kv: kv[1].rel_rms_error)
                lines.append(
                    f"quantisation error: worst relative RMS {worst.rel_rms_error:.3%} ({name}), "
                    f"max |error| {max(r.max_abs_error for r in self.experts.values()):.3g}"
                )
                vs_update = [
                    r.error_vs_update for r in self.experts.values() if r.error_vs_update is not None
                ]
                if vs_update:
                    lines.append(
                        f"rounding error against the trained update: up to {max(vs_update):.2f}x the update "
                        "(near or above 1: re-quantisation loses what training changed; export --format dense)"
                    )
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------- source


def is_mxfp4(hf_path: Path | None) -> bool:
    return (
        hf_path is not None
        and (load_hf_config(hf_path).get("quantization_config") or {}).get("quant_method") == "mxfp4"
    )


# ------------------------------------------------------------------------------------------- layout


@dataclass
class Unit:
    """One `WEIGHT_MAP` row of one layer (or outside the layers): the HF tensors it writes."""

    rule: WeightRule
    layer: int | None
    tensors: list[tuple[str, torch.dtype, tuple[int, ...]]]

    @property
    def nbytes(self) -> int:
        return sum(math.prod(s) * _itemsize(d) for _, d, s in self.tensors)


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def plan(shape: ModelShape, fmt: str, dtype: torch.dtype) -> list[Unit]:
    """Every HF tensor of the export with its dtype and shape, grouped by `WEIGHT_MAP` row and layer."""
    units = []
    order = [None, *range(shape.layers)]
    for layer in order:
        for rule in _rules(WEIGHT_MAP, layer is not None, tied=shape.tied):
            tensors = []
            for name, s in zip(rule.hf, rule.hf_shapes(shape), strict=True):
                name = name.format(i=layer)
                if fmt == "mxfp4" and rule.mxfp4:
                    e, d_in, d_out = s
                    tensors.append((f"{name}_blocks", torch.uint8, (e, d_out, d_in // mxfp4.BLOCK, 16)))
                    tensors.append((f"{name}_scales", torch.uint8, (e, d_out, d_in // mxfp4.BLOCK)))
                else:
                    # MXFP4 checkpoints keep every other tensor in BF16, as the original does.
                    tensors.append((name, torch.bfloat16 if fmt == "mxfp4" else dtype, s))
            units.append(Unit(rule, layer, tensors))
    # The layers first, then the tensors outside them (final norm, head, embeddings), as transformers orders
    # a checkpoint's index.
    return [u for u in units if u.layer is not None] + [u for u in units if u.layer is None]


def shard(units: list[Unit], max_bytes: int = MAX_SHARD_BYTES) -> list[list[Unit]]:
    """Consecutive units into shards of at most ``max_bytes`` (a unit larger than that gets its own)."""
    shards: list[list[Unit]] = [[]]
    size = 0
    for unit in units:
        if shards[-1] and size + unit.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(unit)
        size += unit.nbytes
    return shards


def shard_names(n: int) -> list[str]:
    return (
        ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    )


class SafetensorsWriter:
    """A safetensors file written piece by piece: the header is laid out from the tensors' shapes first, then
    each tensor's bytes (or a part of them: one expert) are written at their place as they are produced.

    The format is the one ``safetensors`` reads (an 8-byte little-endian header length, a JSON header padded
    with spaces to 8 bytes, the tensors' bytes back to back in header order); ``close`` checks that every byte
    of every tensor was written exactly once. The library itself can only write tensors that are all in
    memory at once.
    """

    def __init__(self, path: Path, tensors: list[tuple[str, torch.dtype, tuple[int, ...]]]):
        self.path = path
        header, self.where, start = {}, {}, 0
        for name, dtype, shape in tensors:
            end = start + math.prod(shape) * _itemsize(dtype)
            header[name] = {"dtype": _ST_CODES[dtype], "shape": list(shape), "data_offsets": [start, end]}
            self.where[name] = (start, end, dtype, shape)
            start = end
        header["__metadata__"] = {"format": "pt"}
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self.data_start = 8 + len(raw)
        self.size = self.data_start + start
        self.written = {name: 0 for name, _, _ in tensors}
        self.file = open(path, "wb")  # noqa: SIM115  (closed by close())
        self.file.write(len(raw).to_bytes(8, "little") + raw)

    def write(self, name: str, data: torch.Tensor, first: int = 0) -> None:
        """Write ``data`` as tensor ``name``'s slice starting at index ``first`` of its first axis."""
        start, end, dtype, shape = self.where[name]
        if data.dtype != dtype or data.ndim != len(shape) or tuple(data.shape[1:]) != shape[1:]:
            raise ConversionError(f"{name}: writing {data.dtype} {tuple(data.shape)} into {dtype} {shape}")
        row = math.prod(shape[1:]) * _itemsize(dtype)
        raw = data.contiguous().reshape(-1).view(torch.uint8).numpy()
        offset = start + first * row
        if offset + raw.nbytes > end:
            raise ConversionError(f"{name}: a write past the end of the tensor")
        self.file.seek(self.data_start + offset)
        self.file.write(memoryview(raw))
        self.written[name] += raw.nbytes

    def close(self) -> None:
        short = [n for n, b in self.written.items() if b != self.where[n][1] - self.where[n][0]]
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        if short:
            raise ConversionError(f"{self.path.name}: tensors not written exactly once: {short[:4]}")


# ------------------------------------------------------------------------------------------- tensors


class Producer:
    """Writes one unit's HF tensors from the trained parameters, one megatron tensor (one expert) at a time."""

    def __init__(self, trained: TrainedTensors, fmt: str, dtype: torch.dtype, source: Path | None, report):
        self.trained, self.fmt, self.dtype, self.report = trained, fmt, dtype, report
        self.cfg = trained.config
        self.names = McoreNames([])  # the local spec's names: TrainedTensors reads by them
        quantized_source = fmt == "mxfp4" and is_mxfp4(source)
        self.source = HFTensors(source) if quantized_source else None

    def write(self, unit: Unit, out: SafetensorsWriter) -> None:
        rule, i, cfg = unit.rule, unit.layer, self.cfg
        mcore = rule.tied if rule.tied and cfg.share_embeddings_and_output_weights else rule.mcore
        if not rule.per_expert:
            parts = rule.transform.to_hf(self.trained[self.names(mcore, i=i)], cfg)
            for (name, dtype, _), part in zip(unit.tensors, parts, strict=True):
                out.write(name, part.to(dtype))
            return
        if self.fmt == "mxfp4" and rule.mxfp4:
            self._write_mxfp4(unit, mcore, out)
            return
        (name, dtype, _) = unit.tensors[0]
        for e in range(cfg.num_moe_experts):
            (part,) = rule.transform.to_hf(self.trained[self.names(mcore, i=i, e=e)], cfg)
            out.write(name, part.to(dtype).unsqueeze(0), first=e)

    def _write_mxfp4(self, unit: Unit, mcore: str, out: SafetensorsWriter) -> None:
        rule, i, cfg = unit.rule, unit.layer, self.cfg
        (blocks_name, _, _), (scales_name, _, _) = unit.tensors
        hf_name = blocks_name[: -len("_blocks")]
        report = self.report.experts.setdefault(hf_name, ExpertReport())
        for e in range(cfg.num_moe_experts):
            (part,) = rule.transform.to_hf(self.trained[self.names(mcore, i=i, e=e)], cfg)
            dense = part.t()  # HF [in, out] -> the [out, in] that MXFP4 blocks along `in`
            original = None
            if self.source is not None:
                blocks = self.source._read(blocks_name, e)
                scales = self.source._read(scales_name, e)
                original = mxfp4.dequantize(blocks, scales, dense.dtype, blocks_name)
                if torch.equal(original, dense):
                    out.write(blocks_name, blocks.unsqueeze(0), first=e)
                    out.write(scales_name, scales.unsqueeze(0), first=e)
                    report.copied += 1
                    continue
            blocks, scales = mxfp4.quantize(dense)
            report.add(dense, mxfp4.dequantize(blocks, scales, torch.float32, blocks_name), original)
            out.write(blocks_name, blocks.unsqueeze(0), first=e)
            out.write(scales_name, scales.unsqueeze(0), first=e)


# ------------------------------------------------------------------------------------------- export


def _side_files(trained: TrainedTensors, out: Path, fmt: str, dtype: torch.dtype) -> None:
    """config.json (with ``quantization_config`` for MXFP4), generation config, tokenizer and chat template."""
    from convert.checkpoint import _context

    cfg = trained.config
    gen = getattr(cfg, "generation_config", None)
    config = hf_config_from_nemo(cfg, gen)
    config.torch_dtype = torch.bfloat16 if fmt == "mxfp4" else dtype
    config.architectures = [ARCHITECTURE]
    config.save_pretrained(out)
    if fmt == "mxfp4":
        data = json.loads((out / "config.json").read_text())
        data["quantization_config"] = {"modules_to_not_convert": mxfp4.NOT_QUANTIZED, "quant_method": "mxfp4"}
        (out / "config.json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    if gen is not None:
        gen.save_pretrained(out)
    tokenizer = getattr(_context(trained.path, "model.tokenizer"), "tokenizer", None)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)


def preflight(out: Path, nbytes: int) -> None:
    """Refuse an output of ``nbytes`` (computed from the shapes) that would not fit in the free space of
    ``out``'s file system, naming both figures."""
    parent = out.parent
    parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(parent).free
    # The partial folder of an earlier interrupted export is replaced, so its space counts as free.
    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        free += sum(f.stat().st_size for f in partial.rglob("*") if f.is_file())
    need = nbytes + 64 * 2**20  # headers, config and tokenizer files
    if need > free:
        raise ConversionError(
            f"the output needs {need / 2**30:.2f} GiB and {parent} has {free / 2**30:.2f} GiB free; free some "
            "space, or write elsewhere (--out), or choose a smaller format (--format mxfp4, --dtype bfloat16)"
        )


def export_hf(
    nemo_path: str | Path,
    out: str | Path,
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
    verify: bool | None = None,
    fmt: str | None = None,
    source: str | Path | None = None,
    max_shard_bytes: int = MAX_SHARD_BYTES,
) -> Path:
    """Export ``nemo_path`` to an HF folder ``out``, a tensor at a time; nothing appears at ``out`` unless it
    succeeds.

    Args:
        nemo_path: NeMo checkpoint: a full fine-tune, an import, or a LoRA checkpoint (merged while exported).
        out: Hugging Face folder to write.
        dtype: Storage dtype of a dense export; default the source's (``source`` or the import's record),
            else the checkpoint's.
        overwrite: Replace an existing ``out``.
        verify: Compare the export's logits with the checkpoint's before publishing; ``None``: only for models
            up to ``convert.verify.MAX_PARAMS`` parameters. A lossless export (same dtype) must match to
            ``convert.verify.TOLERANCE``; a narrowing or quantised one is reported only.
        fmt: ``"dense"`` or ``"mxfp4"``; default ``"mxfp4"`` when the source is MXFP4.
        source: The Hugging Face folder the model was imported from; default the one the import recorded.
        max_shard_bytes: Largest safetensors file.

    Examples:
        python -m convert.export_hf --nemo work/models/gpt-oss-tiny-nemo --out /tmp/exported
    """
    nemo_path, out = Path(nemo_path), Path(out)
    trained = TrainedTensors(nemo_path)
    source = Path(source) if source is not None else find_source(nemo_path)
    if source is not None and not (source / "config.json").exists():
        raise ConversionError(f"--source {source} has no config.json: expected the Hugging Face model folder")
    if source is not None:
        mine = ModelShape.from_hf(hf_config_from_nemo(trained.config))
        theirs = ModelShape.from_hf(source)
        if (mine.layers, mine.hidden, mine.inter, mine.experts) != (
            theirs.layers,
            theirs.hidden,
            theirs.inter,
            theirs.experts,
        ):
            raise ConversionError(
                f"--source {source} is another model than {nemo_path} ({theirs} vs {mine}); pass the folder "
                "the model was imported from"
            )
    fmt = fmt or ("mxfp4" if is_mxfp4(source) else "dense")
    if fmt not in FORMATS:
        raise ConversionError(f"format {fmt!r}: use one of {', '.join(FORMATS)}")
    if dtype is None:
        dtype = getattr(torch, ModelShape.from_hf(source).dtype) if source is not None else None
        dtype = dtype or trained.config.params_dtype
    shape = ModelShape.from_hf(hf_config_from_nemo(trained.config))
    units = plan(shape, fmt, dtype)
    nbytes = sum(u.nbytes for u in units)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    preflight(out, nbytes)
    if verify is None:
        verify = shape.total() <= verification.MAX_PARAMS
    report = ExportReport(
        str(nemo_path), str(source) if source else None, fmt, str(dtype).replace("torch.", ""), None, nbytes
    )
    with publishing(out, overwrite) as tmp:
        tmp.mkdir(parents=True)
        _write_weights(trained, units, tmp, fmt, dtype, source, report, max_shard_bytes)
        unused = trained.unused_adapters()
        if unused:
            raise ConversionError(f"{nemo_path}: adapters that match no parameter of the model: {unused[:4]}")
        report.lora_merged = None if trained.changed is None else len(trained.changed)
        _side_files(trained, tmp, fmt, dtype)
        (tmp / "export_report.json").write_text(report.to_json())
        print(report.summary())
        if verify:
            lossless = fmt == "dense" and dtype == trained.config.params_dtype
            verification.enforce(
                verification.verify(tmp, nemo_path),
                f"export of {nemo_path} (HF side as reference)",
                "the export does not reproduce the NeMo checkpoint",
                strict=lossless,
            )
    return out


def _write_weights(trained, units, folder: Path, fmt, dtype, source, report, max_shard_bytes: int) -> None:
    from tqdm.auto import tqdm

    producer = Producer(trained, fmt, dtype, source, report)
    shards = shard(units, max_shard_bytes)
    names = shard_names(len(shards))
    weight_map = {}
    with tqdm(
        total=sum(u.nbytes for u in units), unit="B", unit_scale=True, desc="export", leave=False
    ) as bar:
        for name, units_of_shard in zip(names, shards, strict=True):
            tensors = [t for u in units_of_shard for t in u.tensors]
            writer = SafetensorsWriter(folder / name, tensors)
            try:
                for unit in units_of_shard:
                    producer.write(unit, writer)
                    bar.update(unit.nbytes)
            except BaseException:
                writer.file.close()  # the partial folder is removed by `publishing`
                raise
            writer.close()
            weight_map.update(dict.fromkeys((t[0] for t in tensors), name))
    if len(shards) > 1:
        index = {"metadata": {"total_size": report.bytes}, "weight_map": dict(sorted(weight_map.items()))}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


@io.model_exporter(GPTOSSModel, "hf")
class StreamingHFExporter(GptOssHFExporter):
    """NeMo's ``hf`` exporter of gpt-oss, so ``llm.export_ckpt(path, target="hf")`` streams too (`export_hf`)."""

    def apply(self, output_path: Path) -> Path:
        return export_hf(Path(str(self)), Path(output_path), dtype=self.dtype, overwrite=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Export a NeMo gpt-oss checkpoint (full, imported or LoRA) to Hugging Face safetensors."
    )
    parser.add_argument("--nemo", required=True, help="NeMo checkpoint folder (with context/ and weights/)")
    parser.add_argument("--out", required=True, help="Hugging Face folder to write")
    parser.add_argument("--format", choices=FORMATS, default=None, help="default: mxfp4 when the source is")
    parser.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "bfloat16"],
        help="default: the source's, else the model's",
    )
    parser.add_argument("--source", default=None, help="the HF folder the model was imported from")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument(
        "--verify", action=argparse.BooleanOptionalAction, default=None, help="default: only for small models"
    )
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype) if args.dtype else None
    out = export_hf(
        args.nemo, args.out, dtype, args.overwrite, verify=args.verify, fmt=args.format, source=args.source
    )
    print(f"Hugging Face checkpoint: {out}")


if __name__ == "__main__":
    main()
