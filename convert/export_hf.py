"""Export a NeMo 2 gpt-oss checkpoint (full SFT, or LoRA already merged) to Hugging Face safetensors.

Registers `GptOssHFExporter` as NeMo's ``hf`` exporter of ``GPTOSSModel`` (so ``llm.export_ckpt`` uses it):
the whole config is mapped back (stock NeMo writes 20b defaults for every field but layers and experts),
experts are written in transformers' layout, and the folder gets config, generation config, tokenizer and
chat template. The output appears only when complete and (for small models) verified: it is written to
``<out>.partial`` and renamed.

Examples:
    python -m convert.export_hf --nemo work/runs/tiny-lora/merged --out work/models/gpt-oss-tiny-finetuned-hf
"""

from __future__ import annotations

import argparse
import shutil
from functools import cached_property
from pathlib import Path

import torch
from nemo.collections.llm.gpt.model.gpt_oss import GPTOSSModel, HFGPTOSSExporter
from nemo.lightning import io, teardown

from convert.gpt_oss import McoreNames, count_parameters, hf_config_from_nemo, mcore_to_hf
from compat import cpu


@io.model_exporter(GPTOSSModel, "hf")
class GptOssHFExporter(HFGPTOSSExporter):
    """NeMo's ``hf`` exporter for gpt-oss with a faithful config and expert layout."""

    # Stock ``init`` reads this attribute, which its ``apply`` never sets (AttributeError).
    trust_remote_code = False
    dtype: torch.dtype | None = None

    @cached_property
    def nemo_config(self):
        return io.load_context(str(self), subpath="model.config")

    @cached_property
    def config(self):
        return hf_config_from_nemo(self.nemo_config, getattr(self.nemo_config, "generation_config", None))

    def load(self):
        """The NeMo model of this checkpoint, on the host, and its trainer (for teardown)."""
        cpu.enable()
        return self.nemo_load(str(self), cpu=True)

    def hf_state_dict(self, model) -> dict[str, torch.Tensor]:
        sd = {k: v for k, v in model.module.state_dict().items() if not k.endswith("_extra_state")}
        return mcore_to_hf(sd, model.config, McoreNames(sd))

    def apply(self, output_path: Path) -> Path:
        from transformers import GptOssForCausalLM
        from transformers.modeling_utils import no_init_weights

        model, trainer = self.load()
        state = self.hf_state_dict(model)
        teardown(trainer, model)
        dtype = self.dtype or self.nemo_config.params_dtype
        config = self.config
        config.torch_dtype = dtype
        with no_init_weights():
            hf_model = GptOssForCausalLM(config).to(dtype)
        missing, unexpected = hf_model.load_state_dict(
            {k: v.to(dtype) for k, v in state.items()}, strict=False
        )
        if missing or unexpected:
            raise RuntimeError(
                f"export mapping incomplete: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        gen = getattr(self.nemo_config, "generation_config", None)
        if gen is not None:
            hf_model.generation_config = gen
        hf_model.save_pretrained(output_path, safe_serialization=True)
        tokenizer = getattr(self.tokenizer, "tokenizer", None)
        if tokenizer is not None:
            tokenizer.save_pretrained(output_path)
        return output_path


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
            ``VERIFY_MAX_PARAMS`` parameters. A lossless export (same dtype) must match to
            ``VERIFY_TOLERANCE``; a narrowing one is reported only.

    Examples:
        python -m convert.export_hf --nemo work/runs/tiny-lora/merged --out /tmp/exported
    """
    from convert.import_hf import VERIFY_MAX_PARAMS, is_complete

    nemo_path, out = Path(nemo_path), Path(out)
    if not (nemo_path / "context").is_dir() or not (nemo_path / "weights").is_dir():
        raise FileNotFoundError(
            f"{nemo_path} is not a NeMo checkpoint (expected context/ and weights/ inside); "
            "a LoRA run must be merged first (python -m convert.merge_lora)"
        )
    if not is_complete(nemo_path):
        raise FileNotFoundError(
            f"{nemo_path} is an incomplete NeMo checkpoint (no weights/metadata.json or context/io.json); "
            "it was interrupted while being written: write it again"
        )
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    exporter = GptOssHFExporter(str(nemo_path))
    exporter.dtype = dtype
    if verify is None:
        verify = count_parameters(exporter.config.to_dict()) <= VERIFY_MAX_PARAMS
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        exporter.apply(tmp)
        if verify:
            lossless = (dtype or exporter.nemo_config.params_dtype) == exporter.nemo_config.params_dtype
            _verify(tmp, nemo_path, strict=lossless)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def _verify(hf_dir: Path, nemo_path: Path, strict: bool) -> None:
    from convert import verify
    from convert.import_hf import VERIFY_TOLERANCE

    report = verify.verify(hf_dir, nemo_path)
    print(f"verify export of {nemo_path} (HF side as reference):\n{report.summary()}")
    failed = report.failed(VERIFY_TOLERANCE)
    if failed and strict:
        raise RuntimeError("the export does not reproduce the NeMo checkpoint:\n  " + "\n  ".join(failed))


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
