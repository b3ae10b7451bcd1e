"""Merge a NeMo LoRA checkpoint into its base model, in the model's own precision, written atomically.

Streaming by default: the merged checkpoint is written a tensor at a time, each read from the base checkpoint
with its adapter's delta added as NeMo's ``LoRAMerge`` adds it (`convert.checkpoint.TrainedTensors`), through
NeMo's own save with the model on the meta device (`convert.streaming_save`), so memory does not grow with the
model. The result equals the in-memory merge (``--no-streaming``) tensor for tensor.
A Hugging Face export does not need this step: ``convert.export_hf`` reads a LoRA checkpoint directly.

The in-memory merge follows NeMo's ``llm.peft.merge_lora`` step for step (its loading helpers and ``LoRAMerge``)
with two changes:
stock forces ``bf16`` params and a bf16 mixed-precision plugin (``_load_base_model_and_lora``,
``merge_lora``), which rounds an fp32 model's merged weights to bf16 (on the tiny model the merged logits then drift by ~5e-2 from the trained model's); and stock re-saves the
tokenizer through a fixed ``/tmp/nemo_tokenizer`` folder that concurrent runs share. Here the precision follows
the model config and the tokenizer stays the one recorded in the checkpoint.

Examples:
    python -m convert.merge_lora --lora work/runs/gpt_oss_tiny-lora/<time>/checkpoints/<name>-last \\
        --out work/runs/gpt_oss_tiny-lora/merged
"""

from __future__ import annotations

import argparse
from pathlib import Path

from convert.checkpoint import publishing, restore_lora


def merge_lora(
    lora_ckpt: str | Path, out: str | Path, overwrite: bool = False, streaming: bool = True
) -> Path:
    """Merge the adapters of ``lora_ckpt`` into the base weights and save a plain NeMo checkpoint at ``out``.

    Nothing appears at ``out`` unless the merge succeeds (``<out>.partial``, then a rename); an existing
    ``out`` is replaced only with ``overwrite``, and stays as it was when the merge fails.

    Examples:
        python -m convert.merge_lora --lora <lora checkpoint> --out /tmp/merged
    """
    import convert.import_hf  # noqa: F401  (registers our hf importer, which NeMo's restore may resolve)

    lora_ckpt, out = Path(lora_ckpt), Path(out)
    if not (lora_ckpt / "weights" / "adapter_metadata.json").exists():
        raise FileNotFoundError(
            f"{lora_ckpt} is not a LoRA checkpoint (no weights/adapter_metadata.json); "
            "a full-SFT checkpoint needs no merge: export it directly (python -m convert.export_hf)"
        )
    with publishing(out, overwrite) as tmp:
        (_stream_merge if streaming else _merge)(lora_ckpt, tmp)
    return out


def _stream_merge(lora_ckpt: Path, out: Path) -> None:
    """The merged checkpoint written by NeMo's save with the model on the meta device, each tensor read (and
    merged) only when the checkpoint writer reaches it."""
    from nemo.collections.llm.gpt.model.gpt_oss import GPTOSSModel
    from nemo.lightning import teardown

    from compat import cpu
    from convert.checkpoint import TrainedTensors, _context
    from convert.export_hf import preflight
    from convert.gpt_oss import ConversionError
    from convert.import_hf import GptOssHFImporter, _configured_on_meta
    from convert.streaming_save import use_streaming_save

    trained = TrainedTensors(lora_ckpt)
    cpu.enable()
    model = GPTOSSModel(trained.config, tokenizer=_context(lora_ckpt, "model.tokenizer"))
    # The connector's generic setup and save (a one-process host trainer, NeMo's checkpoint and context).
    connector = GptOssHFImporter(str(lora_ckpt))
    with _configured_on_meta(model):
        trainer = connector.nemo_setup(model)
    try:
        names = [k for k in model.module.state_dict() if not k.endswith("_extra_state")]
        targets = {f"module.{k}": v for k, v in model.module.state_dict().items() if k in names}
        sources = {f"module.{k}": (lambda k=k: trained.read(k)) for k in names}
        preflight(out, sum(t.numel() * t.element_size() for t in targets.values()))
        use_streaming_save(trainer.strategy, sources, targets)
        connector.nemo_save(out, trainer)
    finally:
        del model.module  # a meta module has nothing for Lightning's teardown to move
        teardown(trainer, model)
    unused = trained.unused_adapters()
    if unused:
        raise ConversionError(f"{lora_ckpt}: adapters that match no parameter of the model: {unused[:4]}")


def _merge(lora_ckpt: Path, out: Path) -> None:
    from megatron.core import dist_checkpointing
    from nemo.collections.llm.peft.lora import LoRAMerge
    from nemo.lightning.ckpt_utils import ckpt_to_context_subdir
    from nemo.lightning.io.pl import TrainerContext, ckpt_to_weights_subdir

    _, trainer, _ = restore_lora(lora_ckpt)
    merged = LoRAMerge()(trainer.strategy.megatron_parallel)
    weights = {k: v for k, v in merged.sharded_state_dict().items() if ".adapter." not in k}
    weights_dir = ckpt_to_weights_subdir(out, is_saving=True)
    weights_dir.mkdir(parents=True, exist_ok=True)
    dist_checkpointing.save(
        weights, str(weights_dir), content_metadata=trainer.strategy.sharded_state_dict_metadata
    )
    TrainerContext.from_trainer(trainer).io_dump(ckpt_to_context_subdir(out), yaml_attrs=["model"])


def main() -> None:
    parser = argparse.ArgumentParser(description="Merge a NeMo LoRA checkpoint into its base model.")
    parser.add_argument("--lora", required=True, help="LoRA checkpoint folder (context/ and weights/)")
    parser.add_argument("--out", required=True, help="merged NeMo checkpoint folder to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument(
        "--streaming",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write a tensor at a time (default); --no-streaming loads the whole model and merges it in memory",
    )
    args = parser.parse_args()
    out = merge_lora(args.lora, args.out, overwrite=args.overwrite, streaming=args.streaming)
    print(f"merged checkpoint: {out}")


if __name__ == "__main__":
    main()
