"""NeMo data module for our chat JSONL: harmony rendering with an exact loss mask.

Subclasses NeMo's ``FineTuningDataModule`` (so Megatron's batch samplers, consumed-sample bookkeeping and
resume work as in any NeMo fine-tune) and replaces only how a file becomes token ids: through
`data_prep.harmony.encode`, which trains on the assistant's final message plus ``<|return|>`` and nothing else.
Reads ``train.jsonl``, ``validation.jsonl`` and ``test.jsonl`` under ``dataset_root`` (data_prep's outputs).

Examples:
    python -m recipes.finetune data=builtin
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from nemo.collections.llm.gpt.data.fine_tuning import FineTuningDataModule

from data_prep.harmony import DEFAULT_DATE, DEFAULT_EFFORT, encode
from data_prep.schema import read_jsonl

log = logging.getLogger(__name__)


class HarmonyChatDataset(torch.utils.data.Dataset):
    """Pre-tokenised examples; with ``max_num_samples`` it repeats the file in seeded random epochs."""

    def __init__(
        self,
        path: str | Path,
        tokenizer,
        seq_length: int,
        seed: int = 1234,
        max_num_samples: int | None = None,
        date: str = DEFAULT_DATE,
        reasoning_effort: str = DEFAULT_EFFORT,
        pad_to_multiple: int = 16,
    ):
        hf_tok = getattr(tokenizer, "tokenizer", tokenizer)  # NeMo's AutoTokenizer wraps the HF one
        self.pad_id = hf_tok.pad_token_id if hf_tok.pad_token_id is not None else hf_tok.eos_token_id
        self.seq_length = seq_length
        self.pad_to_multiple = pad_to_multiple
        self.examples, self.too_long = [], []
        for ex in read_jsonl(path):
            enc = encode(ex, hf_tok, date=date, reasoning_effort=reasoning_effort)
            # The model sees len - 1 tokens (inputs are shifted against labels).
            if len(enc.input_ids) - 1 > seq_length:
                self.too_long.append(ex.id)
                continue
            self.examples.append(enc)
        if self.too_long:
            log.warning(
                "%s: %d example(s) longer than seq_length=%d were left out (first: %s); "
                "raise data.seq_length or shorten them",
                path,
                len(self.too_long),
                seq_length,
                self.too_long[:3],
            )
        if not self.examples:
            raise ValueError(f"{path}: no example fits seq_length={seq_length}")
        self.order = np.arange(len(self.examples))
        if max_num_samples is not None:
            rng = np.random.default_rng(seed)
            epochs = -(-max_num_samples // len(self.examples))
            self.order = np.concatenate([rng.permutation(len(self.examples)) for _ in range(epochs)])
            self.order = self.order[:max_num_samples]

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, idx: int):
        return self.examples[int(self.order[idx])]

    def collate_fn(self, batch) -> dict[str, torch.Tensor]:
        longest = max(len(e.input_ids) - 1 for e in batch)
        width = min(self.seq_length, -(-longest // self.pad_to_multiple) * self.pad_to_multiple)
        tokens = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        loss_mask = torch.zeros((len(batch), width), dtype=torch.float)
        for i, e in enumerate(batch):
            ids = torch.tensor(e.input_ids, dtype=torch.long)
            n = len(ids) - 1
            tokens[i, :n] = ids[:-1]
            labels[i, :n] = ids[1:]
            loss_mask[i, :n] = torch.tensor(e.loss_mask[1:], dtype=torch.float)
        # Causal mask (True = masked), which NeMo requires without Transformer Engine; sliding-window layers
        # build their own. Right padding is never attended to by real tokens and carries no loss.
        causal = torch.triu(torch.ones(width, width, dtype=torch.bool), diagonal=1)
        return {
            "attention_mask": causal.expand(len(batch), 1, width, width).contiguous(),
            "tokens": tokens,
            "labels": labels,
            "loss_mask": loss_mask,
            "position_ids": torch.arange(width).unsqueeze(0).expand(len(batch), -1).contiguous(),
            "token_count": [int(m.sum()) for m in loss_mask],
        }


class HarmonyChatDataModule(FineTuningDataModule):
    """``FineTuningDataModule`` over data_prep's chat JSONL, rendered in harmony format.

    Args:
        dataset_root: Folder with ``train.jsonl``, ``validation.jsonl`` (and optionally ``test.jsonl``).
        date: The date the chat template writes into the system message (fixed for reproducibility).
        reasoning_effort: ``low``, ``medium`` or ``high``, written into the system message.
        Other arguments: as ``FineTuningDataModule``.
    """

    def __init__(
        self, dataset_root, *args, date: str = DEFAULT_DATE, reasoning_effort: str = DEFAULT_EFFORT, **kw
    ):
        super().__init__(dataset_root, *args, **kw)
        self.date = date
        self.reasoning_effort = reasoning_effort

    @property
    def train_path(self) -> Path:
        return self.dataset_root / "train.jsonl"

    @property
    def validation_path(self) -> Path:
        return self.dataset_root / "validation.jsonl"

    @property
    def test_path(self) -> Path:
        return self.dataset_root / "test.jsonl"

    def _create_dataset(self, path, pack_metadata_path=None, is_test=False, max_num_samples=None, **kwargs):
        return HarmonyChatDataset(
            path,
            self.tokenizer,
            self.seq_length,
            seed=self.seed,
            max_num_samples=max_num_samples,
            date=self.date,
            reasoning_effort=self.reasoning_effort,
        )
