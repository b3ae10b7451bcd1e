"""Sequence packing for the chat data: several examples in one row of ``seq_length`` tokens, each example
attending only to itself, its loss mask unchanged.

Rows are filled by NeMo's own packer, first-fit decreasing (`nemo.utils.sequence_packing_utils`, the one
``prepare_packed_sequence_data`` uses), in memory instead of through NeMo's ``.npy`` files, so every row knows
which examples it holds. A batch of rows carries the keys of NeMo's ``GPTSFTPackedDataset.collate_fn``
(nemo/collections/llm/gpt/data/core.py:761-913): ``cu_seqlens`` (each row's example boundaries, padded with -1),
``cu_seqlens_argmin`` (where the -1 start) and ``max_seqlen``. ``gpt_data_step`` moves them
(nemo/collections/llm/gpt/model/base.py:90-93) and ``gpt_forward_step`` turns them into megatron-core's
``PackedSeqParams`` in the THD format (base.py:142-143, 775-807), one row per micro-batch.

Only Transformer Engine's attention takes packed sequences: megatron-core's local ``DotProductAttention``, the
attention of the CPU path, asserts ``packed_seq_params is None`` (transformer/dot_product_attention.py:143).
``data.packed`` therefore chooses: ``auto`` packs where the attention supports it (CUDA with Transformer Engine)
and the micro-batch is one row, ``true`` packs or refuses, ``false`` never packs.

Examples:
    python -m recipes.finetune data=prepared data.dataset_root=work/data/ibm data.packed=true
    python -m recipes.chat_data --data work/data/ibm/train.jsonl --tokenizer <hf folder> --seq-length 2048 4096
"""

from __future__ import annotations

import importlib.util
from collections import defaultdict, deque
from collections.abc import Sequence

import torch

CHOICES = ("auto", "true", "false")
# The forward step builds PackedSeqParams from the first row only (``cu_seqlens.squeeze()``, base.py:789),
# so a micro-batch is one packed row, as NeMo's FineTuningDataModule requires (fine_tuning.py:97-112).
PACKED_MICRO_BATCH = 1


def choice(packed) -> str:
    """``data.packed`` as one of `CHOICES` (YAML and the command line turn ``true`` into a boolean)."""
    return str(packed).lower()


def attention_takes_packed(cuda: bool | None = None) -> tuple[bool, str]:
    """Whether the model's attention keeps packed examples apart, and why not when it does not.

    ``cuda``: as on a machine with (True: the GPU path, Transformer Engine's attention) or without (False) CUDA;
    default: this machine, which also needs Transformer Engine installed.
    """
    if cuda is None:
        cuda = torch.cuda.is_available()
        if cuda and importlib.util.find_spec("transformer_engine") is None:
            return False, "Transformer Engine is not installed (the local attention refuses packed sequences)"
    if not cuda:
        return False, "no CUDA: the local attention of the CPU path refuses packed sequences"
    return True, ""


def config_problems(data) -> list[str]:
    """The problems of a config's ``data`` node for packing, whatever the machine (each with its fix)."""
    value = choice(data.packed)
    if value not in CHOICES:
        return [f"data.packed={data.packed!r} is unknown; use one of {list(CHOICES)} (data.packed=auto)"]
    if value == "true" and data.micro_batch_size != PACKED_MICRO_BATCH:
        gbs = max(1, data.global_batch_size // data.micro_batch_size)
        return [
            f"data.packed=true needs data.micro_batch_size=1 (a packed row already holds several examples, and "
            f"NeMo's forward step reads one row's boundaries per micro-batch), not {data.micro_batch_size}; "
            f"e.g. data.micro_batch_size=1 data.global_batch_size={gbs}"
        ]
    return []


def refusal(packed, cuda: bool | None = None) -> str | None:
    """Why ``data.packed=true`` cannot run here (None when it can, or when packing was not demanded)."""
    supported, why_not = attention_takes_packed(cuda)
    if choice(packed) != "true" or supported:
        return None
    return f"data.packed=true cannot run here: {why_not}; use data.packed=auto (packs where it can) or false"


def decide(packed, micro_batch_size: int, cuda: bool | None = None) -> tuple[bool, str | None]:
    """Whether to pack, and a one-line note when ``auto`` leaves packing off.

    ``true`` always packs (`refusal` and `config_problems` stop a run where it cannot); ``false`` never does.

    Examples:
        python -c "from recipes.packing import decide; print(decide('auto', 1, cuda=False))"
    """
    value = choice(packed)
    if value != "auto":
        return value == "true", None
    supported, why_not = attention_takes_packed(cuda)
    if not supported:
        return False, f"sequence packing off: {why_not} (data.packed=auto; data.packed=false hides this)"
    if micro_batch_size != PACKED_MICRO_BATCH:
        return False, (
            f"sequence packing off: data.micro_batch_size={micro_batch_size}, and packing takes one row per "
            "micro-batch (data.micro_batch_size=1 packs; data.packed=false hides this)"
        )
    return True, None


def pack_rows(lengths: Sequence[int], seq_length: int) -> list[list[int]]:
    """Indices of the examples of each row: NeMo's first-fit decreasing over their token lengths.

    ``lengths`` are the tokens each example puts into a row (its ids minus one: inputs are shifted against
    labels), each at most ``seq_length``. NeMo's packer works on lengths only; the examples of one length are
    handed out in their file order, so the rows are the same on every run and every process.

    Examples:
        python -c "from recipes.packing import pack_rows; print(pack_rows([100, 60, 90, 30], 128))"
    """
    from nemo.utils.sequence_packing_utils import create_packing_strategy

    if not lengths:
        return []
    too_long = [i for i, n in enumerate(lengths) if not 1 <= n <= seq_length]
    if too_long:
        raise ValueError(f"examples {too_long[:5]} do not fit 1..seq_length={seq_length} tokens")
    histogram = [0] * (seq_length + 1)
    by_length: dict[int, deque[int]] = defaultdict(deque)
    for i, n in enumerate(lengths):
        histogram[n] += 1
        by_length[n].append(i)
    assignments, _ = create_packing_strategy(histogram, seq_length, "first_fit_decreasing")
    return [[by_length[n].popleft() for n in row] for row in assignments]


def collate(rows: Sequence[Sequence], seq_length: int, pad_id: int, pad_to_multiple: int = 16) -> dict:
    """A batch of packed rows (each a sequence of examples with ``input_ids`` and ``loss_mask``).

    Per example, as unpacked: inputs ``ids[:-1]``, labels ``ids[1:]``, loss mask ``mask[1:]``, positions from 0.
    The row is padded to a multiple of ``pad_to_multiple`` (at most ``seq_length``); like NeMo's collate, the
    padding tail is a segment of its own in ``cu_seqlens`` (the attention kernels expect the boundaries to
    cover the row) and carries no loss.
    """
    totals = [sum(len(e.input_ids) - 1 for e in row) for row in rows]
    width = min(seq_length, -(-max(totals) // pad_to_multiple) * pad_to_multiple)
    if max(totals) > width:
        raise ValueError(f"a packed row of {max(totals)} tokens does not fit seq_length={seq_length}")
    shape = (len(rows), width)
    tokens = torch.full(shape, pad_id, dtype=torch.long)
    labels = torch.full(shape, pad_id, dtype=torch.long)
    loss_mask = torch.zeros(shape, dtype=torch.float)
    position_ids = torch.zeros(shape, dtype=torch.long)
    bounds = []
    for r, row in enumerate(rows):
        at, cuts = 0, [0]
        for e in row:
            ids = torch.tensor(e.input_ids, dtype=torch.long)
            n = len(ids) - 1
            tokens[r, at : at + n] = ids[:-1]
            labels[r, at : at + n] = ids[1:]
            loss_mask[r, at : at + n] = torch.tensor(e.loss_mask[1:], dtype=torch.float)
            position_ids[r, at : at + n] = torch.arange(n)
            at += n
            cuts.append(at)
        if at < width:
            cuts.append(width)
        bounds.append(cuts)
    # At least one -1 after every row's boundaries: its position (argmin) is where they end (base.py:791-795).
    cu_seqlens = torch.full((len(rows), max(len(c) for c in bounds) + 1), -1, dtype=torch.int32)
    for r, cuts in enumerate(bounds):
        cu_seqlens[r, : len(cuts)] = torch.tensor(cuts, dtype=torch.int32)
    argmin = torch.argmin(cu_seqlens, dim=1, keepdim=True)
    max_seqlen = torch.stack(
        [torch.diff(cu_seqlens[r, : int(argmin[r])]).max() for r in range(len(rows))]
    ).reshape(-1, 1)
    return {
        # No mask is built for packed rows: Transformer Engine masks within each segment (as NeMo's collate).
        "attention_mask": torch.ones(len(rows), dtype=torch.long),
        "tokens": tokens,
        "labels": labels,
        "loss_mask": loss_mask,
        "position_ids": position_ids,
        "token_count": [int(m.sum()) for m in loss_mask],
        "cu_seqlens": cu_seqlens,
        "cu_seqlens_argmin": argmin,
        "max_seqlen": max_seqlen.to(torch.int32),
    }


def token_share(
    lengths: Sequence[int],
    rows: Sequence[Sequence[int]],
    seq_length: int,
    micro_batch_size: int,
    pad_to_multiple: int = 16,
) -> dict:
    """How much of what the model computes is real tokens, for rows taken ``micro_batch_size`` at a time.

    Padding follows both collates: each micro-batch is as wide as its longest row rounded up to
    ``pad_to_multiple``, at most ``seq_length``. ``share``: real tokens over the positions of those batches;
    ``fill``: real tokens over ``rows x seq_length``, what a fixed-shape batch (one row of ``seq_length`` per
    micro-batch) computes. Unpacked data is ``rows = [[0], [1], ...]``.

    Examples:
        python -c "from recipes.packing import token_share as t; print(t([100, 60], [[0, 1]], 256, 1))"
    """
    real = sum(lengths[i] for row in rows for i in row)
    computed = 0
    for start in range(0, len(rows), micro_batch_size):
        batch = rows[start : start + micro_batch_size]
        longest = max(sum(lengths[i] for i in row) for row in batch)
        computed += len(batch) * min(seq_length, -(-longest // pad_to_multiple) * pad_to_multiple)
    return {
        "examples": sum(len(row) for row in rows),
        "rows": len(rows),
        "examples_per_row": round(sum(len(row) for row in rows) / max(1, len(rows)), 2),
        "real_tokens": real,
        "computed_tokens": computed,
        "share": real / computed if computed else 0.0,
        "fill": real / (len(rows) * seq_length) if rows else 0.0,
    }
