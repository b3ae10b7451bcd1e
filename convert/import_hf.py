"""Import a Hugging Face gpt-oss checkpoint (MXFP4 or BF16) into a NeMo 2 checkpoint.

Registers `GptOssHFImporter` as NeMo's ``hf`` importer of ``GPTOSSModel``, so ``llm.import_ckpt`` and
``nemo://``/``hf://`` resumes in the recipes use it. It maps the whole HF config (see `convert.gpt_oss`),
normalises the expert layout of both checkpoint kinds, keeps the source dtype unless told otherwise, and
never loads pickles.

Examples:
    python -m convert.import_hf --hf work/models/gpt-oss-tiny-hf --out work/models/gpt-oss-tiny-nemo
"""

from __future__ import annotations

import argparse
import shutil
from functools import cached_property
from pathlib import Path

import torch
from nemo.collections.llm.gpt.model.gpt_oss import GPTOSSModel, HFGPTOSSImporter
from nemo.lightning import io, teardown

from convert.gpt_oss import (
    ConversionError,
    McoreNames,
    hf_to_mcore,
    iter_hf_tensors,
    load_generation_config,
    nemo_config_from_hf,
)
from recipes import cpu


@io.model_importer(GPTOSSModel, "hf")
class GptOssHFImporter(HFGPTOSSImporter):
    """NeMo's ``hf`` importer for gpt-oss with a faithful config and expert layout.

    ``config_overrides`` (a dict) is applied to the mapped config as constructor arguments, so it is recorded
    in the checkpoint's io context (values set after construction would not be).
    """

    config_overrides: dict = {}

    @cached_property
    def config(self):
        return nemo_config_from_hf(
            str(self),
            generation_config=load_generation_config(str(self)),
            **{**cpu.config_overrides(), **self.config_overrides},
        )

    @cached_property
    def tokenizer(self):
        from nemo.collections.common.tokenizers.huggingface.auto_tokenizer import AutoTokenizer

        # The tokenizer files are read from the checkpoint folder itself (stock NeMo copies them through a
        # fixed /tmp folder shared by every concurrent import). Remote code is never trusted here.
        return AutoTokenizer(str(self), trust_remote_code=False)

    def apply(self, output_path: Path, trust_remote_code: bool | None = None) -> Path:
        self.trust_remote_code = False
        cpu.enable()
        target = self.init()
        trainer = self.nemo_setup(target)
        module = target.module
        expected = {k: v for k, v in module.state_dict().items() if not k.endswith("_extra_state")}
        names = McoreNames(expected)
        dtype = self.config.params_dtype
        source = dict(iter_hf_tensors(str(self), dtype=dtype))
        try:
            converted = hf_to_mcore(source, self.config, names)
        except KeyError as e:
            raise ConversionError(
                f"{self}: tensor {e} is missing; is this a complete gpt-oss checkpoint?"
            ) from e
        _load_exact(module, converted, expected)
        del source, converted
        self.nemo_save(output_path, trainer)
        teardown(trainer, target)
        return output_path


def _load_exact(module: torch.nn.Module, converted: dict, expected: dict) -> None:
    """Copy converted tensors into the module, refusing any missing, extra or misshapen tensor."""
    missing = sorted(set(expected) - set(converted))
    extra = sorted(set(converted) - set(expected))
    bad = [
        f"{k}: checkpoint {tuple(converted[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(converted))
        if converted[k].shape != expected[k].shape
    ]
    if missing or extra or bad:
        raise ConversionError(
            "the checkpoint does not match the model built from its config:"
            + (f"\n  missing: {missing[:8]}" if missing else "")
            + (f"\n  unexpected: {extra[:8]}" if extra else "")
            + ("\n  shape: " + "\n  shape: ".join(bad[:8]) if bad else "")
        )
    with torch.no_grad():
        params = dict(module.named_parameters())
        buffers = dict(module.named_buffers())
        for k, v in converted.items():
            dst = params.get(k, buffers.get(k))
            dst.copy_(v.to(dst.dtype))


def import_hf(hf_path: str | Path, out: str | Path, overwrite: bool = False, **config_overrides) -> Path:
    """Import ``hf_path`` into a NeMo checkpoint at ``out`` (written to ``out.partial`` then renamed).

    Examples:
        python -m convert.import_hf --hf work/models/gpt-oss-tiny-hf --out work/models/gpt-oss-tiny-nemo
    """
    hf_path, out = Path(hf_path), Path(out)
    if not (hf_path / "config.json").exists():
        raise ConversionError(
            f"{hf_path} has no config.json: expected a Hugging Face gpt-oss folder "
            "(build the tiny one with `python -m convert.tiny`)"
        )
    if out.exists() and not overwrite:
        return out
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    connector = GptOssHFImporter(str(hf_path))
    connector.config_overrides = dict(config_overrides)
    connector.apply(tmp)
    connector.on_import_ckpt(GPTOSSModel(connector.config, tokenizer=connector.tokenizer))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="Import a Hugging Face gpt-oss checkpoint into NeMo.")
    parser.add_argument("--hf", required=True, help="Hugging Face checkpoint folder")
    parser.add_argument("--out", required=True, help="NeMo checkpoint folder to write")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()
    print(f"NeMo checkpoint: {import_hf(args.hf, args.out, overwrite=args.overwrite)}")


if __name__ == "__main__":
    main()
