"""Prove a conversion: compare the logits of a NeMo checkpoint with those of a Hugging Face one.

Both models run in fp32 on the same probe prompts (rendered through the checkpoint's own chat template and
long enough to cross the sliding window). Reports max |diff| and top-1 agreement.

Examples:
    python -m convert.verify --hf work/models/gpt-oss-tiny-hf --nemo work/models/gpt-oss-tiny-nemo
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

PROBES = [
    [{"role": "user", "content": "Employee hired 2019-03-01 in Engineering, rated Exceeds. Attrition risk?"}],
    [
        {"role": "system", "content": "You are an HR analytics expert."},
        {"role": "user", "content": "Predict tenure for a Sales manager in Europe with two promotions."},
        {"role": "assistant", "content": "Expected tenure: 4.2 years"},
    ],
]


@dataclass
class Comparison:
    max_abs_diff: float
    top1_agreement: float
    logit_scale: float  # max |logit| of the reference, to read max_abs_diff against
    tokens: int


def probe_ids(tokenizer_dir: str | Path, max_len: int = 96) -> torch.Tensor:
    """Token ids of the probe prompts, ``[len(PROBES), T]`` (truncated to a common length)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    seqs = [
        tok.apply_chat_template(
            p, tokenize=True, strftime_now=lambda fmt: "2025-06-01", reasoning_effort="low"
        )
        for p in PROBES
    ]
    n = min(max_len, *(len(s) for s in seqs))
    return torch.tensor([s[:n] for s in seqs], dtype=torch.long)


@torch.no_grad()
def hf_logits(hf_dir: str | Path, input_ids: torch.Tensor) -> torch.Tensor:
    from transformers import GptOssForCausalLM

    model = GptOssForCausalLM.from_pretrained(
        str(hf_dir), torch_dtype=torch.float32, attn_implementation="eager"
    )
    model.eval()
    return model(input_ids=input_ids).logits.float()


@torch.no_grad()
def nemo_logits(nemo_dir: str | Path, input_ids: torch.Tensor) -> torch.Tensor:
    from nemo.lightning import teardown

    from convert.export_hf import GptOssHFExporter

    model, trainer = GptOssHFExporter(str(nemo_dir)).load()
    try:
        return forward(model, input_ids)
    finally:
        teardown(trainer, model)


@torch.no_grad()
def forward(model, input_ids: torch.Tensor) -> torch.Tensor:
    """Logits ``[B, T, V]`` of a NeMo GPT model (a LightningModule around megatron-core) in eval mode."""
    module = model.module
    module.eval()
    position_ids = torch.arange(input_ids.shape[1]).unsqueeze(0).expand_as(input_ids)
    logits = module(input_ids=input_ids, position_ids=position_ids, attention_mask=None)
    vocab = model.config.vocab_size
    return logits[..., :vocab].float()


def probe_callback(input_ids: torch.Tensor):
    """A Lightning callback that keeps the trained model's logits on ``input_ids`` when training ends.

    NeMo tears the parallel state down after ``fit``, so the logits of the model exactly as trained (LoRA
    adapters unmerged) are taken inside ``on_train_end``; read them from ``callback.logits``.
    """
    from lightning.pytorch import Callback

    class ProbeLogits(Callback):
        logits: torch.Tensor | None = None

        def on_train_end(self, trainer, pl_module):
            was_training = pl_module.training
            self.logits = forward(pl_module, input_ids)
            pl_module.train(was_training)

    return ProbeLogits()


def compare(test: torch.Tensor, reference: torch.Tensor) -> Comparison:
    if test.shape != reference.shape:
        raise ValueError(f"logit shapes differ: {tuple(test.shape)} vs {tuple(reference.shape)}")
    return Comparison(
        max_abs_diff=(test - reference).abs().max().item(),
        top1_agreement=(test.argmax(-1) == reference.argmax(-1)).float().mean().item(),
        logit_scale=reference.abs().max().item(),
        tokens=reference.shape[0] * reference.shape[1],
    )


def verify(hf_dir: str | Path, nemo_dir: str | Path) -> Comparison:
    """Logits of ``nemo_dir`` against ``hf_dir`` on the probe prompts.

    Examples:
        python -m convert.verify --hf work/models/gpt-oss-tiny-hf --nemo work/models/gpt-oss-tiny-nemo
    """
    ids = probe_ids(hf_dir)
    return compare(nemo_logits(nemo_dir, ids), hf_logits(hf_dir, ids))


def main() -> None:
    parser = argparse.ArgumentParser(description="Compare NeMo and Hugging Face gpt-oss logits.")
    parser.add_argument("--hf", required=True)
    parser.add_argument("--nemo", required=True)
    parser.add_argument("--tolerance", type=float, default=1e-4, help="max |diff| accepted (fp32)")
    args = parser.parse_args()
    result = verify(args.hf, args.nemo)
    print(json.dumps(asdict(result), indent=2))
    if result.max_abs_diff > args.tolerance:
        raise SystemExit(f"logits differ by {result.max_abs_diff:.3g} > {args.tolerance:g}")


if __name__ == "__main__":
    main()
