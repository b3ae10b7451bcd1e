"""Answer formats: how each task's assistant answer is written, and how a model's answer is read back.

Two formats per task, chosen by ``answer_format`` in ``conf/data_prep.yaml``: ``prose`` and ``json``.
`parse_answer` reads both and returns the same normalised dict (the keys of the JSON form), so an evaluator
never needs to know which format a model was trained on. Each task's module (`data_prep.tasks`: ``hr``,
``tickets``, ``rubric``, ``builtin``, or a plugin) owns its format and documents it; this module holds the
generic functions every caller uses (`render_answer`, `parse_answer`, `normalise_answer`), which dispatch
through the task registry, and the helpers the task modules share.

Examples:
    python -c "from data_prep.answers import parse_answer; print(parse_answer('tickets', 'Queue: Billing and Payments\\nPriority: low'))"
"""

from __future__ import annotations

import json
import math
import re

from data_prep import tasks

FORMATS = ("prose", "json")


class AnswerParseError(ValueError):
    """A model answer that cannot be read as the task's answer format."""


def render_answer(task: str, answer: dict, fmt: str = "prose") -> str:
    """Write a normalised answer dict in the chosen format.

    Args:
        task: A registered task name (``hr``, ``tickets``, ``rubric``, ``builtin``, or a plugin's).
        answer: The normalised dict (the keys of the JSON form).
        fmt: ``prose`` or ``json``.

    Returns:
        The assistant's final-channel text; ``parse_answer(task, text)`` returns ``answer`` again
        (numbers rounded as the format writes them).

    Examples:
        python -c "from data_prep.answers import render_answer; print(render_answer('rubric', {'score': 7, 'max_score': 10, 'feedback': 'Clear.'}))"
    """
    t = _task(task)
    if fmt not in FORMATS:
        raise ValueError(f"answer_format={fmt!r}; use one of {FORMATS} (answer_format=json)")
    answer = t.normalise(answer)
    return t.render_json(answer) if fmt == "json" else t.render_prose(answer)


def parse_answer(task: str, text: str) -> dict:
    """Read a model's answer (prose or JSON, detected) into the task's normalised dict.

    Args:
        task: A registered task name.
        text: The assistant's final-channel text. A JSON object may sit inside a Markdown code fence;
            prose may carry a lead-in line ("Based on this profile:") and Markdown bold.

    Returns:
        The task's normalised dict (see each task module). HR: ``tenure_years`` (float),
        ``time_to_promotion_years`` (float or None), ``attrition_risk`` (low/medium/high),
        ``attrition_probability`` (0..1), ``reasons`` (tenure/promotion/attrition strings, empty when absent).
        Tickets: ``queue``, ``priority`` (str or None). Rubric: ``score``, ``max_score`` (floats),
        ``feedback`` (str).

    Raises:
        AnswerParseError: The task is unknown, the text is neither format, or a required field is missing or
            out of range; the message names the field and what was expected.

    Examples:
        python -c "from data_prep.answers import parse_answer; print(parse_answer('rubric', 'Score: 7/10\\nFeedback: ok'))"
    """
    t = _task(task)
    if not isinstance(text, str) or not text.strip():
        raise AnswerParseError(f"{task} answer is empty; expected the {task} prose or JSON answer format")
    body = _strip_fence(text)
    if body.startswith("{"):
        try:
            obj = json.loads(body)
        except json.JSONDecodeError as e:
            raise AnswerParseError(f"{task} answer looks like JSON but does not parse: {e}") from e
        if not isinstance(obj, dict):
            raise AnswerParseError(f"{task} JSON answer must be an object, got {type(obj).__name__}")
        return t.normalise(obj)
    return t.normalise(t.parse_prose(text))


def normalise_answer(task: str, answer: dict) -> dict:
    """Check an answer dict and return it with canonical types, rounding and key order.

    Raises:
        AnswerParseError: The task is unknown, a required key is missing or a value is out of range.

    Examples:
        python -c "from data_prep.answers import normalise_answer; print(normalise_answer('tickets', {'queue': 'IT Support'}))"
    """
    return _task(task).normalise(answer)


def _task(name: str) -> tasks.Task:
    try:
        return tasks.get(name)
    except tasks.UnknownTaskError as e:
        raise AnswerParseError(str(e)) from None


def _strip_fence(text: str) -> str:
    body = text.strip()
    m = re.match(r"^```[a-zA-Z]*\s*\n(.*?)\n?```\s*$", body, re.S)
    return m.group(1).strip() if m else body


# Helpers of the task modules' answer formats.
NUMBER = r"(\d+(?:\.\d+)?)"


def as_float(value, name: str, lo: float | None = None, hi: float | None = None) -> float:
    """``value`` as a finite float within ``[lo, hi]``; raises `AnswerParseError` naming ``name``."""
    if isinstance(value, bool):
        raise AnswerParseError(f"{name} is {value!r}; expected a number")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise AnswerParseError(f"{name} is {value!r}; expected a number") from None
    if not math.isfinite(x) or (lo is not None and x < lo) or (hi is not None and x > hi):
        bounds = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise AnswerParseError(f"{name} is {value!r}; expected a finite number {bounds}")
    return x


def one_line(text: str) -> str:
    """``text`` with every run of whitespace (newlines included) made one space."""
    return " ".join(str(text).split())
