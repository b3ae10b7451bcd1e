"""Answer formats: how each task's assistant answer is written, and how a model's answer is read back.

Two formats per task, chosen by ``answer_format`` in ``conf/data_prep.yaml``; `parse_answer` reads both
and returns the same normalised dict (the keys of the JSON form), so an evaluator never needs to know
which format a model was trained on.

HR (``task="hr"``)::

    prose: 1. Expected Tenure: 3.1 years
              Reasoning: ...

           2. Time to Next Promotion: 1.5 years        (or "not expected")
              Reasoning: ...

           3. Attrition Risk: Low (15%)
              Reasoning: ...
    json:  {"tenure_years": 3.1, "time_to_promotion_years": 1.5, "attrition_risk": "low",
            "attrition_probability": 0.15, "reasons": {"tenure": "...", "promotion": "...", "attrition": "..."}}

``"not expected"`` (JSON ``null``) means no promotion was recorded: either the source has no promotion
dates, or the employee left or reached the as-of date without one. Tenure has one decimal, the
probability two (a whole percent in prose).

Tickets (``task="tickets"``): prose ``Queue: Technical Support\\nPriority: high``; JSON
``{"queue": "Technical Support", "priority": "high"}``. Priority is omitted (``null``) when unknown.

Rubric (``task="rubric"``): prose ``Score: 7/10\\nFeedback: ...``; JSON
``{"score": 7, "max_score": 10, "feedback": "..."}``.

Built-in (``task="builtin"``, the embedded default's generated task): prose ``Attrition risk: High``; JSON
``{"attrition_risk": "high"}``; the risk is ``high`` or ``low``.

Examples:
    python -c "from data_prep.answers import parse_answer; print(parse_answer('tickets', 'Queue: Billing and Payments\\nPriority: low'))"
"""

from __future__ import annotations

import json
import math
import re

TASKS = ("hr", "tickets", "rubric", "builtin")
BUILTIN_RISKS = ("low", "high")
FORMATS = ("prose", "json")
RISK_LEVELS = ("low", "medium", "high")
NOT_EXPECTED = "not expected"


class AnswerParseError(ValueError):
    """A model answer that cannot be read as the task's answer format."""


def render_answer(task: str, answer: dict, fmt: str = "prose") -> str:
    """Write a normalised answer dict in the chosen format.

    Args:
        task: One of ``hr``, ``tickets``, ``rubric``.
        answer: The normalised dict (the keys of the JSON form).
        fmt: ``prose`` or ``json``.

    Returns:
        The assistant's final-channel text; ``parse_answer(task, text)`` returns ``answer`` again
        (numbers rounded as the format writes them).

    Examples:
        python -c "from data_prep.answers import render_answer; print(render_answer('rubric', {'score': 7, 'max_score': 10, 'feedback': 'Clear.'}))"
    """
    _check_task_format(task, fmt)
    answer = normalise_answer(task, answer)
    if fmt == "json":
        if task == "rubric":
            answer = {k: _int_if_whole(v) for k, v in answer.items()}
        return json.dumps(answer, ensure_ascii=False)
    if task == "hr":
        promo = answer["time_to_promotion_years"]
        promo_text = NOT_EXPECTED if promo is None else f"{promo:.1f} years"
        r = answer["reasons"]
        return (
            f"1. Expected Tenure: {answer['tenure_years']:.1f} years\n"
            f"   Reasoning: {_one_line(r['tenure'])}\n\n"
            f"2. Time to Next Promotion: {promo_text}\n"
            f"   Reasoning: {_one_line(r['promotion'])}\n\n"
            f"3. Attrition Risk: {answer['attrition_risk'].capitalize()} "
            f"({_percent(answer['attrition_probability'])})\n"
            f"   Reasoning: {_one_line(r['attrition'])}"
        )
    if task == "builtin":
        return f"Attrition risk: {answer['attrition_risk'].capitalize()}"
    if task == "tickets":
        text = f"Queue: {answer['queue']}"
        if answer["priority"] is not None:
            text += f"\nPriority: {answer['priority']}"
        return text
    return (
        f"Score: {_number(answer['score'])}/{_number(answer['max_score'])}\n"
        f"Feedback: {answer['feedback'].strip()}"
    )


def parse_answer(task: str, text: str) -> dict:
    """Read a model's answer (prose or JSON, detected) into the task's normalised dict.

    Args:
        task: One of ``hr``, ``tickets``, ``rubric``.
        text: The assistant's final-channel text. A JSON object may sit inside a Markdown code fence;
            prose may carry a lead-in line ("Based on this profile:") and Markdown bold.

    Returns:
        HR: ``tenure_years`` (float), ``time_to_promotion_years`` (float or None), ``attrition_risk``
        (low/medium/high), ``attrition_probability`` (0..1), ``reasons`` (tenure/promotion/attrition
        strings, empty when absent). Tickets: ``queue``, ``priority`` (str or None). Rubric: ``score``,
        ``max_score`` (floats), ``feedback`` (str).

    Raises:
        AnswerParseError: The text is neither format, or a required field is missing or out of range;
            the message names the field and what was expected.

    Examples:
        python -c "from data_prep.answers import parse_answer; print(parse_answer('rubric', 'Score: 7/10\\nFeedback: ok'))"
    """
    _check_task_format(task, "prose")
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
        return normalise_answer(task, obj)
    return normalise_answer(task, _PROSE_PARSERS[task](text))


def normalise_answer(task: str, answer: dict) -> dict:
    """Check an answer dict and return it with canonical types, rounding and key order.

    Raises:
        AnswerParseError: A required key is missing or a value is out of range.

    Examples:
        python -c "from data_prep.answers import normalise_answer; print(normalise_answer('tickets', {'queue': 'IT Support'}))"
    """
    if task == "hr":
        missing = [
            k
            for k in ("tenure_years", "time_to_promotion_years", "attrition_risk", "attrition_probability")
            if k not in answer
        ]
        if missing:
            raise AnswerParseError(f"hr answer is missing {', '.join(missing)}")
        tenure = _as_float(answer["tenure_years"], "tenure_years", lo=0.0)
        promo = answer["time_to_promotion_years"]
        if isinstance(promo, str) and promo.strip().lower() == NOT_EXPECTED:
            promo = None
        promo = None if promo is None else _as_float(promo, "time_to_promotion_years", lo=0.0)
        risk = str(answer["attrition_risk"]).strip().lower()
        if risk not in RISK_LEVELS:
            raise AnswerParseError(
                f"hr attrition_risk is {answer['attrition_risk']!r}; expected one of {RISK_LEVELS}"
            )
        prob = _as_float(answer["attrition_probability"], "attrition_probability", lo=0.0, hi=1.0)
        reasons = answer.get("reasons") or {}
        if not isinstance(reasons, dict):
            raise AnswerParseError(
                "hr reasons must be an object with tenure, promotion and attrition strings"
            )
        return {
            "tenure_years": round(tenure, 1),
            "time_to_promotion_years": None if promo is None else round(promo, 1),
            "attrition_risk": risk,
            "attrition_probability": round(prob, 2),
            "reasons": {k: _one_line(reasons.get(k) or "") for k in ("tenure", "promotion", "attrition")},
        }
    if task == "tickets":
        queue = answer.get("queue")
        if not isinstance(queue, str) or not queue.strip():
            raise AnswerParseError(
                "tickets answer has no queue; expected 'Queue: <name>' or {\"queue\": ...}"
            )
        priority = answer.get("priority")
        priority = None if priority is None or not str(priority).strip() else str(priority).strip().lower()
        return {"queue": _one_line(queue), "priority": None if priority is None else _one_line(priority)}
    if task == "rubric":
        missing = [k for k in ("score", "max_score") if k not in answer]
        if missing:
            raise AnswerParseError(f"rubric answer is missing {', '.join(missing)}")
        max_score = _as_float(answer["max_score"], "max_score", lo=0.0)
        if max_score <= 0:
            raise AnswerParseError(f"rubric max_score is {max_score}; expected a positive number")
        score = _as_float(answer["score"], "score", lo=0.0, hi=max_score)
        return {
            "score": round(score, 4),
            "max_score": round(max_score, 4),
            "feedback": str(answer.get("feedback") or "").strip(),
        }
    if task == "builtin":
        risk = str(answer.get("attrition_risk", "")).strip().lower()
        if risk not in BUILTIN_RISKS:
            raise AnswerParseError(
                f"builtin attrition_risk is {answer.get('attrition_risk')!r}; expected one of {BUILTIN_RISKS}"
            )
        return {"attrition_risk": risk}
    raise AnswerParseError(f"unknown task {task!r}; expected one of {TASKS}")


def _parse_builtin_prose(text: str) -> dict:
    m = re.search(r"attrition\s+risk\s*:\s*(\w+)", text, re.I)
    if not m:
        raise AnswerParseError("builtin answer has no 'Attrition risk: High|Low' line")
    return {"attrition_risk": m.group(1)}


_NUM = r"(\d+(?:\.\d+)?)"
_HR_ITEMS = (
    ("tenure", re.compile(r"expected\s+tenure[^:\n]*:\s*(?P<value>[^\n]*)", re.I)),
    ("promotion", re.compile(r"time\s+to\s+(?:next\s+)?promotion[^:\n]*:\s*(?P<value>[^\n]*)", re.I)),
    ("attrition", re.compile(r"attrition\s+risk[^:\n]*:\s*(?P<value>[^\n]*)", re.I)),
)
_REASON = re.compile(r"reasoning\s*:\s*(.*)", re.I | re.S)


def _parse_hr_prose(text: str) -> dict:
    text = text.replace("**", "").replace("\r\n", "\n")
    found = {}
    for key, rx in _HR_ITEMS:
        m = rx.search(text)
        if m is None:
            raise AnswerParseError(
                f"hr prose answer has no '{_HR_LABELS[key]}:' line; expected the three numbered items "
                "(Expected Tenure, Time to Next Promotion, Attrition Risk)"
            )
        found[key] = m
    reasons = {}
    order = sorted(found, key=lambda k: found[k].start())
    for i, key in enumerate(order):
        end = found[order[i + 1]].start() if i + 1 < len(order) else len(text)
        m = _REASON.search(text, found[key].end(), end)
        # A reason runs to the next item; drop that item's number ("2.") from its tail.
        reasons[key] = re.sub(r"\s*\d+\.$", "", _one_line(text[m.start(1) : end])) if m else ""
    tenure_text = found["tenure"].group("value")
    m = re.search(_NUM, tenure_text)
    if m is None:
        raise AnswerParseError(f"hr Expected Tenure {tenure_text.strip()!r} has no number of years")
    promo_text = found["promotion"].group("value").strip()
    if NOT_EXPECTED in promo_text.lower() or promo_text.lower().startswith(("none", "n/a")):
        promo = None
    else:
        pm = re.search(_NUM, promo_text)
        if pm is None:
            raise AnswerParseError(
                f"hr Time to Next Promotion {promo_text!r} is neither a number of years nor '{NOT_EXPECTED}'"
            )
        promo = float(pm.group(1))
    risk_text = found["attrition"].group("value")
    rm = re.match(r"\s*(low|medium|high)\b", risk_text, re.I)
    if rm is None:
        raise AnswerParseError(
            f"hr Attrition Risk {risk_text.strip()!r} does not start with Low, Medium or High"
        )
    pm = re.search(_NUM + r"\s*%", risk_text)
    if pm is None:
        raise AnswerParseError(f"hr Attrition Risk {risk_text.strip()!r} has no percentage, e.g. 'Low (15%)'")
    return {
        "tenure_years": float(m.group(1)),
        "time_to_promotion_years": promo,
        "attrition_risk": rm.group(1).lower(),
        "attrition_probability": float(pm.group(1)) / 100.0,
        "reasons": reasons,
    }


_HR_LABELS = {
    "tenure": "Expected Tenure",
    "promotion": "Time to Next Promotion",
    "attrition": "Attrition Risk",
}


def _parse_tickets_prose(text: str) -> dict:
    text = text.replace("**", "")
    q = re.search(r"^\s*queue\s*:\s*(.+?)\s*$", text, re.I | re.M)
    if q is None:
        raise AnswerParseError("tickets prose answer has no 'Queue: <name>' line")
    p = re.search(r"^\s*priority\s*:\s*(.+?)\s*$", text, re.I | re.M)
    return {"queue": q.group(1), "priority": p.group(1) if p else None}


def _parse_rubric_prose(text: str) -> dict:
    text = text.replace("**", "")
    s = re.search(r"score\s*:\s*" + _NUM + r"\s*(?:/|out\s+of)\s*" + _NUM, text, re.I)
    if s is None:
        raise AnswerParseError("rubric prose answer has no 'Score: <score>/<max_score>' line")
    f = re.search(r"feedback\s*:\s*(.*)", text, re.I | re.S)
    return {"score": float(s.group(1)), "max_score": float(s.group(2)), "feedback": f.group(1) if f else ""}


_PROSE_PARSERS = {
    "hr": _parse_hr_prose,
    "tickets": _parse_tickets_prose,
    "rubric": _parse_rubric_prose,
    "builtin": _parse_builtin_prose,
}


def _check_task_format(task: str, fmt: str) -> None:
    if task not in TASKS:
        raise AnswerParseError(f"unknown task {task!r}; expected one of {TASKS}")
    if fmt not in FORMATS:
        raise ValueError(f"answer_format={fmt!r}; use one of {FORMATS} (answer_format=json)")


def _strip_fence(text: str) -> str:
    body = text.strip()
    m = re.match(r"^```[a-zA-Z]*\s*\n(.*?)\n?```\s*$", body, re.S)
    return m.group(1).strip() if m else body


def _as_float(value, name: str, lo: float | None = None, hi: float | None = None) -> float:
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


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _percent(p: float) -> str:
    return f"{round(p * 100):d}%"


def _int_if_whole(x):
    return int(x) if isinstance(x, float) and x.is_integer() else x


def _number(x: float) -> str:
    return f"{x:.4f}".rstrip("0").rstrip(".")
