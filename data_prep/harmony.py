"""Render chat examples in gpt-oss's harmony format through the tokenizer's own chat template.

The trained span is the assistant's final message plus its end token (``<|return|>``); everything before it
(system header, developer instructions, user turn, an optional analysis channel and the
``<|start|>assistant<|channel|>final<|message|>`` header) is prompt. `encode` checks that the two pieces
tokenised apart equal the whole conversation tokenised at once, and that the mask is neither empty nor
covering the prompt, so a template change cannot shift the mask silently.

Examples:
    python -m data_prep.harmony --data work/data/builtin/train.jsonl --tokenizer work/models/gpt-oss-tiny-hf
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from data_prep.schema import ChatExample, read_jsonl

END_OF_ANSWER = "<|return|>"
FINAL_HEADER = "<|start|>assistant<|channel|>final<|message|>"
DEFAULT_DATE = "2025-06-01"  # fixed, so the same data always renders to the same tokens
DEFAULT_EFFORT = "low"


class MaskError(ValueError):
    """The loss mask of an example is not exactly the assistant's final message plus its end token."""


@dataclass
class Encoded:
    input_ids: list[int]
    loss_mask: list[int]  # 1 where the token is trained on

    @property
    def prompt_len(self) -> int:
        return self.loss_mask.index(1)


def render_text(
    example: ChatExample, tokenizer, date: str = DEFAULT_DATE, reasoning_effort: str = DEFAULT_EFFORT
) -> tuple[str, str]:
    """``(prompt, answer)`` strings: the prompt ends with the final-channel header, the answer with
    ``<|return|>``; ``prompt + answer`` is exactly the template's rendering of the whole conversation."""
    full = tokenizer.apply_chat_template(
        example.messages,
        tokenize=False,
        add_generation_prompt=False,
        strftime_now=lambda fmt: date,
        reasoning_effort=reasoning_effort,
    )
    answer = example.answer["content"] + END_OF_ANSWER
    if not full.endswith(FINAL_HEADER + answer):
        raise MaskError(
            f"example {example.id!r}: the chat template did not end with the final channel and {END_OF_ANSWER}; "
            "is this a gpt-oss (harmony) tokenizer?"
        )
    return full[: -len(answer)], answer


def generation_prompt(
    messages: list[dict], tokenizer, date: str = DEFAULT_DATE, reasoning_effort: str = DEFAULT_EFFORT
) -> str:
    """The prompt for generating an answer to ``messages`` (no assistant turn), ending with the final-channel
    header so that generation starts inside the final channel, as in training."""
    text = tokenizer.apply_chat_template(
        messages,
        tokenize=False,
        add_generation_prompt=True,
        strftime_now=lambda fmt: date,
        reasoning_effort=reasoning_effort,
    )
    return text + "<|channel|>final<|message|>"


def encode(
    example: ChatExample, tokenizer, date: str = DEFAULT_DATE, reasoning_effort: str = DEFAULT_EFFORT
) -> Encoded:
    """Token ids and loss mask of one example (see the module docstring for the checks)."""
    prompt, answer = render_text(example, tokenizer, date, reasoning_effort)
    p_ids = tokenizer.encode(prompt, add_special_tokens=False)
    a_ids = tokenizer.encode(answer, add_special_tokens=False)
    whole = tokenizer.encode(prompt + answer, add_special_tokens=False)
    if p_ids + a_ids != whole:
        raise MaskError(f"example {example.id!r}: the prompt/answer boundary changes the tokenisation")
    end_id = tokenizer.convert_tokens_to_ids(END_OF_ANSWER)
    if not a_ids or a_ids[-1] != end_id:
        raise MaskError(f"example {example.id!r}: the trained span does not end with {END_OF_ANSWER}")
    if not p_ids:
        raise MaskError(f"example {example.id!r}: empty prompt; the mask would cover the whole sequence")
    return Encoded(input_ids=p_ids + a_ids, loss_mask=[0] * len(p_ids) + [1] * len(a_ids))


def show(example: ChatExample, tokenizer, **kwargs) -> str:
    """The rendered example with the trained span between ``[[`` and ``]]``."""
    enc = encode(example, tokenizer, **kwargs)
    prompt = tokenizer.decode(enc.input_ids[: enc.prompt_len], skip_special_tokens=False)
    trained = tokenizer.decode(enc.input_ids[enc.prompt_len :], skip_special_tokens=False)
    return f"{prompt}[[{trained}]]"


def length_report(path, tokenizer, seq_length: int, **kwargs) -> dict:
    """Token-length statistics of a chat JSONL and the examples ``seq_length`` would truncate.

    A training sequence is the rendered conversation minus one token (inputs are shifted against labels), so
    an example is too long when ``len(input_ids) - 1 > seq_length``; the recipe's data module leaves such
    examples out and names them.

    Examples:
        python -m data_prep.harmony --stats --seq-length 2048 --data work/data/hr/train.jsonl --tokenizer <tok>
    """
    import numpy as np

    ids, lengths, trained = [], [], []
    for ex in read_jsonl(path):
        enc = encode(ex, tokenizer, **kwargs)
        ids.append(ex.id)
        lengths.append(len(enc.input_ids))
        trained.append(sum(enc.loss_mask))
    arr = np.asarray(lengths)
    too_long = [i for i, n in zip(ids, lengths, strict=True) if n - 1 > seq_length]
    return {
        "examples": len(ids),
        "tokens": {
            "min": int(arr.min()),
            "median": float(np.median(arr)),
            "p95": float(np.percentile(arr, 95)),
            "max": int(arr.max()),
        },
        "trained_tokens": {"median": float(np.median(trained)), "max": int(max(trained))},
        "seq_length": seq_length,
        "too_long": too_long,
    }


def main() -> None:
    import json

    from transformers import AutoTokenizer

    parser = argparse.ArgumentParser(
        description="Print one rendered example with its trained span marked [[...]], or --stats."
    )
    parser.add_argument("--data", required=True, help="chat JSONL")
    parser.add_argument("--tokenizer", required=True, help="tokenizer folder (a model folder works)")
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--stats", action="store_true", help="token-length statistics and truncation report")
    parser.add_argument("--seq-length", type=int, default=2048, help="with --stats: the training seq_length")
    args = parser.parse_args()
    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    if args.stats:
        report = length_report(args.data, tok, args.seq_length)
        print(json.dumps({**report, "too_long": report["too_long"][:20]}, indent=2))
        print(
            f"{len(report['too_long'])} of {report['examples']} examples exceed seq_length={args.seq_length}"
        )
        return
    for i, ex in enumerate(read_jsonl(args.data)):
        if i == args.index:
            print(show(ex, tok))
            return
    raise SystemExit(f"{args.data} has fewer than {args.index + 1} examples")


if __name__ == "__main__":
    main()
