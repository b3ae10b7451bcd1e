"""Read the *final* channel out of text that gpt-oss generated in the harmony format.

A harmony completion carries the reasoning and the answer in separate channels::

    <|channel|>analysis<|message|>The employee was promoted last year...<|end|>
    <|start|>assistant<|channel|>final<|message|>{"queue": "IT Support"}<|return|>

Only the final channel is the answer. `final_text` returns it for three kinds of input:

- text with harmony special tokens (decoded with ``skip_special_tokens=False``): the content of the LAST
  final-channel message, up to ``<|return|>``, ``<|end|>``, ``<|call|>`` or the next ``<|start|>``;
- text decoded with ``skip_special_tokens=True``, where the specials vanished and ``analysis...`` runs
  straight into ``assistantfinal...``: the text after the last ``assistantfinal``;
- plain text without any harmony marker (a baseline's JSON answer, an endpoint that already split the
  channels): the text itself.

Examples:
    python -c "from recipes.harmony_text import final_text; print(final_text('<|channel|>final<|message|>Queue: IT Support<|return|>'))"
"""

from __future__ import annotations

import re

# `<|channel|>final` may carry a constraint (`<|channel|>final <|constrain|>json<|message|>`).
_FINAL_HEADER = re.compile(r"<\|channel\|>\s*final\b[^<]*(?:<\|constrain\|>[^<]*)?<\|message\|>")
# Any harmony special token, e.g. <|start|>, <|channel|>, <|return|>.
_SPECIAL = re.compile(r"<\|[a-z_]+\|>")
_END = re.compile(r"<\|(?:return|end|call|start|endoftext)\|>")
# What remains of a harmony completion decoded without its specials.
_SKIPPED_FINAL = re.compile(r"^\s*analysis.*?assistantfinal", re.S)


class NoFinalChannel(ValueError):
    """Harmony text that has channels but no final one (for example, generation stopped while thinking)."""


def final_text(raw: str) -> str:
    """The final-channel answer in ``raw``, stripped of surrounding whitespace.

    Args:
        raw: Generated text, with or without harmony special tokens.

    Returns:
        The answer text; ``""`` when the final channel is present but empty.

    Raises:
        NoFinalChannel: ``raw`` has harmony markers but no final-channel message; the message says which
            channels it has and how to get a final one.

    Examples:
        python -c "from recipes.harmony_text import final_text; print(final_text('<|channel|>analysis<|message|>hm<|end|><|start|>assistant<|channel|>final<|message|>Score: 7/10<|return|>'))"
    """
    headers = list(_FINAL_HEADER.finditer(raw))
    if headers:
        body = raw[headers[-1].end() :]
        end = _END.search(body)
        return (body[: end.start()] if end else body).strip()
    if _SPECIAL.search(raw):
        channels = sorted(set(re.findall(r"<\|channel\|>\s*([a-z]+)", raw)))
        raise NoFinalChannel(
            f"harmony text has channel(s) {channels or 'none'} but no final channel; the generation probably "
            "stopped while reasoning (raise max_new_tokens in predict)"
        )
    m = _SKIPPED_FINAL.match(raw)
    if m:
        last = raw.rfind("assistantfinal")
        return raw[last + len("assistantfinal") :].strip()
    return raw.strip()
