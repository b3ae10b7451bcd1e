"""Sequence packing of the chat data (recipes/packing.py, recipes/chat_data.py), on CPU.

The packed dataset itself: every example in exactly one row, no row longer than ``seq_length``, each
example's tokens, labels, loss mask and positions intact inside its row, the row boundaries in ``cu_seqlens``
as NeMo's forward step reads them, and the real-token share counted the way the collates pad. Where packing
runs (``data.packed``): on a GPU path with micro-batch 1, refused with the reason on CPU.
"""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from recipes import packing
from recipes.finetune import ConfigError, build, compose, run_finetune, validate

SEQ = 1024  # several built-in examples (~180 tokens with the tiny tokenizer) per row


@pytest.fixture(scope="module")
def builtin(tmp_path_factory):
    from data_prep.builtin import write

    return write(tmp_path_factory.mktemp("builtin"))


@pytest.fixture(scope="module")
def tokenizer(tiny_hf):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_hf)


@pytest.fixture(scope="module")
def datasets(builtin, tokenizer):
    from recipes.chat_data import HarmonyChatDataset

    return {
        packed: HarmonyChatDataset(builtin["train"], tokenizer, SEQ, packed=packed)
        for packed in (False, True)
    }


def segments(batch, r: int) -> list[tuple[int, int]]:
    """The ``[start, end)`` spans of row ``r`` as NeMo's forward step reads them (up to the argmin)."""
    cu = batch["cu_seqlens"][r, : int(batch["cu_seqlens_argmin"][r])].tolist()
    return list(zip(cu[:-1], cu[1:], strict=True))


# ---------------------------------------------------------------------------------------------------------------
# The packer


@given(st.lists(st.integers(1, 64), min_size=1, max_size=80), st.integers(64, 200))
def test_every_example_lands_in_exactly_one_row_that_fits(lengths, seq_length):
    rows = packing.pack_rows(lengths, seq_length)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= seq_length for row in rows)
    assert len(rows) >= -(-sum(lengths) // seq_length)
    # first-fit decreasing: no two rows could have been one (each row after the first was opened because the
    # largest example it holds fitted in no earlier row)
    for later in range(1, len(rows)):
        biggest = max(lengths[i] for i in rows[later])
        assert all(sum(lengths[i] for i in row) + biggest > seq_length for row in rows[:later])
    assert packing.pack_rows(lengths, seq_length) == rows  # the same rows on every run and process


def test_the_packer_refuses_an_example_longer_than_a_row():
    with pytest.raises(ValueError, match=r"do not fit 1..seq_length=8"):
        packing.pack_rows([4, 9], 8)


# ---------------------------------------------------------------------------------------------------------------
# The packed dataset


def test_every_example_appears_exactly_once_and_rows_fit(datasets):
    flat, packed = datasets[False], datasets[True]
    assert len(packed.examples) == len(flat.examples) > 0
    seen = [i for row in packed.rows for i in row]
    assert sorted(seen) == list(range(len(packed.examples)))
    assert all(sum(packed.lengths[i] for i in row) <= SEQ for row in packed.rows)
    assert len(packed) == len(packed.rows) < len(flat) // 3  # > 3 examples per row on average
    # the samples are the rows' examples themselves
    samples = [packed[k] for k in range(len(packed))]
    assert sorted(id(e) for s in samples for e in s) == sorted(id(e) for e in packed.examples)


def test_each_example_is_intact_inside_its_row_and_masks_cover_its_trained_span(datasets):
    data = datasets[True]
    rows = [data[k] for k in range(len(data))]
    for start in range(0, len(rows), 3):  # batches of several rows: boundaries padded with -1 per row
        chunk = rows[start : start + 3]
        batch = data.collate_fn(chunk)
        width = batch["tokens"].shape[1]
        assert width <= SEQ and width % data.pad_to_multiple == 0
        for r, examples in enumerate(chunk):
            spans = segments(batch, r)
            used = sum(len(e.input_ids) - 1 for e in examples)
            assert len(spans) == len(examples) + (used < width)  # the padding tail is a segment of its own
            for (a, b), e in zip(spans, examples, strict=False):
                ids = torch.tensor(e.input_ids)
                assert b - a == len(ids) - 1
                assert torch.equal(batch["tokens"][r, a:b], ids[:-1])
                # labels stop at the example's own last token (<|return|>): nothing crosses into the next one
                assert torch.equal(batch["labels"][r, a:b], ids[1:])
                assert torch.equal(batch["position_ids"][r, a:b], torch.arange(b - a))
                mask = batch["loss_mask"][r, a:b]
                assert torch.equal(mask, torch.tensor(e.loss_mask[1:], dtype=torch.float))
                # the mask covers exactly the trained span: the answer tokens, as labels
                assert torch.equal(batch["labels"][r, a:b][mask.bool()], ids[e.prompt_len :])
            assert not batch["loss_mask"][r, used:].any()
            assert (batch["tokens"][r, used:] == data.pad_id).all()
            assert batch["token_count"][r] == sum(sum(e.loss_mask[1:]) for e in examples)


def test_boundaries_are_what_nemo_hands_to_the_attention(datasets):
    from nemo.collections.llm.gpt.model.base import get_packed_seq_params

    data = datasets[True]
    # a full row, a padded row: single micro-batches, as NeMo's forward step takes them
    for k in range(len(data)):
        batch = data.collate_fn([data[k]])
        cu = batch["cu_seqlens"][0]
        end = int(batch["cu_seqlens_argmin"][0])
        assert cu.dtype == torch.int32 and cu[0] == 0 and (cu[end:] == -1).all() and end < len(cu)
        assert (torch.diff(cu[:end]) > 0).all() and cu[end - 1] == batch["tokens"].shape[1]
        assert int(batch["max_seqlen"][0, 0]) == int(torch.diff(cu[:end]).max())
        params = get_packed_seq_params(batch)
        assert params.qkv_format == "thd"
        assert params.cu_seqlens_q.tolist() == cu[:end].tolist() == params.cu_seqlens_kv.tolist()
        assert int(params.max_seqlen_q) == int(batch["max_seqlen"][0, 0])
        # positions restart at every boundary
        starts = cu[:end].tolist()[:-1]
        assert all(int(batch["position_ids"][0, s]) == 0 for s in starts)


def test_epochs_shuffle_rows_and_keep_every_example_once_per_epoch(builtin, tokenizer):
    from recipes.chat_data import HarmonyChatDataset

    data = HarmonyChatDataset(builtin["train"], tokenizer, SEQ, packed=True, max_num_samples=200, seed=7)
    n = len(data.rows)
    assert len(data) == 200 > 2 * n
    for epoch in range(200 // n):
        block = data.order[epoch * n : (epoch + 1) * n]
        assert sorted(block.tolist()) == list(range(n))
    assert data.order[:n].tolist() != list(range(n))


def test_real_token_share_is_what_the_collates_compute(datasets):
    for packed, mbs in ((False, 1), (False, 4), (True, 1)):
        data = datasets[packed]
        share = data.token_share(mbs)
        samples = [data[k] for k in range(len(data))]
        computed = real = 0
        for start in range(0, len(samples), mbs):
            batch = data.collate_fn(samples[start : start + mbs])
            computed += batch["tokens"].numel()
            for s in samples[start : start + mbs]:
                real += sum(len(e.input_ids) - 1 for e in (s if packed else [s]))
        assert (share["real_tokens"], share["computed_tokens"]) == (real, computed)
        assert share["share"] == pytest.approx(real / computed)
        assert share["fill"] == pytest.approx(real / (len(samples) * SEQ))
    flat, packed = datasets[False].token_share(1), datasets[True].token_share(1)
    assert flat["real_tokens"] == packed["real_tokens"]  # the same tokens, in fewer rows
    assert packed["share"] >= flat["share"] > 0.9  # both pad to a multiple of 16 only
    assert packed["fill"] > 0.9 > 0.25 > flat["fill"]  # of rows of seq_length: ~180 of 1,024 tokens unpacked


def test_token_share_by_hand():
    # rows of 100+60 and 90 tokens at seq_length 256, one per micro-batch: widths 160 and 96
    got = packing.token_share([100, 60, 90], [[0, 1], [2]], 256, 1)
    assert (got["real_tokens"], got["computed_tokens"], got["rows"]) == (250, 256, 2)
    assert got["fill"] == pytest.approx(250 / 512)
    # one micro-batch of both rows is as wide as the longer: 2 x 160
    assert packing.token_share([100, 60, 90], [[0, 1], [2]], 256, 2)["computed_tokens"] == 320


# ---------------------------------------------------------------------------------------------------------------
# data.packed: where packing runs


def test_auto_packs_only_where_the_attention_keeps_examples_apart():
    assert packing.decide("auto", 1, cuda=True) == (True, None)
    on_cpu, note = packing.decide("auto", 1, cuda=False)
    assert not on_cpu and "no CUDA" in note and "data.packed" in note and "\n" not in note
    wide, note = packing.decide("auto", 4, cuda=True)
    assert not wide and "data.micro_batch_size=4" in note
    # YAML and the command line turn true/false into booleans
    assert packing.decide(True, 1, cuda=False) == (True, None)
    assert packing.decide(False, 1, cuda=True) == (False, None)
    assert packing.refusal("auto", cuda=False) is None and packing.refusal(True, cuda=True) is None
    assert "data.packed=true cannot run here: no CUDA" in packing.refusal(True, cuda=False)


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["data.packed=maybe"], "data.packed='maybe' is unknown"),
        (["data.packed=true"], "data.packed=true needs data.micro_batch_size=1"),
        (["data.packed=true"], "data.micro_batch_size=1 data.global_batch_size=2"),
    ],
)
def test_validate_names_the_packing_fix(overrides, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        validate(compose(overrides))  # data=builtin: micro-batch 4, global batch 8


def test_the_recipe_packs_on_the_gpu_path_only(tiny_hf):
    cfg = compose([f"model.hf_path={tiny_hf}", "data.micro_batch_size=1", "data.global_batch_size=8"])
    validate(cfg)
    assert build(cfg, cuda=True).data.packed is True
    assert build(cfg, cuda=False).data.packed is False
    default = compose([f"model.hf_path={tiny_hf}"])  # micro-batch 4: off on a GPU too
    assert build(default, cuda=True).data.packed is False


def test_packed_true_is_refused_on_cpu_before_anything_loads(tiny_hf, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("the refusal is for a machine without CUDA")
    cfg = compose(
        [
            f"work_dir={tmp_path}",
            f"model.hf_path={tiny_hf}",
            "data.packed=true",
            "data.micro_batch_size=1",
            "data.global_batch_size=8",
        ]
    )
    with pytest.raises(ConfigError, match=re.escape("data.packed=true cannot run here: no CUDA")):
        run_finetune(cfg)
    assert not (tmp_path / "models").exists() and not (tmp_path / "data").exists()


def test_the_data_module_refuses_packed_micro_batches_of_several_rows(builtin):
    from recipes.chat_data import HarmonyChatDataModule

    with pytest.raises(ValueError, match="packed=True needs micro_batch_size=1, not 4"):
        HarmonyChatDataModule(builtin["train"].parent, micro_batch_size=4, global_batch_size=8, packed=True)
