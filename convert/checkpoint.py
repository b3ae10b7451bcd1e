"""NeMo gpt-oss checkpoints as the converters read and publish them.

- `GptOssHFExporter`: NeMo's ``hf`` exporter of ``GPTOSSModel``, registered here (so ``llm.export_ckpt`` uses
  it): loads a checkpoint on the host and gives its weights in Hugging Face names and layout, with the whole
  config mapped back (stock NeMo writes 20b defaults for every field but layers and experts).
- `restore_lora`: a LoRA checkpoint as trained (its base plus the adapters, unmerged), the way NeMo's own
  merge restores it.
- `is_complete` / `require_complete`: whether a folder is a finished NeMo checkpoint.
- `publishing`: every converter writes ``<out>.partial`` and renames it to ``out`` only when it succeeded.

Examples:
    python -c "from convert.checkpoint import is_complete; print(is_complete('work/models/gpt-oss-tiny-nemo'))"
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path

import torch
from nemo.collections.llm.gpt.model.gpt_oss import GPTOSSModel, HFGPTOSSExporter
from nemo.lightning import io, teardown

from compat import cpu
from convert.gpt_oss import McoreNames, hf_config_from_nemo, mcore_to_hf


def is_complete(path: str | Path) -> bool:
    """Whether ``path`` is a finished NeMo checkpoint (the last files NeMo writes are present)."""
    path = Path(path)
    return (path / "weights" / "metadata.json").exists() and (path / "context" / "io.json").exists()


def require_complete(path: Path, what: str, incomplete_fix: str) -> None:
    """Raise `FileNotFoundError` unless ``path`` is a finished NeMo checkpoint.

    Args:
        path: The folder.
        what: Where such a checkpoint comes from, said when ``path`` is not one at all.
        incomplete_fix: What to do when it was interrupted while being written.
    """
    if not (path / "context").is_dir() or not (path / "weights").is_dir():
        raise FileNotFoundError(
            f"{path} is not a NeMo checkpoint (expected context/ and weights/ inside); {what}"
        )
    if not is_complete(path):
        raise FileNotFoundError(
            f"{path} is an incomplete NeMo checkpoint (no weights/metadata.json or context/io.json); "
            f"it was interrupted while being written: {incomplete_fix}"
        )


@contextmanager
def publishing(out: Path) -> Iterator[Path]:
    """Yield ``<out>.partial`` to write into; on success it replaces ``out``, on any failure it is removed.

    An interruption leaves at most ``<out>.partial``, which no reader takes for ``out`` and the next write
    replaces.
    """
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


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


def restore_lora(lora_ckpt: Path):
    """The model of a LoRA checkpoint as trained, on the host: ``(model, trainer, lora_transform)``.

    NeMo's own restore of base and adapters (``_setup_trainer_and_restore_model_and_adapter``), in the model's
    precision; the base checkpoint is the one named in ``weights/adapter_metadata.json``. Tear down with
    ``nemo.lightning.teardown(trainer, model)``.
    """
    import fiddle as fdl
    from nemo import lightning as nl
    from nemo.collections.llm.peft.api import _setup_trainer_and_restore_model_and_adapter
    from nemo.collections.llm.peft.lora import LoRA
    from nemo.collections.llm.recipes.precision.mixed_precision import bf16_mixed
    from nemo.lightning.ckpt_utils import ckpt_to_context_subdir

    cpu.enable()
    model = io.load_context(ckpt_to_context_subdir(lora_ckpt), "model")
    model.model_transform, model.__io__.model_transform = None, None
    model.config.perform_initialization = False
    transform = io.load_context(ckpt_to_context_subdir(lora_ckpt), "model.model_transform")
    if not isinstance(transform, LoRA):
        raise ValueError(f"{lora_ckpt} records no LoRA transform; it is not a LoRA checkpoint")
    fp32 = model.config.params_dtype == torch.float32
    trainer = nl.Trainer(
        devices=1,
        accelerator="cpu",
        strategy=nl.MegatronStrategy(ddp="pytorch", setup_optimizers=False),
        plugins=nl.MegatronMixedPrecision(precision="32") if fp32 else fdl.build(bf16_mixed()),
    )
    _setup_trainer_and_restore_model_and_adapter(lora_ckpt, trainer, model, transform)
    return model, trainer, transform
