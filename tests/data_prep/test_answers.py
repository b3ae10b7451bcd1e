"""Answer formats: render and parse agree, both formats parse to one dict, bad answers fail clearly."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data_prep.answers import AnswerParseError, normalise_answer, parse_answer, render_answer

SEED_ANSWER = (
    "Based on this profile:\n\n1. Expected Tenure: 2.8 years\n   Reasoning: High performer in Engineering "
    "with recent promotion shows career progression. Typical tenure for this level is 2-3 years before next "
    "move.\n\n2. Time to Next Promotion: 1.5 years\n   Reasoning: 2-year gap between last promotion suggests "
    "18-month promotion cycle. High performance accelerates timeline.\n\n3. Attrition Risk: Low (15%)\n   "
    "Reasoning: Recent promotion, high performance, and career progression indicate strong engagement."
)

reason = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=80)
hr_answers = st.fixed_dictionaries(
    {
        "tenure_years": st.floats(0, 60, allow_nan=False),
        "time_to_promotion_years": st.none() | st.floats(0, 40, allow_nan=False),
        "attrition_risk": st.sampled_from(["low", "medium", "high"]),
        "attrition_probability": st.floats(0, 1),
        "reasons": st.fixed_dictionaries({"tenure": reason, "promotion": reason, "attrition": reason}),
    }
)
name = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=40).filter(
    lambda s: s.strip()
)
ticket_answers = st.fixed_dictionaries(
    {"queue": name, "priority": st.none() | st.sampled_from(["low", "medium", "high", "critical"])}
)
rubric_answers = st.floats(0.5, 100).flatmap(
    lambda m: st.fixed_dictionaries(
        {"score": st.floats(0, m), "max_score": st.just(m), "feedback": st.text(max_size=200)}
    )
)


def test_seed_example_parses():
    got = parse_answer("hr", SEED_ANSWER)
    assert got["tenure_years"] == 2.8
    assert got["time_to_promotion_years"] == 1.5
    assert got["attrition_risk"] == "low"
    assert got["attrition_probability"] == pytest.approx(0.15)
    assert got["reasons"]["tenure"].startswith("High performer in Engineering")
    assert got["reasons"]["tenure"].endswith("before next move.")
    assert got["reasons"]["attrition"].endswith("strong engagement.")


def test_hr_prose_and_json_give_the_same_dict():
    answer = {
        "tenure_years": 3.1,
        "time_to_promotion_years": None,
        "attrition_risk": "medium",
        "attrition_probability": 0.27,
        "reasons": {"tenure": "a", "promotion": "b", "attrition": "c"},
    }
    prose = render_answer("hr", answer, "prose")
    assert "2. Time to Next Promotion: not expected\n" in prose
    assert "3. Attrition Risk: Medium (27%)" in prose
    assert parse_answer("hr", prose) == parse_answer("hr", render_answer("hr", answer, "json"))


@settings(max_examples=60, deadline=None)
@given(answer=hr_answers, fmt=st.sampled_from(["prose", "json"]))
def test_hr_round_trip(answer, fmt):
    assert parse_answer("hr", render_answer("hr", answer, fmt)) == normalise_answer("hr", answer)


@settings(max_examples=60, deadline=None)
@given(answer=ticket_answers, fmt=st.sampled_from(["prose", "json"]))
def test_tickets_round_trip(answer, fmt):
    assert parse_answer("tickets", render_answer("tickets", answer, fmt)) == normalise_answer(
        "tickets", answer
    )


@settings(max_examples=60, deadline=None)
@given(answer=rubric_answers, fmt=st.sampled_from(["prose", "json"]))
def test_rubric_round_trip(answer, fmt):
    assert parse_answer("rubric", render_answer("rubric", answer, fmt)) == normalise_answer("rubric", answer)


def test_documented_literal_forms():
    assert render_answer("tickets", {"queue": "Technical Support", "priority": "high"}) == (
        "Queue: Technical Support\nPriority: high"
    )
    assert (
        render_answer("rubric", {"score": 7, "max_score": 10, "feedback": "ok"})
        == "Score: 7/10\nFeedback: ok"
    )
    assert json.loads(render_answer("rubric", {"score": 7, "max_score": 10, "feedback": "ok"}, "json")) == {
        "score": 7,
        "max_score": 10,
        "feedback": "ok",
    }


def test_json_in_code_fence_and_markdown_bold():
    assert parse_answer("tickets", '```json\n{"queue": "IT Support", "priority": "Low"}\n```') == {
        "queue": "IT Support",
        "priority": "low",
    }
    assert parse_answer("rubric", "**Score:** 3 out of 4\n**Feedback:** fine")["score"] == 3.0


@pytest.mark.parametrize(
    ("task", "text", "needle"),
    [
        ("hr", "", "empty"),
        ("hr", "I think they will stay.", "Expected Tenure"),
        ("hr", SEED_ANSWER.replace("Low (15%)", "Unclear"), "Low, Medium or High"),
        ("hr", SEED_ANSWER.replace("Low (15%)", "Low"), "percentage"),
        ("hr", '{"tenure_years": 2}', "missing time_to_promotion_years"),
        (
            "hr",
            '{"tenure_years": 2, "time_to_promotion_years": null, "attrition_risk": "low", '
            '"attrition_probability": 1.5}',
            "attrition_probability",
        ),
        ("hr", "{not json", "does not parse"),
        ("tickets", "Priority: high", "Queue"),
        ("rubric", "Score: 11/10", "score"),
        ("rubric", "Feedback: none", "Score"),
        ("weather", "sunny", "unknown task"),
    ],
)
def test_parse_failures_name_the_problem(task, text, needle):
    with pytest.raises(AnswerParseError, match=needle):
        parse_answer(task, text)
