"""NeMo data module for our chat JSONL: harmony rendering with an exact loss mask.

Subclasses NeMo's ``FineTuningDataModule`` (so Megatron's batch samplers, consumed-sample bookkeeping and
resume work as in any NeMo fine-tune) and replaces only how a file becomes token ids: through
`data_prep.harmony.encode`, which trains on the assistant's final message plus ``<|return|>`` and nothing else.
Reads ``train.jsonl``, ``validation.jsonl`` and ``test.jsonl`` under ``dataset_root`` (data_prep's outputs).
With ``packed=True`` a sample is a row of several examples (`recipes.packing`), and its batch carries the
boundaries NeMo's forward step hands to the attention as packed-sequence parameters.

Examples:
    python -m recipes.finetune data=builtin
    python -m recipes.finetune data=prepared data.dataset_root=work/data/ibm data.packed=true   # on a GPU
    python -m recipes.chat_data --data work/data/ibm/train.jsonl --tokenizer <hf folder>   # real-token share
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch
from nemo.collections.llm.gpt.data.fine_tuning import FineTuningDataModule

from data_prep.harmony import DEFAULT_DATE, DEFAULT_EFFORT, encode
from data_prep.schema import read_jsonl
from recipes import packing

log = logging.getLogger(__name__)


class HarmonyChatDataset(torch.utils.data.Dataset):
    """Pre-tokenised examples; with ``max_num_samples`` it repeats the file in seeded random epochs.

    A sample is one example, or with ``packed=True`` one row of examples (``rows``: their indices, packed once
    by first-fit decreasing, the same on every process); the epochs shuffle the rows.
    """

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
        packed: bool = False,
    ):
        hf_tok = getattr(tokenizer, "tokenizer", tokenizer)  # NeMo's AutoTokenizer wraps the HF one
        self.pad_id = hf_tok.pad_token_id if hf_tok.pad_token_id is not None else hf_tok.eos_token_id
        self.seq_length = seq_length
        self.pad_to_multiple = pad_to_multiple
        self.packed = packed
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
        self.lengths = [len(e.input_ids) - 1 for e in self.examples]
        if packed:
            self.rows = packing.pack_rows(self.lengths, seq_length)
        else:
            self.rows = [[i] for i in range(len(self.examples))]
        self.order = np.arange(len(self.rows))
        if max_num_samples is not None:
            rng = np.random.default_rng(seed)
            epochs = -(-max_num_samples // len(self.rows))
            self.order = np.concatenate([rng.permutation(len(self.rows)) for _ in range(epochs)])
            self.order = self.order[:max_num_samples]

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, idx: int):
        row = self.rows[int(self.order[idx])]
        if self.packed:
            return tuple(self.examples[i] for i in row)
        return self.examples[row[0]]

    def token_share(self, micro_batch_size: int) -> dict:
        """The real (non-pad) share of the tokens computed over one pass through the samples, in their order
        (`packing.token_share`).

        Examples:
            python -m recipes.chat_data --data work/data/builtin/train.jsonl --tokenizer work/models/gpt-oss-tiny-hf
        """
        rows = [self.rows[int(i)] for i in self.order]
        return packing.token_share(
            self.lengths, rows, self.seq_length, micro_batch_size, pad_to_multiple=self.pad_to_multiple
        )

    def collate_fn(self, batch) -> dict[str, torch.Tensor]:
        if self.packed:
            return packing.collate(batch, self.seq_length, self.pad_id, self.pad_to_multiple)
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
        pad_to_multiple: Each micro-batch is padded to a multiple of this many tokens (``seq_length``: every
            micro-batch the same width, which megatron-core's all-gather token dispatcher needs when the ranks
            of an expert-parallel group hold different micro-batches).
        packed: Pack examples into rows of ``seq_length`` (training and validation; needs micro_batch_size 1
            and Transformer Engine's attention: `recipes.packing`). NeMo's own ``packed_sequence_specs`` is
            not used: it tokenises through its own dataset into ``.npy`` files, not through harmony.
        Other arguments: as ``FineTuningDataModule``.
    """

    def __init__(
        self,
        dataset_root,
        *args,
        date: str = DEFAULT_DATE,
        reasoning_effort: str = DEFAULT_EFFORT,
        packed: bool = False,
        pad_to_multiple: int = 16,
        **kw,
    ):
        super().__init__(dataset_root, *args, **kw)
        self.date = date
        self.reasoning_effort = reasoning_effort
        self.packed = packed
        self.pad_to_multiple = pad_to_multiple
        if packed and self.micro_batch_size != packing.PACKED_MICRO_BATCH:
            raise ValueError(
                f"packed=True needs micro_batch_size=1, not {self.micro_batch_size} (one packed row per "
                f"micro-batch); use micro_batch_size=1 global_batch_size="
                f"{max(1, self.global_batch_size // self.micro_batch_size)}"
            )

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
            pad_to_multiple=self.pad_to_multiple,
            # The test split is generated from one example at a time (predict, evaluate): never packed.
            packed=self.packed and Path(path) != self.test_path,
        )


def main(argv: list[str] | None = None) -> int:
    """Print the real-token share of a chat JSONL, unpacked and packed, at each sequence length.

    Examples:
        python -m recipes.chat_data --data work/data/builtin/train.jsonl --tokenizer work/models/gpt-oss-tiny-hf \
            --seq-length 256 --micro-batch-size 4
    """
    parser = argparse.ArgumentParser(prog="python -m recipes.chat_data", description=main.__doc__)
    parser.add_argument("--data", required=True, help="a chat JSONL written by data_prep")
    parser.add_argument("--tokenizer", required=True, help="a Hugging Face tokenizer (or model) folder")
    parser.add_argument("--seq-length", type=int, nargs="+", default=[2048, 4096], help="tokens per row")
    parser.add_argument("--micro-batch-size", type=int, default=1, help="rows per micro-batch, unpacked")
    parser.add_argument("--reasoning-effort", default="low", help="as data.reasoning_effort")
    args = parser.parse_args(argv)

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    print(
        f"{'seq_length':>10} {'packed':>6} {'mbs':>3} {'examples':>8} {'rows':>6} {'ex/row':>6} "
        f"{'real tok':>9} {'computed':>9} {'share':>6} {'fill':>6}"
    )
    for seq_length in args.seq_length:
        for packed in (False, True):
            mbs = packing.PACKED_MICRO_BATCH if packed else args.micro_batch_size
            data = HarmonyChatDataset(
                args.data, tokenizer, seq_length, reasoning_effort=args.reasoning_effort, packed=packed
            )
            s = data.token_share(mbs)
            print(
                f"{seq_length:>10} {str(packed).lower():>6} {mbs:>3} {s['examples']:>8} {s['rows']:>6} "
                f"{s['examples_per_row']:>6} {s['real_tokens']:>9} {s['computed_tokens']:>9} "
                f"{s['share']:>6.1%} {s['fill']:>6.1%}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
