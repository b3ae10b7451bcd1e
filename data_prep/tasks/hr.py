"""The HR task: tenure, time to next promotion and attrition risk of an employee, from an HR export.

Source: `data_prep.hr` (``conf/data_prep/hr_*.yaml``). Answer format::

    prose: 1. Expected Tenure: 3.1 years                (still employed: "at least 3.1 years (still employed)")
              Reasoning: ...

           2. Time to Next Promotion: 1.5 years        (or "not expected")
              Reasoning: ...

           3. Attrition Risk: Low (15%)
              Reasoning: ...
    json:  {"tenure_years": 3.1, "tenure_censored": false, "time_to_promotion_years": 1.5, "attrition_risk": "low",
            "attrition_probability": 0.15, "reasons": {"tenure": "...", "promotion": "...", "attrition": "..."}}

Censored tenure: for an employee still employed the observed tenure is a lower bound, so it is never stated as
the expected tenure: prose says "at least X years (still employed)", JSON sets ``tenure_censored: true``. A
model answer in either form is read back the same way (``tenure_censored`` false when absent), and the
evaluator scores a lower-bound answer as one (`data_prep.metrics.duration_metrics`).

Metric groups: ``attrition`` (`data_prep.metrics.attrition_metrics`; a predicted leaver is
``attrition_risk == high`` with ``attrition_decision=risk``, else ``attrition_probability >=
attrition_threshold``), ``tenure`` and ``promotion`` (`data_prep.metrics.duration_metrics`; for tenure
with the answers' ``tenure_censored``: a lower bound is not a point estimate).

Baselines (``hr.*`` in ``conf/baselines.yaml``), ``logistic_regression`` and ``gradient_boosting``:

- Features: by default the profile the LLM sees, read from the ``- Key: value`` lines of the user message
  (numbers as numbers, ``YYYY-MM-DD`` dates as decimal years, anything else one-hot). With
  ``hr.source_csv`` set, every column of the example's source record (found by ``meta.source_line``)
  except ``hr.exclude_columns``: the same split, with all the columns a tabular model would get.
- Attrition: a classifier; ``attrition_probability`` is its predicted probability, ``attrition_risk``
  follows ``hr.risk_bands``.
- Tenure and time to promotion: a regressor (ridge or gradient boosting) fit on the *uncensored* training
  labels only (a censored label is a lower bound, not a value); with ``hr.source_csv``, the columns in
  ``hr.tenure_exclude_columns`` (which encode the tenure itself) are left out. With fewer than two
  uncensored promotions in training, the answer is "not expected".

Examples:
    python -c "from data_prep.answers import parse_answer; print(parse_answer('hr', '{\"tenure_years\": 3, \"time_to_promotion_years\": null, \"attrition_risk\": \"low\", \"attrition_probability\": 0.1}'))"
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

from data_prep import hr
from data_prep.answers import NUMBER, AnswerParseError, as_float, one_line
from data_prep.fast import Coded
from data_prep.hr import CENSORED_PREFIX, CENSORED_SUFFIX, NOT_EXPECTED
from data_prep.inspect import LabelLeakError, label_leaks, leak_message
from data_prep.schema import ChatExample
from data_prep.table import read_table
from data_prep.tasks import BaselinesError, Task, register

RISK_LEVELS = ("low", "medium", "high")
COHORT_FIELDS = ("title", "department", "region", "performance_rating")
_HR_ITEMS = (
    ("tenure", re.compile(r"expected\s+tenure[^:\n]*:\s*(?P<value>[^\n]*)", re.I)),
    ("promotion", re.compile(r"time\s+to\s+(?:next\s+)?promotion[^:\n]*:\s*(?P<value>[^\n]*)", re.I)),
    ("attrition", re.compile(r"attrition\s+risk[^:\n]*:\s*(?P<value>[^\n]*)", re.I)),
)
_HR_LABELS = {
    "tenure": "Expected Tenure",
    "promotion": "Time to Next Promotion",
    "attrition": "Attrition Risk",
}
# A tenure answer stated as a lower bound: "at least 3.1 years", "3.1+ years", ">= 3.1", "(still employed)".
_AT_LEAST = re.compile(r"at\s+least|still\s+employed|>=|\u2265|\d\+", re.I)
_REASON = re.compile(r"reasoning\s*:\s*(.*)", re.I | re.S)
_PROFILE_LINE = re.compile(r"^\s*-\s*([^:\n]+?)\s*:\s*(.*?)\s*$", re.M)
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _prompt_columns(ex, src, rows: np.ndarray | None = None) -> dict[str, pd.Series]:
    """The value of every profile line of the examples ``rows`` (all by default), by source column
    (categoricals, blank "").

    Read from the prompt pieces (`data_prep.fast.Coded`, one per shown column, its texts ``- Label: value``),
    so a million prompts are never spelt out; a prompt in any other form is parsed line by line.
    """
    user = ex.text["user"] if rows is None else ex.text["user"].take(rows)
    label_of = {
        **{lab: src.columns[f] for f, lab in hr.PROFILE_LABELS.items() if src.columns.get(f)},
        **{lab: c for c, lab in src.profile.items()},
    }
    out: dict[str, pd.Series] = {}
    pieces = [p for p in user.parts if not isinstance(p, str)]
    for p in pieces:
        if not isinstance(p, Coded):
            break
        lines = [json.loads(f'"{t}"') for t in p.texts.to_pylist()]
        found = [_PROFILE_LINE.match(t) for t in lines]
        keys = {m.group(1) for m in found if m}
        if len(keys) != 1 or any(m is None and t for m, t in zip(found, lines, strict=True)):
            break
        key = keys.pop()
        if key not in label_of or label_of[key] in out:
            break
        values = np.array([m.group(2) if m else "" for m in found], dtype=object)
        uniques, inverse = np.unique(values, return_inverse=True)
        out[label_of[key]] = pd.Series(pd.Categorical.from_codes(inverse[p.codes], categories=uniques))
    else:
        return out
    # Not one piece per column: spell the prompts out and read their lines.
    rows: dict[str, list[str]] = {c: [] for c in label_of.values()}
    for text in user.strings().to_pylist():
        seen = {m.group(1): m.group(2) for m in _PROFILE_LINE.finditer(json.loads(text))}
        for lab, c in label_of.items():
            rows[c].append(seen.get(lab, ""))
    return {c: pd.Series(v, dtype="category") for c, v in rows.items()}


@dataclass
class HrBaselineConfig:
    """``hr:`` of ``conf/baselines.yaml``."""

    models: list[str] = field(default_factory=lambda: ["logistic_regression", "gradient_boosting"])
    source_csv: str = ""  # "": the profile lines; a path: every column of the source record
    exclude_columns: list[str] = field(
        default_factory=lambda: ["Attrition", "EmployeeNumber", "EmployeeCount", "Over18", "StandardHours"]
    )
    tenure_exclude_columns: list[str] = field(
        default_factory=lambda: [
            "YearsAtCompany",
            "YearsInCurrentRole",
            "YearsWithCurrManager",
            "YearsSinceLastPromotion",
        ]
    )
    class_weight: str = ""  # "" or balanced (logistic regression only)
    risk_bands: list[float] = field(default_factory=lambda: [0.2, 0.5])


class HrTask(Task):
    name = "hr"
    fields = (
        "employee_id",
        "name",
        "hire_date",
        "termination_date",
        "promotion_date",
        "title",
        "department",
        "region",
        "performance_rating",
        "actual_tenure",
        "attrition",
    )
    required = ("title", "department")
    options = (
        "profile",
        "history",
        "true_values",
        "false_values",
        "pii_columns",
        "allow_label_columns",
        "date_formats",
        "date_fail_share",
        "tenure_unit",
        "tenure_tolerance_years",
        "tenure_tolerance_share",
        "tenure_min_agree_share",
        "as_of",
        "max_tenure_years",
        "cohort",
        "min_cohort",
        "medium_risk_rate",
    )
    source = hr
    baselines = ("logistic_regression", "gradient_boosting")

    def check(self, src) -> list[str]:
        problems = []
        c = src.columns
        if not c.get("attrition") and not c.get("termination_date"):
            problems.append("hr needs data_prep.columns.attrition or data_prep.columns.termination_date")
        if not c.get("actual_tenure") and not c.get("hire_date"):
            problems.append(
                "hr needs data_prep.columns.actual_tenure or data_prep.columns.hire_date for tenure"
            )
        bad_cohort = [k for k in src.cohort if k not in COHORT_FIELDS]
        if bad_cohort:
            problems.append(
                f"data_prep.cohort has {bad_cohort}; use fields among title, department, region, performance_rating"
            )
        if not src.max_tenure_years > 0:
            problems.append(
                f"data_prep.max_tenure_years={src.max_tenure_years}; use a positive number of years"
            )
        if src.tenure_unit not in hr.TENURE_UNITS:
            problems.append(
                f"data_prep.tenure_unit={src.tenure_unit!r}; use one of {list(hr.TENURE_UNITS)} "
                "(data_prep.tenure_unit=months)"
            )
        date_columns = {c.get(f) for f in hr.DATE_FIELDS} | set(hr.DATE_FIELDS)
        unknown = sorted(set(src.date_formats) - date_columns)
        if unknown:
            problems.append(
                f"data_prep.date_formats names {unknown}, which are no mapped date column; use the hire, "
                "termination or promotion date column (data_prep.date_formats.<column>=%d/%m/%Y)"
            )
        if src.min_cohort < 1:
            problems.append(f"data_prep.min_cohort={src.min_cohort}; use a positive number of employees")
        if not 0 <= src.medium_risk_rate <= 1:
            problems.append(f"data_prep.medium_risk_rate={src.medium_risk_rate}; use a rate between 0 and 1")
        if not 0 <= src.date_fail_share <= 1:
            problems.append(f"data_prep.date_fail_share={src.date_fail_share}; use a share between 0 and 1")
        for name, what in (
            ("tenure_tolerance_years", "number of years"),
            ("tenure_tolerance_share", "share of the dates' tenure"),
        ):
            if not getattr(src, name) >= 0:
                problems.append(f"data_prep.{name}={getattr(src, name)}; use a non-negative {what}")
        if not 0 < src.tenure_min_agree_share <= 1:
            problems.append(
                f"data_prep.tenure_min_agree_share={src.tenure_min_agree_share}; use a share above 0, at most 1"
            )
        return problems

    def check_split(self, ex, cfg) -> None:
        """The leak guard: refuse a prompt line whose values determine attrition on the training split.

        Every line of the profile (hire date, title, department, region, performance and the ``profile``
        columns) and of the history (``history`` columns, the stage-2 turn) is measured against the attrition
        label of the training examples with the rule of `data_prep.inspect.label_leaks`; a column at NMI >= 0.9 is refused unless listed in
        ``data_prep.allow_label_columns``.

        Raises:
            LabelLeakError: The columns, their NMI and the override that accepts them.
        """
        src = cfg.data_prep
        train = np.flatnonzero(np.asarray(ex.frame["split"] == "train"))
        shown = _prompt_columns(ex, src, train)
        # The history is a prompt too (the stage-2 turn).
        shown.update({c: ex.frame["history:" + c].iloc[train] for c in src.history})
        allowed = set(src.allow_label_columns)
        columns = {c: v for c, v in shown.items() if c not in allowed}
        leaks = label_leaks(columns, ex.label["attrition"].to_numpy(dtype=bool)[train])
        if leaks:
            raise LabelLeakError(leak_message(leaks, "attrition, left or stayed"))

    # ---------------------------------------------------------------------------------------- answer format

    def normalise(self, answer: dict) -> dict:
        missing = [
            k
            for k in ("tenure_years", "time_to_promotion_years", "attrition_risk", "attrition_probability")
            if k not in answer
        ]
        if missing:
            raise AnswerParseError(f"hr answer is missing {', '.join(missing)}")
        tenure = as_float(answer["tenure_years"], "tenure_years", lo=0.0)
        censored = answer.get("tenure_censored", False)
        if not isinstance(censored, bool):
            raise AnswerParseError(f"hr tenure_censored is {censored!r}; expected true or false")
        promo = answer["time_to_promotion_years"]
        if isinstance(promo, str) and promo.strip().lower() == NOT_EXPECTED:
            promo = None
        promo = None if promo is None else as_float(promo, "time_to_promotion_years", lo=0.0)
        risk = str(answer["attrition_risk"]).strip().lower()
        if risk not in RISK_LEVELS:
            raise AnswerParseError(
                f"hr attrition_risk is {answer['attrition_risk']!r}; expected one of {RISK_LEVELS}"
            )
        prob = as_float(answer["attrition_probability"], "attrition_probability", lo=0.0, hi=1.0)
        reasons = answer.get("reasons") or {}
        if not isinstance(reasons, dict):
            raise AnswerParseError(
                "hr reasons must be an object with tenure, promotion and attrition strings"
            )
        return {
            "tenure_years": round(tenure, 1),
            "tenure_censored": censored,
            "time_to_promotion_years": None if promo is None else round(promo, 1),
            "attrition_risk": risk,
            "attrition_probability": round(prob, 2),
            "reasons": {k: one_line(reasons.get(k) or "") for k in ("tenure", "promotion", "attrition")},
        }

    def render_prose(self, answer: dict) -> str:
        promo = answer["time_to_promotion_years"]
        censored = answer.get("tenure_censored", False)
        promo_text = NOT_EXPECTED if promo is None else f"{promo:.1f} years"
        r = answer["reasons"]
        return (
            f"1. Expected Tenure: {CENSORED_PREFIX if censored else ''}{answer['tenure_years']:.1f} years"
            f"{CENSORED_SUFFIX if censored else ''}\n"
            f"   Reasoning: {one_line(r['tenure'])}\n\n"
            f"2. Time to Next Promotion: {promo_text}\n"
            f"   Reasoning: {one_line(r['promotion'])}\n\n"
            f"3. Attrition Risk: {answer['attrition_risk'].capitalize()} "
            f"({round(answer['attrition_probability'] * 100):d}%)\n"
            f"   Reasoning: {one_line(r['attrition'])}"
        )

    def parse_prose(self, text: str) -> dict:
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
            reasons[key] = re.sub(r"\s*\d+\.$", "", one_line(text[m.start(1) : end])) if m else ""
        tenure_text = found["tenure"].group("value")
        m = re.search(NUMBER, tenure_text)
        if m is None:
            raise AnswerParseError(f"hr Expected Tenure {tenure_text.strip()!r} has no number of years")
        censored = bool(_AT_LEAST.search(tenure_text))
        promo_text = found["promotion"].group("value").strip()
        if NOT_EXPECTED in promo_text.lower() or promo_text.lower().startswith(("none", "n/a")):
            promo = None
        else:
            pm = re.search(NUMBER, promo_text)
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
        pm = re.search(NUMBER + r"\s*%", risk_text)
        if pm is None:
            raise AnswerParseError(
                f"hr Attrition Risk {risk_text.strip()!r} has no percentage, e.g. 'Low (15%)'"
            )
        return {
            "tenure_years": float(m.group(1)),
            "tenure_censored": censored,
            "time_to_promotion_years": promo,
            "attrition_risk": rm.group(1).lower(),
            "attrition_probability": float(pm.group(1)) / 100.0,
            "reasons": reasons,
        }

    # ------------------------------------------------------------------------------------------------ metrics

    def groups(self, scored: list, cfg) -> list:
        # scikit-learn behind the metrics: imported by the evaluator only, never by python -m data_prep.
        from data_prep.metrics import (
            attrition_headline,
            attrition_metrics,
            duration_headline,
            duration_metrics,
            make_group,
        )

        thr, bins = float(cfg.attrition_threshold), int(cfg.calibration_bins)
        by_risk = cfg.attrition_decision == "risk"
        rows = [r for r in scored if r[0].label.get("attrition") is not None]
        out = [
            make_group(
                self.name,
                "attrition",
                rows,
                {
                    "y": [bool(ex.label["attrition"]) for ex, _ in rows],
                    "p": [a["attrition_probability"] for _, a in rows],
                    "pred": [
                        a["attrition_risk"] == "high" if by_risk else a["attrition_probability"] >= thr
                        for _, a in rows
                    ],
                },
                lambda d: attrition_metrics(
                    d["y"], d["p"], thr, bins, predicted=d["pred"] if by_risk else None
                ),
                attrition_headline,
                decision="attrition_risk == high" if by_risk else f"attrition_probability >= {thr}",
                plot="calibration",
                title="Attrition calibration (n={n})",
            )
        ]
        for name, label_key, answer_key in (
            ("tenure", "tenure_years", "tenure_years"),
            ("promotion", "promotion_years", "time_to_promotion_years"),
        ):
            rows = [r for r in scored if r[0].label.get(label_key) is not None]
            out.append(
                make_group(
                    self.name,
                    name,
                    rows,
                    {
                        "y": [float(ex.label[label_key]) for ex, _ in rows],
                        "censored": [bool(ex.label.get(name + "_censored")) for ex, _ in rows],
                        "p": [math.nan if a[answer_key] is None else a[answer_key] for _, a in rows],
                        "p_censored": [bool(a.get(name + "_censored")) for _, a in rows],
                    },
                    lambda d: duration_metrics(d["y"], d["censored"], d["p"], d["p_censored"]),
                    duration_headline,
                )
            )
        return [g for g in out if g is not None]

    # ---------------------------------------------------------------------------------------------- baselines

    def baseline_models(self, cfg) -> list[str]:
        return list(cfg.hr.models)

    def check_baselines(self, cfg) -> list[str]:
        problems = []
        bad = [m for m in cfg.hr.models if m not in self.baselines]
        if bad:
            problems.append(
                f"hr.models has {bad}; use some of {list(self.baselines)} (hr.models=[logistic_regression])"
            )
        if cfg.hr.source_csv and not Path(cfg.hr.source_csv).is_file():
            problems.append(
                f"hr.source_csv={cfg.hr.source_csv} does not exist; pass the file data_prep read, or hr.source_csv=''"
            )
        if cfg.hr.class_weight not in ("", "balanced"):
            problems.append(f"hr.class_weight={cfg.hr.class_weight!r}; use '' or balanced")
        bands = list(cfg.hr.risk_bands)
        if len(bands) != 2 or not 0.0 <= bands[0] <= bands[1] <= 1.0:
            problems.append(
                f"hr.risk_bands={bands}; use [medium_from, high_from] with 0 <= medium <= high <= 1"
            )
        return problems

    def baseline_answers(self, model: str, train: list, test: list, cfg) -> list[dict]:
        """Fit one HR baseline on ``train`` and answer every example of ``test``.

        Raises:
            BaselinesError: The training split has no attrition labels of both classes.

        Examples:
            python -m recipes.baselines data_dir=work/data/ibm hr.models=[logistic_regression]
        """
        features = (
            SourceColumns(cfg.hr.source_csv, list(cfg.hr.exclude_columns))
            if cfg.hr.source_csv
            else profile_features
        )
        drop = set(cfg.hr.tenure_exclude_columns) if cfg.hr.source_csv else set()
        f_train, f_test = [features(ex) for ex in train], [features(ex) for ex in test]
        clf, reg = _pipelines(model, cfg)
        labelled = [
            (f, bool(ex.label["attrition"]))
            for f, ex in zip(f_train, train, strict=True)
            if ex.label.get("attrition") is not None
        ]
        if len({y for _, y in labelled}) < 2:
            raise BaselinesError(
                f"the {cfg.train_split} split has {len(labelled)} attrition label(s) of one class only; "
                "a classifier needs leavers and stayers (check data_prep's attrition mapping)"
            )
        clf.fit([f for f, _ in labelled], [y for _, y in labelled])
        prob = clf.predict_proba(f_test)[:, list(clf.classes_).index(True)]

        def without(fs):
            return [{k: v for k, v in f.items() if k not in drop} for f in fs]

        tenure, n_tenure = _fit_duration(_pipelines(model, cfg)[1], without(f_train), train, "tenure_years")
        promo, n_promo = _fit_duration(reg, without(f_train), train, "promotion_years")
        tenure_pred = (
            _predict_duration(tenure, without(f_test)) if tenure is not None else np.zeros(len(test))
        )
        promo_pred = _predict_duration(promo, without(f_test)) if promo is not None else [None] * len(test)
        label = model.replace("_", " ")
        reasons = {
            "tenure": f"{label} fit on {n_tenure} uncensored training tenures",
            "promotion": f"{label} fit on {n_promo} observed training promotions"
            if promo is not None
            else "too few observed promotions in training to estimate",
            "attrition": f"{label} fit on {len(labelled)} training outcomes",
        }
        return [
            {
                "tenure_years": round(float(t), 2),
                "time_to_promotion_years": None if pr is None else round(float(pr), 2),
                "attrition_risk": _risk(float(p), cfg.hr.risk_bands),
                "attrition_probability": round(float(p), 4),
                "reasons": reasons,
            }
            for p, t, pr in zip(prob, tenure_pred, promo_pred, strict=True)
        ]


def profile_features(example: ChatExample) -> dict[str, float | str]:
    """The ``- Key: value`` lines of the example's user messages, typed for `DictVectorizer`: the profile of a
    stage-1 example, the profile and the history of a stage-2 one (never the assistant's earlier turn).

    Numbers become floats, ``YYYY-MM-DD`` dates decimal years, anything else a string (one-hot encoded).

    Examples:
        python -c "from data_prep.tasks.hr import profile_features; from data_prep.schema import ChatExample; print(profile_features(ChatExample('a', 'hr', [{'role': 'user', 'content': '- Age: 41\\n- Department: Sales'}, {'role': 'assistant', 'content': 'x'}])))"
    """
    users = [m["content"] for m in example.messages if m.get("role") == "user"]
    return {k.strip(): _typed(v) for user in users for k, v in _PROFILE_LINE.findall(user) if v.strip()}


def _typed(value: str) -> float | str:
    text = value.strip()
    try:
        return float(text.replace(",", ""))
    except ValueError:
        pass
    if _ISO_DATE.match(text):
        try:
            d = date.fromisoformat(text)
        except ValueError:
            return text
        return d.year + (d.timetuple().tm_yday - 1) / 366.0
    return text


class SourceColumns:
    """Every column of the source CSV records, looked up by the examples' ``meta.source_line``."""

    def __init__(self, path: str, exclude: list[str]):
        table = read_table(path)
        columns = [c for c in table.frame.columns if c not in set(exclude)]
        self.rows = {
            int(line): {c: _typed(v) for c, v in zip(columns, values, strict=True) if str(v).strip()}
            for line, values in zip(
                table.line, table.frame[columns].itertuples(index=False, name=None), strict=True
            )
        }
        self.path = path

    def __call__(self, example: ChatExample) -> dict[str, float | str]:
        line = example.meta.get("source_line")
        if line is None or int(line) not in self.rows:
            raise BaselinesError(
                f"example {example.id!r} has meta.source_line={line!r}, which is no record of {self.path}; "
                "hr.source_csv must be the file data_prep read (or set hr.source_csv='')"
            )
        return self.rows[int(line)]


def _pipelines(name: str, cfg):
    """(classifier, regressor) of one HR baseline: scikit-learn pipelines."""
    from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor
    from sklearn.feature_extraction import DictVectorizer
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if name == "logistic_regression":
        clf = make_pipeline(
            DictVectorizer(sparse=False),
            StandardScaler(),
            LogisticRegression(max_iter=5000, class_weight=cfg.hr.class_weight or None),
        )
        reg = make_pipeline(DictVectorizer(sparse=False), StandardScaler(), Ridge(alpha=1.0))
    else:
        clf = make_pipeline(DictVectorizer(sparse=False), GradientBoostingClassifier(random_state=cfg.seed))
        reg = make_pipeline(DictVectorizer(sparse=False), GradientBoostingRegressor(random_state=cfg.seed))
    return clf, reg


def _risk(p: float, bands) -> str:
    return "high" if p >= bands[1] else "medium" if p >= bands[0] else "low"


def _fit_duration(reg, feats: list[dict], train: list[ChatExample], key: str):
    """Fit the pipeline ``reg`` on the uncensored labels of ``key``; None when fewer than two exist."""
    from sklearn.dummy import DummyRegressor

    rows = [
        (f, float(ex.label[key]))
        for f, ex in zip(feats, train, strict=True)
        if ex.label.get(key) is not None and not ex.label.get(key.replace("_years", "_censored"))
    ]
    if len(rows) < 2:
        return None, 0
    X, y = [r[0] for r in rows], np.array([r[1] for r in rows])
    if len(rows) < 10:
        # Too few to fit anything but their median.
        return DummyRegressor(strategy="median").fit(np.zeros((len(y), 1)), y), len(rows)
    return reg.fit(X, y), len(rows)


def _predict_duration(model, feats: list[dict]) -> np.ndarray:
    from sklearn.dummy import DummyRegressor

    if isinstance(model, DummyRegressor):
        return model.predict(np.zeros((len(feats), 1)))
    return np.clip(model.predict(feats), 0.0, None)


register(HrTask())
