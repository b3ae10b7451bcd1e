"""The personalised (stage 2) conversation: one definition for the training data and for inference.

Stage 1 answers the profile. Stage 2 continues that conversation: the stage-1 answer stays as the assistant's
earlier turn and a new user turn gives the individual's history and asks for an updated answer::

    system | user: profile | assistant: stage-1 answer | user: history turn | assistant: personalised answer

data_prep writes one such conversation after each person's stage-1 line, in the person's split, with the id
``<stage-1 id>/stage2`` and ``meta.stage = 2`` (`stage2_id`, `is_stage2`); ``recipes.predict`` builds the same
prompt around the model's own stage-1 answer. Only the final answer carries loss (`data_prep.harmony.encode`).

In the training conversation the earlier turn is the *population-level* answer, the one the profile alone
supports (for the built-in task, the rule's answer without the history), not the person's label: were it the
label, the personalised answer (the same label) would be a copy of the turn before it, and a model trained so
would repeat its stage-1 answer at inference whatever the history says.

Examples:
    python -c "from data_prep.stage2 import history_turn; print(history_turn({'engagement_score': 2}))"
"""

from __future__ import annotations

HISTORY_LABELS = {
    "tenure_years": "Tenure so far (years)",
    "project_completion_rate": "Project completion rate",
    "manager_feedback": "Manager feedback",
    "engagement_score": "Engagement score",
    "last_promotion_years_ago": "Years since last promotion",
    "recent_rating": "Most recent rating",
}
HISTORY_HEADER = "Individual history:\n"
HISTORY_REQUEST = (
    "\nTaking this individual's history into account, update the prediction. Answer in the same format."
)
STAGE2_SUFFIX = "/stage2"  # a stage-2 line's id is its stage-1 line's id plus this


def history_label(key: str) -> str:
    """The label a history field is shown with: `HISTORY_LABELS`, else the key made readable."""
    return HISTORY_LABELS.get(key, key.replace("_", " ").capitalize())


def history_line(label: str, value) -> str:
    """One line of the history turn; "" for an empty value (the line is left out, as in the profile)."""
    return f"- {label}: {value}\n" if value is not None and str(value) != "" else ""


def history_turn(history: dict) -> str:
    """The stage-2 user turn for a history ``{field or label: value}``, one line per field, then the request.

    Examples:
        python -c "from data_prep.stage2 import history_turn; print(history_turn({'manager_feedback': 'strong'}))"
    """
    return (
        HISTORY_HEADER
        + "".join(history_line(history_label(k), v) for k, v in history.items())
        + HISTORY_REQUEST
    )


def stage2_messages(prompt: list[dict], stage1_answer: str, turn: str) -> list[dict]:
    """The stage-2 prompt: ``prompt`` (system and profile), the stage-1 answer, the history turn ``turn``."""
    return [
        *(dict(m) for m in prompt),
        {"role": "assistant", "content": stage1_answer},
        {"role": "user", "content": turn},
    ]


def stage2_id(example_id: str) -> str:
    return example_id + STAGE2_SUFFIX


def is_stage2(example) -> bool:
    """True for a stage-2 conversation line (``meta.stage == 2``)."""
    return example.meta.get("stage") == 2


def person_id(example) -> str:
    """The id of the stage-1 line a line belongs to (its own id for a stage-1 line)."""
    if is_stage2(example) and example.id.endswith(STAGE2_SUFFIX):
        return example.id[: -len(STAGE2_SUFFIX)]
    return example.id
