"""Build the tiny gpt-oss: a Hugging Face checkpoint with the real architecture and a few small layers.

Writes safetensors weights, ``config.json``, ``generation_config.json`` and a tokenizer whose chat template
renders the harmony format. Works offline: the tokenizer is a byte-level BPE trained on the built-in corpus,
with the gpt-oss special tokens. Pass ``--tokenizer`` to use another tokenizer instead (for example the real
gpt-oss one); the vocabulary then follows it.

Examples:
    python -m convert.tiny --out work/models/gpt-oss-tiny-hf
    python -m convert.tiny --out /tmp/tiny-real-tok --tokenizer ../shared/data/gpt-oss/tokenizer
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
TINY_CONF = REPO / "conf" / "model" / "gpt_oss_tiny.yaml"
CHAT_TEMPLATE = Path(__file__).with_name("harmony_chat_template.jinja")

# Harmony control tokens of gpt-oss, with the roles the real tokenizer gives them.
BOS, PAD, EOS = "<|startoftext|>", "<|endoftext|>", "<|return|>"
HARMONY_SPECIALS = [
    BOS,
    PAD,
    EOS,
    "<|constrain|>",
    "<|channel|>",
    "<|start|>",
    "<|end|>",
    "<|message|>",
    "<|call|>",
    "<|endofprompt|>",
]
# Vocabulary rows are padded to a multiple of this, as the real model pads 200,019 tokens to 201,088.
VOCAB_MULTIPLE = 128


def tiny_shape() -> dict:
    """The tiny model's shape from ``conf/model/gpt_oss_tiny.yaml`` (its one source)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(TINY_CONF).tiny, resolve=True)


def build_tokenizer(vocab_size: int, seed: int = 0):
    """A byte-level BPE tokenizer with the harmony specials and chat template, trained offline.

    Args:
        vocab_size: Target size of the learned vocabulary (specials included).
        seed: Seed of the built-in corpus it is trained on.

    Returns:
        A ``transformers.PreTrainedTokenizerFast``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from data_prep.builtin import corpus

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=HARMONY_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = corpus(seed) + [CHAT_TEMPLATE.read_text()]
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, clean_up_tokenization_spaces=False
    )
    fast.chat_template = CHAT_TEMPLATE.read_text()
    return fast


# The tiny shape's keys that are transformers' own GptOssConfig fields, passed through unchanged.
HF_FIELDS = (
    "num_hidden_layers",
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "num_local_experts",
    "num_experts_per_tok",
    "sliding_window",
    "max_position_embeddings",
    "rope_theta",
    "swiglu_limit",
    "rms_norm_eps",
    "initializer_range",
)


def hf_config(shape: dict, vocab_size: int, dtype: torch.dtype, tokenizer=None):
    """The ``GptOssConfig`` of a shrunk gpt-oss; layers alternate sliding-window and full attention (the
    ``layer_types`` that transformers gives a config without them)."""
    from transformers import GptOssConfig

    special = {}
    if tokenizer is not None:
        special = {
            "eos_token_id": tokenizer.convert_tokens_to_ids(EOS),
            "pad_token_id": tokenizer.convert_tokens_to_ids(PAD),
            "bos_token_id": tokenizer.convert_tokens_to_ids(BOS),
        }
    return GptOssConfig(
        vocab_size=vocab_size,
        **{key: shape[key] for key in HF_FIELDS},
        experts_per_token=shape["num_experts_per_tok"],
        initial_context_length=shape["rope_scaling"]["original_max_position_embeddings"],
        rope_scaling=dict(shape["rope_scaling"]),
        attention_bias=True,
        tie_word_embeddings=False,
        router_aux_loss_coef=0.9,
        torch_dtype=dtype,
        **special,
    )


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int) -> None:
    """Draw every tensor from one seeded generator, at scales that keep activations O(1).

    Every bias, sink and norm weight gets non-trivial values too, so a mapping that drops, swaps or
    transposes any tensor changes the logits visibly.
    """
    g = torch.Generator().manual_seed(seed)
    for name, p in sorted(model.named_parameters()):
        r = torch.randn(p.shape, generator=g, dtype=torch.float32)
        if name.endswith("norm.weight"):
            v = 1.0 + 0.1 * r
        elif name.endswith("sinks"):
            v = r
        elif name.endswith("bias"):
            v = 0.1 * r
        elif name.endswith("embed_tokens.weight"):
            v = r
        elif name.endswith("experts.gate_up_proj") or name.endswith("experts.down_proj"):
            v = r / math.sqrt(p.shape[-2])  # HF expert layout [E, in, out]: fan-in is dim -2
        else:
            v = r / math.sqrt(p.shape[-1])  # nn.Linear [out, in]
        p.copy_(v.to(p.dtype))


def build(
    out_dir: str | Path,
    shape: dict | None = None,
    tokenizer_dir: str | Path | None = None,
    dtype: torch.dtype = torch.float32,
    seed: int | None = None,
) -> Path:
    """Write a tiny gpt-oss Hugging Face checkpoint to ``out_dir`` (atomically) and return it.

    Args:
        out_dir: Output folder; replaced if it exists.
        shape: Model shape; defaults to ``conf/model/gpt_oss_tiny.yaml``.
        tokenizer_dir: A tokenizer to use instead of the built-in BPE (for example the real gpt-oss one).
        dtype: Storage dtype of the weights.
        seed: Weight seed; defaults to the shape's ``seed``.

    Examples:
        python -m convert.tiny --out work/models/gpt-oss-tiny-hf
    """
    from transformers import AutoTokenizer, GenerationConfig, GptOssForCausalLM

    shape = dict(shape or tiny_shape())
    seed = shape.get("seed", 0) if seed is None else seed
    if tokenizer_dir is not None:
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    else:
        tokenizer = build_tokenizer(shape["tokenizer_vocab"], seed)
    vocab = math.ceil(len(tokenizer) / VOCAB_MULTIPLE) * VOCAB_MULTIPLE
    config = hf_config(shape, vocab, dtype, tokenizer)
    torch.manual_seed(seed)
    model = GptOssForCausalLM(config).to(dtype)
    randomize(model, seed)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=[config.eos_token_id, config.pad_token_id],
        pad_token_id=config.pad_token_id,
        do_sample=False,
    )

    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if not (tmp / "chat_template.jinja").exists() and tokenizer.chat_template:
        (tmp / "chat_template.jinja").write_text(tokenizer.chat_template)
    (tmp / "tiny_build.json").write_text(json.dumps({"seed": seed, "shape": shape}, indent=2))
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return out_dir


def main() -> None:
    parser = argparse.ArgumentParser(description="Build the tiny gpt-oss Hugging Face checkpoint.")
    parser.add_argument("--out", default="work/models/gpt-oss-tiny-hf", help="output folder")
    parser.add_argument(
        "--tokenizer", default=None, help="use this tokenizer folder instead of the built-in BPE"
    )
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()
    path = build(args.out, tokenizer_dir=args.tokenizer, dtype=getattr(torch, args.dtype))
    print(f"tiny gpt-oss written to {path}")


if __name__ == "__main__":
    main()
