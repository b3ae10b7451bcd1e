"""Merge a NeMo LoRA checkpoint into its base model, in the model's own precision, written atomically.

Follows NeMo's ``llm.peft.merge_lora`` step for step (its loading helpers and ``LoRAMerge``) with two changes:
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


def merge_lora(lora_ckpt: str | Path, out: str | Path) -> Path:
    """Merge the adapters of ``lora_ckpt`` into the base weights and save a plain NeMo checkpoint at ``out``.

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
    with publishing(out) as tmp:
        _merge(lora_ckpt, tmp)
    return out


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
    args = parser.parse_args()
    print(f"merged checkpoint: {merge_lora(args.lora, args.out)}")


if __name__ == "__main__":
    main()
