"""The built-in task: the attrition risk (high or low) of a generated employee profile.

Source: `data_prep.builtin` generates the examples itself (``python -m data_prep.builtin``), so
``python -m data_prep`` has no reader for it. Answer format: prose ``Attrition risk: High``; JSON
``{"attrition_risk": "high"}``. Metric group: ``attrition_risk`` (`data_prep.metrics.label_metrics`).

Examples:
    python -c "from data_prep.answers import render_answer; print(render_answer('builtin', {'attrition_risk': 'high'}))"
"""

from __future__ import annotations

import re

import numpy as np

from data_prep.answers import AnswerParseError
from data_prep.tasks import Task, register

RISKS = ("low", "high")


class BuiltinTask(Task):
    name = "builtin"

    def normalise(self, answer: dict) -> dict:
        risk = str(answer.get("attrition_risk", "")).strip().lower()
        if risk not in RISKS:
            raise AnswerParseError(
                f"builtin attrition_risk is {answer.get('attrition_risk')!r}; expected one of {RISKS}"
            )
        return {"attrition_risk": risk}

    def render_prose(self, answer: dict) -> str:
        return f"Attrition risk: {answer['attrition_risk'].capitalize()}"

    def parse_prose(self, text: str) -> dict:
        m = re.search(r"attrition\s+risk\s*:\s*(\w+)", text, re.I)
        if not m:
            raise AnswerParseError("builtin answer has no 'Attrition risk: High|Low' line")
        return {"attrition_risk": m.group(1)}

    def groups(self, scored: list, cfg) -> list:
        # scikit-learn behind the metrics: imported by the evaluator only, never by python -m data_prep.
        from data_prep.metrics import label_headline, label_metrics, make_group

        rows = [r for r in scored if r[0].label.get("attrition") is not None]
        g = make_group(
            self.name,
            "attrition_risk",
            rows,
            {
                "y": np.array(["high" if ex.label["attrition"] else "low" for ex, _ in rows], dtype=object),
                "p": np.array([a["attrition_risk"] for _, a in rows], dtype=object),
            },
            lambda d: label_metrics(d["y"], d["p"]),
            label_headline,
        )
        return [] if g is None else [g]


register(BuiltinTask())
