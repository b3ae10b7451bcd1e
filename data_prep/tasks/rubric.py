"""The rubric task: score a submission against its rubric and explain the score.

Source: `data_prep.rubric` (``conf/data_prep/rubric.yaml``). Answer format: prose
``Score: 7/10\\nFeedback: ...``; JSON ``{"score": 7, "max_score": 10, "feedback": "..."}``.

Metric group: ``score`` (`data_prep.metrics.rubric_metrics`: exact match on the reference's scale, MAE of
``score / max_score``, quadratic weighted kappa on whole points). No baseline.

Examples:
    python -c "from data_prep.answers import parse_answer; print(parse_answer('rubric', 'Score: 7/10\\nFeedback: ok'))"
"""

from __future__ import annotations

import json
import re

from data_prep import rubric
from data_prep.answers import NUMBER, AnswerParseError, as_float
from data_prep.tasks import Task, register


class RubricTask(Task):
    name = "rubric"
    fields = ("id", "group", "prompt", "submission", "rubric_alignment", "score", "max_score", "feedback")
    required = ("score", "max_score")
    source = rubric
    options = ("score_bands",)

    def check(self, src) -> list[str]:
        problems = []
        for f in sorted(set(src.recode) & set(rubric.NOT_RECODED)):
            problems.append(f"data_prep.recode.{f} does not apply to task rubric: {rubric.NOT_RECODED[f]}")
        if src.score_bands < 1:
            problems.append(f"data_prep.score_bands={src.score_bands}; use a positive number of bands (5)")
        return problems

    def normalise(self, answer: dict) -> dict:
        missing = [k for k in ("score", "max_score") if k not in answer]
        if missing:
            raise AnswerParseError(f"rubric answer is missing {', '.join(missing)}")
        max_score = as_float(answer["max_score"], "max_score", lo=0.0)
        if max_score <= 0:
            raise AnswerParseError(f"rubric max_score is {max_score}; expected a positive number")
        score = as_float(answer["score"], "score", lo=0.0, hi=max_score)
        return {
            "score": round(score, 4),
            "max_score": round(max_score, 4),
            "feedback": str(answer.get("feedback") or "").strip(),
        }

    def render_json(self, answer: dict) -> str:
        # Whole scores as integers ("7", not "7.0").
        return json.dumps({k: _int_if_whole(v) for k, v in answer.items()}, ensure_ascii=False)

    def render_prose(self, answer: dict) -> str:
        return (
            f"Score: {_number(answer['score'])}/{_number(answer['max_score'])}\n"
            f"Feedback: {answer['feedback'].strip()}"
        )

    def parse_prose(self, text: str) -> dict:
        text = text.replace("**", "")
        s = re.search(r"score\s*:\s*" + NUMBER + r"\s*(?:/|out\s+of)\s*" + NUMBER, text, re.I)
        if s is None:
            raise AnswerParseError("rubric prose answer has no 'Score: <score>/<max_score>' line")
        f = re.search(r"feedback\s*:\s*(.*)", text, re.I | re.S)
        return {
            "score": float(s.group(1)),
            "max_score": float(s.group(2)),
            "feedback": f.group(1) if f else "",
        }

    def groups(self, scored: list, cfg) -> list:
        # scikit-learn behind the metrics: imported by the evaluator only, never by python -m data_prep.
        from data_prep.metrics import make_group, rubric_headline, rubric_metrics

        rows = [r for r in scored if r[0].label.get("score") is not None and r[0].label.get("max_score")]
        g = make_group(
            self.name,
            "score",
            rows,
            {
                "score": [float(ex.label["score"]) for ex, _ in rows],
                "max": [float(ex.label["max_score"]) for ex, _ in rows],
                "pred": [a["score"] for _, a in rows],
                "pred_max": [a["max_score"] for _, a in rows],
            },
            lambda d: rubric_metrics(d["score"], d["max"], d["pred"], d["pred_max"]),
            rubric_headline,
        )
        return [] if g is None else [g]


def _int_if_whole(x):
    return int(x) if isinstance(x, float) and x.is_integer() else x


def _number(x: float) -> str:
    return f"{x:.4f}".rstrip("0").rstrip(".")


register(RubricTask())
