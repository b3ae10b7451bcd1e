"""Harmony rendering and the loss mask: exactly the assistant's final message plus <|return|>."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from data_prep.builtin import generate
from data_prep.harmony import MaskError, encode, show
from data_prep.schema import ChatExample, read_jsonl


def _examples():
    train = generate(0)["train"][:3]
    with_thinking = ChatExample(
        id="t",
        task="builtin",
        messages=[
            {"role": "user", "content": "Route: invoice missing"},
            {"role": "assistant", "content": "Queue: Billing and Payments", "thinking": "invoice -> billing"},
        ],
    )
    return [*train, with_thinking]


@pytest.fixture(params=["tiny", "real"])
def tokenizer(request, tiny_hf, tmp_path_factory):
    if request.param == "tiny":
        return AutoTokenizer.from_pretrained(tiny_hf)
    real = request.getfixturevalue("real_tokenizer")
    return AutoTokenizer.from_pretrained(real)


@pytest.mark.parametrize("k", range(4))
def test_trained_span_is_final_message_plus_end(tokenizer, k):
    ex = _examples()[k]
    enc = encode(ex, tokenizer)
    trained = [t for t, m in zip(enc.input_ids, enc.loss_mask, strict=False) if m]
    expected = tokenizer.encode(ex.answer["content"], add_special_tokens=False) + [
        tokenizer.convert_tokens_to_ids("<|return|>")
    ]
    assert trained == expected
    # The mask is one contiguous span at the very end, and the prompt is untouched.
    assert enc.loss_mask == [0] * enc.prompt_len + [1] * (len(enc.loss_mask) - enc.prompt_len)
    prompt = tokenizer.decode(enc.input_ids[: enc.prompt_len])
    assert prompt.endswith("<|start|>assistant<|channel|>final<|message|>")
    if "thinking" in ex.answer:
        assert "<|channel|>analysis<|message|>" + ex.answer["thinking"] in prompt


def test_show_marks_the_span(tiny_hf):
    tok = AutoTokenizer.from_pretrained(tiny_hf)
    text = show(_examples()[0], tok)
    assert text.endswith("[[" + _examples()[0].answer["content"] + "<|return|>]]")


def test_non_harmony_template_is_refused(tiny_hf):
    tok = AutoTokenizer.from_pretrained(tiny_hf)
    tok.chat_template = "{% for m in messages %}{{ m.content }}{% endfor %}"
    with pytest.raises(MaskError, match="harmony"):
        encode(_examples()[0], tok)


def test_length_report_names_what_would_be_truncated(tiny_hf, tmp_path):
    from data_prep.builtin import write
    from data_prep.harmony import length_report

    tok = AutoTokenizer.from_pretrained(tiny_hf)
    path = write(tmp_path)["validation"]
    full = length_report(path, tok, seq_length=10_000)
    assert full["examples"] == 64 and full["too_long"] == []  # 32 people, a stage-1 and a stage-2 line each
    assert full["tokens"]["min"] <= full["tokens"]["median"] <= full["tokens"]["max"]
    # Limits inside the observed range leave out exactly the examples longer than them.
    lengths = {ex.id: len(encode(ex, tok).input_ids) for ex in read_jsonl(path)}
    for limit in (full["tokens"]["min"] - 2, full["tokens"]["min"] - 1, full["tokens"]["max"] - 1):
        cut = length_report(path, tok, seq_length=limit)
        assert cut["too_long"] == [i for i, n in lengths.items() if n - 1 > limit]
    assert len(length_report(path, tok, seq_length=full["tokens"]["min"] - 2)["too_long"]) == 64


def _stage2_examples():
    """A built-in stage-2 conversation, and the same with an analysis channel on both assistant turns."""
    stage2 = generate(0)["train"][1]
    messages = [dict(m) for m in stage2.messages]
    messages[2]["thinking"] = "earlier reasoning that must not be trained"
    messages[4]["thinking"] = "final reasoning"
    return [stage2, ChatExample(id="t2", task="builtin", messages=messages)]


@pytest.mark.parametrize("k", range(2))
def test_stage2_trains_only_the_final_answer(tokenizer, k):
    """Only the personalised answer and its <|return|> carry loss: the earlier assistant turn (the stage-1
    answer, an ended final message) and its analysis, and the history turn, are prompt."""
    ex = _stage2_examples()[k]
    assert ex.meta.get("stage") == 2 or k == 1
    enc = encode(ex, tokenizer)
    answer_ids = tokenizer.encode(ex.answer["content"], add_special_tokens=False)
    end = tokenizer.convert_tokens_to_ids("<|return|>")
    assert sum(enc.loss_mask) == len(answer_ids) + 1
    assert enc.loss_mask == [0] * enc.prompt_len + [1] * (len(answer_ids) + 1)
    assert enc.input_ids[enc.prompt_len :] == [*answer_ids, end]
    prompt = tokenizer.decode(enc.input_ids[: enc.prompt_len])
    earlier = ex.messages[2]["content"]
    # The earlier answer sits in the prompt as an ended final message; the chat template drops its analysis.
    assert f"<|start|>assistant<|channel|>final<|message|>{earlier}<|end|><|start|>user<|message|>" in prompt
    assert "earlier reasoning" not in prompt
    assert prompt.endswith(
        ("<|channel|>analysis<|message|>final reasoning<|end|>" if k == 1 else "")
        + "<|start|>assistant<|channel|>final<|message|>"
    )
    # The earlier answer's tokens are all masked: none of the trained positions lies before the final header.
    assert enc.input_ids.count(end) == 1
