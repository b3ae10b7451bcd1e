"""The tickets task: route a support ticket (subject + body) to a queue and a priority.

Source: `data_prep.tickets` (``conf/data_prep/tickets.yaml``). Answer format: prose
``Queue: Technical Support\\nPriority: high``; JSON ``{"queue": "Technical Support", "priority": "high"}``.
Priority is omitted (``null``) when unknown.

Metric groups: ``queue`` and ``priority`` (`data_prep.metrics.label_metrics`; a predicted queue matches the
references case-insensitively), each with a confusion-matrix plot.

Baseline (``tickets.*`` in ``conf/baselines.yaml``), ``tfidf_logistic_regression``: TF-IDF of the user
message (word 1-2 grams) and a logistic regression for the queue, another for the priority. Queues are
imbalanced, so classes are reweighted and regularisation is light (``tickets.C``, ``tickets.class_weight``;
chosen on the validation split of the multilingual tickets).

Examples:
    python -c "from data_prep.answers import parse_answer; print(parse_answer('tickets', 'Queue: Billing and Payments\\nPriority: low'))"
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from data_prep import tickets
from data_prep.answers import AnswerParseError, one_line
from data_prep.tasks import BaselinesError, Task, register


@dataclass
class TicketBaselineConfig:
    """``tickets:`` of ``conf/baselines.yaml``."""

    models: list[str] = field(default_factory=lambda: ["tfidf_logistic_regression"])
    max_features: int = 50000
    C: float = 100.0  # inverse regularisation strength of the logistic regression
    class_weight: str = "balanced"  # "" or balanced


class TicketsTask(Task):
    name = "tickets"
    fields = ("subject", "body", "queue", "priority", "language", "id")
    required = ("subject", "body", "queue")
    source = tickets
    baselines = ("tfidf_logistic_regression",)
    options = ("languages", "unescape_newlines")

    def check(self, src) -> list[str]:
        problems = []
        if "id" in src.recode:
            problems.append(
                "data_prep.recode.id does not apply to task tickets: ticket ids are hashes of the ticket text and "
                "the id column is never read; remove it"
            )
        return problems

    def normalise(self, answer: dict) -> dict:
        queue = answer.get("queue")
        if not isinstance(queue, str) or not queue.strip():
            raise AnswerParseError(
                "tickets answer has no queue; expected 'Queue: <name>' or {\"queue\": ...}"
            )
        priority = answer.get("priority")
        priority = None if priority is None or not str(priority).strip() else str(priority).strip().lower()
        return {"queue": one_line(queue), "priority": None if priority is None else one_line(priority)}

    def render_prose(self, answer: dict) -> str:
        text = f"Queue: {answer['queue']}"
        if answer["priority"] is not None:
            text += f"\nPriority: {answer['priority']}"
        return text

    def parse_prose(self, text: str) -> dict:
        text = text.replace("**", "")
        q = re.search(r"^\s*queue\s*:\s*(.+?)\s*$", text, re.I | re.M)
        if q is None:
            raise AnswerParseError("tickets prose answer has no 'Queue: <name>' line")
        p = re.search(r"^\s*priority\s*:\s*(.+?)\s*$", text, re.I | re.M)
        return {"queue": q.group(1), "priority": p.group(1) if p else None}

    def groups(self, scored: list, cfg) -> list:
        # scikit-learn behind the metrics: imported by the evaluator only, never by python -m data_prep.
        from data_prep.metrics import canonical, label_headline, label_metrics, make_group

        out = []
        for name in ("queue", "priority"):
            rows = [r for r in scored if r[0].label.get(name) is not None]
            spelling = {str(ex.label[name]).casefold(): str(ex.label[name]) for ex, _ in rows}
            out.append(
                make_group(
                    self.name,
                    name,
                    rows,
                    {
                        "y": np.array([str(ex.label[name]) for ex, _ in rows], dtype=object),
                        "p": np.array([canonical(a[name], spelling) for _, a in rows], dtype=object),
                    },
                    lambda d: label_metrics(d["y"], d["p"]),
                    label_headline,
                    plot="confusion",
                    title="Ticket {name} (rows: reference, columns: prediction)",
                )
            )
        return [g for g in out if g is not None]

    def baseline_models(self, cfg) -> list[str]:
        return list(cfg.tickets.models)

    def check_baselines(self, cfg) -> list[str]:
        problems = []
        bad = [m for m in cfg.tickets.models if m not in self.baselines]
        if bad:
            problems.append(f"tickets.models has {bad}; use {list(self.baselines)}")
        if cfg.tickets.class_weight not in ("", "balanced"):
            problems.append(f"tickets.class_weight={cfg.tickets.class_weight!r}; use '' or balanced")
        if cfg.tickets.C <= 0:
            problems.append(f"tickets.C={cfg.tickets.C}; use a positive regularisation constant (100)")
        if cfg.tickets.max_features < 1:
            problems.append(f"tickets.max_features={cfg.tickets.max_features}; use a positive number")
        return problems

    def baseline_answers(self, model: str, train: list, test: list, cfg) -> list[dict]:
        """Fit TF-IDF + logistic regression on ``train`` (queue, and priority where labelled); answer ``test``.

        Raises:
            BaselinesError: The training split has no queue labels.

        Examples:
            python -m recipes.baselines data_dir=work/data/tickets
        """
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline

        def text(ex):
            return "\n".join(m["content"] for m in ex.messages if m.get("role") == "user")

        def fit(key):
            rows = [(text(ex), str(ex.label[key])) for ex in train if ex.label.get(key) is not None]
            classes = {y for _, y in rows}
            if len(classes) < 2:
                return None, next(iter(classes), None)
            pipeline = make_pipeline(
                TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), max_features=cfg.tickets.max_features),
                LogisticRegression(
                    max_iter=5000, C=cfg.tickets.C, class_weight=cfg.tickets.class_weight or None
                ),
            )
            return pipeline.fit([t for t, _ in rows], [y for _, y in rows]), None

        queue, only_queue = fit("queue")
        if queue is None and only_queue is None:
            raise BaselinesError(
                f"the {cfg.train_split} split has no queue labels; check data_prep's tickets mapping"
            )
        priority, only_priority = fit("priority")
        texts = [text(ex) for ex in test]
        queues = queue.predict(texts) if queue else [only_queue] * len(test)
        priorities = priority.predict(texts) if priority else [only_priority] * len(test)
        return [{"queue": str(q), "priority": p} for q, p in zip(queues, priorities, strict=True)]


register(TicketsTask())
