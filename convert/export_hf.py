"""Export a NeMo 2 gpt-oss checkpoint (full SFT, or LoRA already merged) to Hugging Face safetensors.

Uses `convert.checkpoint.GptOssHFExporter` (NeMo's ``hf`` exporter, registered there, so ``llm.export_ckpt``
uses it too): the whole config is mapped back (stock NeMo writes 20b defaults for every field but layers and
experts), experts are written in transformers' layout, and the folder gets config, generation config,
tokenizer and chat template. The output appears only when complete and (for small models) verified: it is written to
``<out>.partial`` and renamed.

Examples:
    python -m convert.export_hf --nemo work/runs/tiny-lora/merged --out work/models/gpt-oss-tiny-finetuned-hf
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from convert import verify as verification
from convert.checkpoint import GptOssHFExporter, publishing, require_complete
from convert.gpt_oss import count_parameters


def export_hf(
    nemo_path: str | Path,
    out: str | Path,
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
    verify: bool | None = None,
):
    """Export ``nemo_path`` to an HF folder ``out``; nothing appears at ``out`` unless the export succeeds.

    Written to ``<out>.partial``, verified against the NeMo checkpoint (logits, layer outputs, config fields,
    expert orientation) when that is cheap, then renamed to ``out``. An interruption leaves at most
    ``<out>.partial``, which transformers cannot mistake for ``out`` and the next export replaces.

    Args:
        nemo_path: NeMo checkpoint (full SFT, or a LoRA run merged by ``convert.merge_lora``).
        out: Hugging Face folder to write.
        dtype: Storage dtype; default the model's.
        overwrite: Replace an existing ``out``.
        verify: Check the export before publishing it; ``None``: only for models up to
            ``convert.verify.MAX_PARAMS`` parameters. A lossless export (same dtype) must match to
            ``convert.verify.TOLERANCE``; a narrowing one is reported only.

    Examples:
        python -m convert.export_hf --nemo work/runs/tiny-lora/merged --out /tmp/exported
    """
    nemo_path, out = Path(nemo_path), Path(out)
    require_complete(
        nemo_path, "a LoRA run must be merged first (python -m convert.merge_lora)", "write it again"
    )
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    exporter = GptOssHFExporter(str(nemo_path))
    exporter.dtype = dtype
    if verify is None:
        verify = count_parameters(exporter.config.to_dict()) <= verification.MAX_PARAMS
    with publishing(out) as tmp:
        exporter.apply(tmp)
        if verify:
            lossless = (dtype or exporter.nemo_config.params_dtype) == exporter.nemo_config.params_dtype
            verification.enforce(
                verification.verify(tmp, nemo_path),
                f"export of {nemo_path} (HF side as reference)",
                "the export does not reproduce the NeMo checkpoint",
                strict=lossless,
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Export a NeMo gpt-oss checkpoint to Hugging Face safetensors."
    )
    parser.add_argument("--nemo", required=True, help="NeMo checkpoint folder (with context/ and weights/)")
    parser.add_argument("--out", required=True, help="Hugging Face folder to write")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16"], help="default: the model's")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument(
        "--verify", action=argparse.BooleanOptionalAction, default=None, help="default: only for small models"
    )
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype) if args.dtype else None
    out = export_hf(args.nemo, args.out, dtype, args.overwrite, verify=args.verify)
    print(f"Hugging Face checkpoint: {out}")


if __name__ == "__main__":
    main()
