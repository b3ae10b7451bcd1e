"""Harmony rendering and the loss mask: exactly the assistant's final message plus <|return|>."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from data_prep.builtin import generate
from data_prep.harmony import MaskError, encode, show
from data_prep.schema import ChatExample


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
