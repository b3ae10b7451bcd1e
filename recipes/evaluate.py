"""Score a predictions JSONL against the reference chat JSONL: metrics, slices, confidence intervals, plots.

Predictions (written by ``recipes.predict`` and ``recipes.baselines``; see `Prediction`) are joined to the
references (``data_prep``'s chat JSONL) by ``id``. Every reference example ends up in exactly one of three
places, and the report's counts add up: *scored* (its answer parsed), a *parse failure* (the prediction is
there but unusable: wrong types, missing fields, no or empty final channel, an answer in neither format),
or *missing* (no prediction line). Prediction lines that cannot be joined at all (not JSON, no ``id`` or
``stage``) are *malformed lines*, listed with their line numbers; predictions whose id is not in the
references are *extra*. Metrics are computed on the scored examples; parse failures are reported apart so
a model that answers badly is not confused with one that answers wrongly.

Metrics (all from scikit-learn):

- HR attrition (labels with a known outcome): precision, recall and F1 of "leaves", where a predicted
  leaver is an answer with ``attrition_risk: high`` (``attrition_decision=risk``, the default: data_prep's
  answers state the cohort's rate as the probability and the individual call as the risk level) or with
  ``attrition_probability >= attrition_threshold`` (``attrition_decision=probability``); ROC-AUC, PR-AUC
  (average precision), Brier score and a calibration curve from the stated probability.
- HR tenure and time to promotion: MAE and RMSE on uncensored labels. A censored label (the employee is still
  there, or not yet promoted) is only a lower bound on the true value, so it has no error to average; what
  is known is that a prediction *below* the bound is wrong. ``below_bound_share`` is the share of censored
  examples whose prediction is below their bound (lower is better; 0 does not mean the predictions are
  right). A predicted "not expected" promotion is never below a bound; on uncensored promotion labels it
  has no number to compare, so it is counted as ``predicted_none`` and left out of MAE/RMSE.
- Tickets: queue accuracy and macro-F1 (averaged over the queues present in the references; a predicted
  queue matches case-insensitively), a confusion matrix, and the same for priority where it is labelled.
- Rubric: exact match of the score on the reference's scale, MAE of ``score / max_score``, and quadratic
  weighted kappa on whole points of the reference's scale.

Per-slice metrics group the examples by meta fields (``slices``: department, region, title,
performance_rating, language); percentile bootstrap confidence intervals (seeded) accompany the headline
metrics. Outputs under ``out_dir``: ``report.json``, ``summary.md``, ``calibration_<task>.png`` and
``confusion_<task>_<field>.png``.

Examples:
    python -m recipes.evaluate predictions=work/predict/predictions.jsonl references=work/data/hr/test.jsonl out_dir=work/eval/hr
    python -m recipes.evaluate predictions=work/baselines/ibm/predictions/logistic_regression.jsonl references=work/baselines/ibm/references.jsonl stage=1 bootstrap.samples=0
"""

from __future__ import annotations

import json
import math
import warnings
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import hydra
import numpy as np
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    brier_score_loss,
    cohen_kappa_score,
    confusion_matrix,
    f1_score,
    mean_absolute_error,
    precision_recall_fscore_support,
    roc_auc_score,
    root_mean_squared_error,
)

from data_prep.answers import TASKS, AnswerParseError, normalise_answer, parse_answer
from data_prep.schema import ChatExample, SchemaError, read_jsonl, write_jsonl
from recipes.harmony_text import NoFinalChannel, final_text

STAGES = (1, 2)
FAILURE_KINDS = (
    "missing_field",
    "wrong_type",
    "task_mismatch",
    "no_final_channel",
    "empty_final_channel",
    "unparseable_answer",
)


# --------------------------------------------------------------------------------------------------------------
# The predictions format


@dataclass
class Prediction:
    """One line of a predictions JSONL: one model's answer for one example at one stage.

    Attributes:
        id: The reference example's ``id``.
        task: The reference example's task (``hr``, ``tickets``, ``rubric``).
        model: Who answered, for example ``gpt-oss-20b-lora`` or ``baseline/logistic_regression``.
        stage: 1 for the population-level prediction, 2 for the personalised one.
        raw: The generated text; may hold harmony tokens (the evaluator reads the final channel). A baseline
            writes its JSON answer here.
        parsed: The producer's own parse of ``raw`` (optional). The evaluator re-parses ``raw`` whenever it
            is present and uses ``parsed`` only when ``raw`` is absent.
    """

    id: str
    task: str
    model: str
    stage: int
    raw: str | None
    parsed: dict | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)


def write_predictions(path: str | Path, predictions: Iterable[Prediction]) -> int:
    """Write predictions JSONL atomically (a temporary file renamed into place).

    Args:
        path: Output file; its folder is created.
        predictions: The lines to write, in order.

    Returns:
        The number of lines written.

    Examples:
        python -c "from recipes.evaluate import Prediction, write_predictions; write_predictions('work/p.jsonl', [Prediction('a', 'tickets', 'm', 1, 'Queue: IT Support')])"
    """
    return write_jsonl(path, predictions)


@dataclass
class PredictionLine:
    """A prediction line that has a usable ``id`` and ``stage``; ``problem`` is set when the rest is not."""

    line: int
    id: str
    stage: int
    task: str | None
    model: str | None
    raw: str | None
    parsed: dict | None
    problem: tuple[str, str] | None = None  # (kind, reason), kind one of FAILURE_KINDS


@dataclass
class MalformedLine:
    """A prediction line that cannot be joined to a reference (no JSON object, no valid id or stage)."""

    line: int
    kind: str  # bad_json, wrong_type, missing_field
    reason: str


def read_predictions(path: str | Path) -> tuple[list[PredictionLine], list[MalformedLine]]:
    """Read a predictions JSONL without ever failing on a bad line.

    Returns:
        The joinable lines (some carrying a problem that makes them a parse failure) and the malformed ones;
        together they account for every non-blank line of the file.

    Examples:
        python -c "from recipes.evaluate import read_predictions; ok, bad = read_predictions('work/predict/predictions.jsonl'); print(len(ok), bad[:3])"
    """
    ok, bad = [], []
    with Path(path).open(encoding="utf-8", errors="replace") as f:
        for lineno, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                bad.append(MalformedLine(lineno, "bad_json", f"not JSON: {e}"))
                continue
            if not isinstance(obj, dict):
                bad.append(MalformedLine(lineno, "wrong_type", f"a JSON {type(obj).__name__}, not an object"))
                continue
            pid, stage = obj.get("id"), obj.get("stage")
            if pid is None or stage is None:
                missing = [k for k in ("id", "stage") if obj.get(k) is None]
                bad.append(MalformedLine(lineno, "missing_field", f"no {' or '.join(missing)}"))
                continue
            if not isinstance(pid, str) or not pid:
                bad.append(MalformedLine(lineno, "wrong_type", f"id is {pid!r}; expected a non-empty string"))
                continue
            if isinstance(stage, bool) or stage not in STAGES:
                bad.append(MalformedLine(lineno, "wrong_type", f"stage is {stage!r}; expected 1 or 2"))
                continue
            ok.append(_prediction_line(lineno, pid, int(stage), obj))
    return ok, bad


def _prediction_line(lineno: int, pid: str, stage: int, obj: dict) -> PredictionLine:
    task, model, raw, parsed = obj.get("task"), obj.get("model"), obj.get("raw"), obj.get("parsed")
    p = PredictionLine(lineno, pid, stage, None, None, None, None)
    for name, value in (("task", task), ("model", model)):
        if value is None:
            p.problem = ("missing_field", f"no {name}")
        elif not isinstance(value, str):
            p.problem = ("wrong_type", f"{name} is {value!r}; expected a string")
    if raw is not None and not isinstance(raw, str):
        p.problem = (
            "wrong_type",
            f"raw is of type {type(raw).__name__}; expected the generated text as a string",
        )
    elif parsed is not None and not isinstance(parsed, dict):
        p.problem = ("wrong_type", f"parsed is of type {type(parsed).__name__}; expected an object or null")
    elif raw is None and parsed is None:
        p.problem = ("missing_field", "neither raw nor parsed")
    p.task = task if isinstance(task, str) else None
    p.model = model if isinstance(model, str) else None
    p.raw = raw if isinstance(raw, str) else None
    p.parsed = parsed if isinstance(parsed, dict) else None
    return p


def read_answer(task: str, p: PredictionLine) -> tuple[dict | None, tuple[str, str] | None]:
    """The normalised answer of a prediction line, or why there is none.

    Returns:
        ``(answer, None)`` or ``(None, (kind, reason))`` with kind one of `FAILURE_KINDS`.

    Examples:
        python -c "from recipes.evaluate import PredictionLine, read_answer; print(read_answer('tickets', PredictionLine(1, 'a', 1, 'tickets', 'm', 'Queue: IT Support', None)))"
    """
    if p.problem is not None:
        return None, p.problem
    if p.task != task:
        return None, ("task_mismatch", f"prediction task {p.task!r}, reference task {task!r}")
    try:
        if p.raw is not None:
            text = final_text(p.raw)
            if not text:
                return None, ("empty_final_channel", "the final channel is empty")
            return parse_answer(task, text), None
        return normalise_answer(task, p.parsed), None
    except NoFinalChannel as e:
        return None, ("no_final_channel", str(e))
    except AnswerParseError as e:
        return None, ("unparseable_answer", str(e))


# --------------------------------------------------------------------------------------------------------------
# Configuration


@dataclass
class BootstrapConfig:
    samples: int = 1000  # resamples per metric group; 0 turns intervals off
    confidence: float = 0.95  # two-sided percentile interval
    seed: int = 0


@dataclass
class EvaluateConfig:
    predictions: str = MISSING
    references: str = MISSING
    out_dir: str = "work/eval"
    stage: str = "latest"  # latest (the highest stage per id), 1 or 2
    model: str = ""  # "" when the file holds one model; else the model to score
    attrition_decision: str = (
        "risk"  # risk: attrition_risk == high is a predicted leaver; probability: p >= threshold
    )
    attrition_threshold: float = 0.5
    calibration_bins: int = 10
    slices: list[str] = field(
        default_factory=lambda: ["department", "region", "title", "performance_rating", "language"]
    )
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)
    plots: bool = True
    max_listed: int = 20  # ids and lines listed per problem kind in the report


class EvaluateError(ValueError):
    """An evaluation that cannot run; the message lists every problem and its fix."""


def validate(cfg) -> None:
    """Check a composed config and its input files; raise one `EvaluateError` listing every problem.

    Examples:
        python -c "from omegaconf import OmegaConf; from recipes.evaluate import EvaluateConfig, validate; validate(OmegaConf.structured(EvaluateConfig(predictions='p.jsonl', references='r.jsonl')))"
    """
    problems = []
    for key, how in (
        ("predictions", "python -m recipes.predict ... or python -m recipes.baselines"),
        ("references", "python -m data_prep ... (the test.jsonl it writes)"),
    ):
        value = None if OmegaConf.is_missing(cfg, key) else cfg[key]
        if value is None or not str(value).strip():
            problems.append(f"{key} is not set; pass {key}=<path to a JSONL file> (created by {how})")
        elif not Path(value).is_file():
            problems.append(f"{key}={value} does not exist; create it with {how}")
    if str(cfg.stage) not in ("latest", "1", "2"):
        problems.append(f"stage={cfg.stage!r}; use latest, 1 or 2 (stage=latest)")
    if cfg.attrition_decision not in ("risk", "probability"):
        problems.append(f"attrition_decision={cfg.attrition_decision!r}; use risk or probability")
    if not 0.0 <= cfg.attrition_threshold <= 1.0:
        problems.append(f"attrition_threshold={cfg.attrition_threshold}; use a probability in [0, 1]")
    if cfg.calibration_bins < 1:
        problems.append(f"calibration_bins={cfg.calibration_bins}; use a positive number of bins (10)")
    if cfg.bootstrap.samples < 0:
        problems.append(f"bootstrap.samples={cfg.bootstrap.samples}; use 0 (off) or more (1000)")
    if not 0.0 < cfg.bootstrap.confidence < 1.0:
        problems.append(f"bootstrap.confidence={cfg.bootstrap.confidence}; use a level in (0, 1), e.g. 0.95")
    if cfg.max_listed < 0:
        problems.append(f"max_listed={cfg.max_listed}; use 0 or more")
    if problems:
        raise EvaluateError("evaluate config has problems:\n  - " + "\n  - ".join(problems))


# --------------------------------------------------------------------------------------------------------------
# Metrics: one function per answer field, each a thin layer over scikit-learn


def attrition_metrics(y_true, prob, threshold: float = 0.5, n_bins: int = 10, predicted=None) -> dict:
    """Classification and probability metrics of "the employee leaves".

    Args:
        y_true: True where the employee left.
        prob: The stated ``attrition_probability``.
        threshold: A probability at or above it is a predicted leaver (when ``predicted`` is None).
        n_bins: Uniform calibration bins over [0, 1].
        predicted: The predicted leavers, when the decision is not ``prob >= threshold`` (e.g. risk "high").

    Returns:
        Counts, precision/recall/F1 of the positive class (0 when undefined), F1 averaged over both classes
        (macro and support-weighted), ROC-AUC and PR-AUC (None with a single class), Brier score and the
        non-empty calibration bins.

    Examples:
        python -c "from recipes.evaluate import attrition_metrics; print(attrition_metrics([True, False], [0.8, 0.3]))"
    """
    y = np.asarray(y_true, dtype=bool)
    p = np.asarray(prob, dtype=float)
    pred = p >= threshold if predicted is None else np.asarray(predicted, dtype=bool)
    tn, fp, fn, tp = confusion_matrix(y, pred, labels=[False, True]).ravel()
    precision, recall, f1, _ = precision_recall_fscore_support(
        y, pred, average="binary", pos_label=True, zero_division=0
    )
    both = 0 < y.sum() < len(y)
    out = {
        "n": int(len(y)),
        "positives": int(y.sum()),
        "predicted_positives": int(pred.sum()),
        "tp": int(tp),
        "fp": int(fp),
        "fn": int(fn),
        "tn": int(tn),
        "threshold": threshold if predicted is None else None,
        "accuracy": accuracy_score(y, pred),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        # Both classes, for comparison with studies that average over stayers and leavers.
        "f1_macro": f1_score(y, pred, labels=[False, True], average="macro", zero_division=0),
        "f1_weighted": f1_score(y, pred, labels=[False, True], average="weighted", zero_division=0),
        "roc_auc": roc_auc_score(y, p) if both else None,
        "pr_auc": average_precision_score(y, p) if both else None,
        "brier": brier_score_loss(y, p, pos_label=True),
    }
    prob_true, prob_pred = calibration_curve(y, p, n_bins=n_bins, strategy="uniform")
    # The same binning as calibration_curve (edges inside (0, 1), searchsorted to the left), for the counts.
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    counts = np.bincount(np.searchsorted(edges[1:-1], p), minlength=n_bins)
    out["calibration"] = {
        "bins": n_bins,
        "mean_predicted": prob_pred.tolist(),
        "fraction_positive": prob_true.tolist(),
        "count": counts[counts > 0].tolist(),
    }
    return out


def duration_metrics(label_years, censored, predicted_years) -> dict:
    """Errors of predicted durations (tenure, time to promotion) under right-censoring.

    Args:
        label_years: Observed durations; for censored labels, the lower bound observed so far.
        censored: True where the label is a lower bound (the event had not happened yet).
        predicted_years: Predictions; NaN means "not expected" (no event predicted).

    Returns:
        ``uncensored``: n, ``predicted_none`` and MAE/RMSE over those with a numeric prediction.
        ``censored``: n and ``below_bound_share``, the share of censored labels whose prediction is below the
        bound (a known error; "not expected" is never below).

    Examples:
        python -c "from recipes.evaluate import duration_metrics; print(duration_metrics([2.0, 5.0], [False, True], [3.0, 4.0]))"
    """
    y = np.asarray(label_years, dtype=float)
    c = np.asarray(censored, dtype=bool)
    p = np.asarray(predicted_years, dtype=float)
    u = ~c
    has = u & ~np.isnan(p)
    uncensored = {"n": int(u.sum()), "predicted_none": int((u & np.isnan(p)).sum())}
    uncensored["mae"] = mean_absolute_error(y[has], p[has]) if has.any() else None
    uncensored["rmse"] = root_mean_squared_error(y[has], p[has]) if has.any() else None
    below = c & ~np.isnan(p) & (p < y)
    cens = {"n": int(c.sum()), "below_bound": int(below.sum())}
    cens["below_bound_share"] = float(below.sum() / c.sum()) if c.any() else None
    return {"uncensored": uncensored, "censored": cens}


def label_metrics(y_true, y_pred) -> dict:
    """Accuracy, macro-F1 and confusion matrix of a categorical field (ticket queue or priority).

    Macro-F1 averages over the classes present in ``y_true``; a predicted class that no reference has
    lowers the recall of the true class, not the average's denominator. The confusion matrix covers every
    class seen on either side (rows: reference, columns: prediction).

    Examples:
        python -c "from recipes.evaluate import label_metrics; print(label_metrics(['a', 'b'], ['a', 'a']))"
    """
    y, p = list(y_true), list(y_pred)
    classes = sorted(set(y))
    labels = sorted(set(y) | set(p))
    return {
        "n": len(y),
        "accuracy": accuracy_score(y, p),
        "macro_f1": f1_score(y, p, labels=classes, average="macro", zero_division=0),
        "confusion": {"labels": labels, "matrix": confusion_matrix(y, p, labels=labels).tolist()},
    }


def rubric_metrics(score, max_score, pred_score, pred_max_score) -> dict:
    """Exact match, normalised MAE and quadratic weighted kappa of rubric scores.

    A predicted score is first put on the reference's scale (``pred_score / pred_max_score * max_score``).
    Exact match compares it with the reference score to 4 decimals; MAE is over ``score / max_score``;
    kappa compares whole points (rounded) and is None when only one value occurs on both sides.

    Examples:
        python -c "from recipes.evaluate import rubric_metrics; print(rubric_metrics([7, 3], [10, 10], [7, 5], [10, 10]))"
    """
    s, m = np.asarray(score, dtype=float), np.asarray(max_score, dtype=float)
    ps, pm = np.asarray(pred_score, dtype=float), np.asarray(pred_max_score, dtype=float)
    on_scale = ps / pm * m
    # Integers of 1e-4 points: exact-match labels that a classification metric accepts.
    exact = accuracy_score(np.rint(s * 1e4).astype(np.int64), np.rint(on_scale * 1e4).astype(np.int64))
    true_pts, pred_pts = np.rint(s).astype(int), np.rint(on_scale).astype(int)
    kappa = None
    if len(set(true_pts) | set(pred_pts)) > 1:
        kappa = cohen_kappa_score(true_pts, pred_pts, weights="quadratic")
    return {
        "n": int(len(s)),
        "exact_match": exact,
        "mae_normalised": mean_absolute_error(s / m, ps / pm),
        "qwk": kappa,
        "max_scores": sorted({float(x) for x in m}),
    }


# --------------------------------------------------------------------------------------------------------------
# Joining, grouping and scoring


@dataclass
class Group:
    """The scored examples of one answer field, with the functions that score any subset of them.

    Attributes:
        task: The reference task.
        name: The answer field (attrition, tenure, promotion, queue, priority, score).
        data: Aligned arrays, one entry per example.
        meta: Each example's meta dict (for slices).
        full: All metrics of the field over the given arrays.
        headline: The few metrics that get slices and confidence intervals.
    """

    task: str
    name: str
    data: dict[str, np.ndarray]
    meta: list[dict]
    full: Callable[[dict], dict]
    headline: Callable[[dict], dict]

    def take(self, idx: np.ndarray) -> dict:
        return {k: v[idx] for k, v in self.data.items()}

    def __len__(self) -> int:
        return len(self.meta)


def _attrition_headline(d: dict) -> dict:
    y, p = d["y"], d["p"]
    pr, rc, f1, _ = precision_recall_fscore_support(
        y, d["pred"], average="binary", pos_label=True, zero_division=0
    )
    both = 0 < y.sum() < len(y)
    return {
        "precision": pr,
        "recall": rc,
        "f1": f1,
        "roc_auc": roc_auc_score(y, p) if both else None,
        "brier": brier_score_loss(y, p, pos_label=True),
    }


def _duration_headline(d: dict) -> dict:
    m = duration_metrics(d["y"], d["censored"], d["p"])
    return {
        "mae": m["uncensored"]["mae"],
        "rmse": m["uncensored"]["rmse"],
        "below_bound_share": m["censored"]["below_bound_share"],
    }


def _label_headline(d: dict) -> dict:
    y, p = d["y"], d["p"]
    return {
        "accuracy": accuracy_score(y, p),
        "macro_f1": f1_score(y, p, labels=np.unique(y), average="macro", zero_division=0),
    }


def _rubric_headline(d: dict) -> dict:
    m = rubric_metrics(d["score"], d["max"], d["pred"], d["pred_max"])
    return {"exact_match": m["exact_match"], "mae_normalised": m["mae_normalised"], "qwk": m["qwk"]}


def _canonical(value: str | None, spelling: dict[str, str]) -> str:
    if value is None:
        return "(none)"
    return spelling.get(value.casefold(), value)


def build_groups(task: str, scored: list[tuple[ChatExample, dict]], cfg) -> list[Group]:
    """Arrange the scored examples of one task into metric groups (one per answer field with labels).

    Examples:
        python -c "import recipes.evaluate as e; help(e.build_groups)"
    """
    groups = []
    thr, bins = float(cfg.attrition_threshold), int(cfg.calibration_bins)
    by_risk = cfg.attrition_decision == "risk"

    def add(name, rows, data, full, headline):
        if rows:
            groups.append(
                Group(
                    task,
                    name,
                    {k: np.asarray(v) for k, v in data.items()},
                    [r[0].meta for r in rows],
                    full,
                    headline,
                )
            )

    if task == "hr":
        rows = [r for r in scored if r[0].label.get("attrition") is not None]
        add(
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
            lambda d: attrition_metrics(d["y"], d["p"], thr, bins, predicted=d["pred"] if by_risk else None),
            _attrition_headline,
        )
        for name, label_key, answer_key in (
            ("tenure", "tenure_years", "tenure_years"),
            ("promotion", "promotion_years", "time_to_promotion_years"),
        ):
            rows = [r for r in scored if r[0].label.get(label_key) is not None]
            add(
                name,
                rows,
                {
                    "y": [float(ex.label[label_key]) for ex, _ in rows],
                    "censored": [bool(ex.label.get(name + "_censored")) for ex, _ in rows],
                    "p": [math.nan if a[answer_key] is None else a[answer_key] for _, a in rows],
                },
                lambda d: duration_metrics(d["y"], d["censored"], d["p"]),
                _duration_headline,
            )
    elif task == "tickets":
        for name in ("queue", "priority"):
            rows = [r for r in scored if r[0].label.get(name) is not None]
            spelling = {str(ex.label[name]).casefold(): str(ex.label[name]) for ex, _ in rows}
            add(
                name,
                rows,
                {
                    "y": np.array([str(ex.label[name]) for ex, _ in rows], dtype=object),
                    "p": np.array([_canonical(a[name], spelling) for _, a in rows], dtype=object),
                },
                lambda d: label_metrics(d["y"], d["p"]),
                _label_headline,
            )
    elif task == "builtin":
        rows = [r for r in scored if r[0].label.get("attrition") is not None]
        add(
            "attrition_risk",
            rows,
            {
                "y": np.array(["high" if ex.label["attrition"] else "low" for ex, _ in rows], dtype=object),
                "p": np.array([a["attrition_risk"] for _, a in rows], dtype=object),
            },
            lambda d: label_metrics(d["y"], d["p"]),
            _label_headline,
        )
    elif task == "rubric":
        rows = [r for r in scored if r[0].label.get("score") is not None and r[0].label.get("max_score")]
        add(
            "score",
            rows,
            {
                "score": [float(ex.label["score"]) for ex, _ in rows],
                "max": [float(ex.label["max_score"]) for ex, _ in rows],
                "pred": [a["score"] for _, a in rows],
                "pred_max": [a["max_score"] for _, a in rows],
            },
            lambda d: rubric_metrics(d["score"], d["max"], d["pred"], d["pred_max"]),
            _rubric_headline,
        )
    return groups


def bootstrap_intervals(group: Group, samples: int, confidence: float, seed: int) -> dict:
    """Percentile bootstrap intervals of a group's headline metrics.

    Examples are resampled with replacement ``samples`` times from a generator seeded with ``seed`` (the
    same seed gives the same intervals); a resample where a metric is undefined (one class only) is left
    out of that metric's interval.

    Returns:
        ``{metric: [low, high]}``, or ``{metric: None}`` when no resample defines the metric.

    Examples:
        python -c "import recipes.evaluate as e; help(e.bootstrap_intervals)"
    """
    n = len(group)
    rng = np.random.default_rng(seed)
    values: dict[str, list[float]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(samples):
            for k, v in group.headline(group.take(rng.integers(0, n, n))).items():
                values.setdefault(k, []).append(math.nan if v is None else float(v))
    alpha = (1.0 - confidence) / 2.0
    out = {}
    for k, vs in values.items():
        arr = np.asarray(vs, dtype=float)
        arr = arr[~np.isnan(arr)]
        out[k] = [float(np.quantile(arr, alpha)), float(np.quantile(arr, 1.0 - alpha))] if len(arr) else None
    return out


def slice_metrics(group: Group, fields: list[str]) -> dict:
    """Headline metrics per value of each meta field that the group's examples carry.

    Returns:
        ``{field: [{"value", "n", metric...}, ...]}`` with values ordered by size (largest first); examples
        without the field are left out of that field's slices.

    Examples:
        python -c "import recipes.evaluate as e; help(e.slice_metrics)"
    """
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for f in fields:
            values = [m.get(f) for m in group.meta]
            present = Counter(str(v) for v in values if v is not None and str(v) != "")
            if not present:
                continue
            rows = []
            for value, n in sorted(present.items(), key=lambda kv: (-kv[1], kv[0])):
                idx = np.array([i for i, v in enumerate(values) if v is not None and str(v) == value])
                rows.append({"value": value, "n": n, **group.headline(group.take(idx))})
            out[f] = rows
    return out


@dataclass
class Evaluation:
    """What `build` computes: the JSON report and the groups behind the plots."""

    report: dict
    groups: list[Group]


def _select_stage(lines: list[PredictionLine], stage: str) -> tuple[dict[str, PredictionLine], list[int]]:
    """One line per id at the requested stage; duplicates of an (id, stage) keep the first line."""
    first: dict[tuple[str, int], PredictionLine] = {}
    duplicates = []
    for p in lines:
        key = (p.id, p.stage)
        if key in first:
            duplicates.append(p.line)
        else:
            first[key] = p
    chosen: dict[str, PredictionLine] = {}
    for (pid, st), p in first.items():
        if stage == "latest":
            if pid not in chosen or st > chosen[pid].stage:
                chosen[pid] = p
        elif st == int(stage):
            chosen[pid] = p
    return chosen, duplicates


def _read_references(path: str) -> dict[str, ChatExample]:
    refs: dict[str, ChatExample] = {}
    try:
        for ex in read_jsonl(path):
            if ex.id in refs:
                raise EvaluateError(
                    f"references {path} has id {ex.id!r} twice; regenerate it with python -m data_prep"
                )
            refs[ex.id] = ex
    except SchemaError as e:
        raise EvaluateError(
            f"references are not valid chat JSONL: {e}; regenerate them with python -m data_prep"
        ) from e
    return refs


def build(cfg) -> Evaluation:
    """Join, parse and score; no files are written.

    Args:
        cfg: A composed `EvaluateConfig` (``conf/evaluate.yaml``).

    Returns:
        The report (counts, problems, metrics, slices, intervals) and the metric groups for the plots.

    Raises:
        EvaluateError: The references are not valid chat JSONL, or the predictions hold several models
            and ``model`` does not pick one.

    Examples:
        python -c "from omegaconf import OmegaConf; from recipes.evaluate import EvaluateConfig, build; print(build(OmegaConf.structured(EvaluateConfig(predictions='work/p.jsonl', references='work/data/hr/test.jsonl'))).report['counts'])"
    """
    refs = _read_references(str(cfg.references))
    lines, malformed = read_predictions(cfg.predictions)
    models = sorted({p.model for p in lines if p.model is not None})
    other_model = 0
    if cfg.model:
        kept = [p for p in lines if p.model == cfg.model]
        other_model = len(lines) - len(kept)
        if not kept:
            raise EvaluateError(
                f"predictions {cfg.predictions} have no line of model={cfg.model!r}; models: {models}"
            )
        lines = kept
    elif len(models) > 1:
        raise EvaluateError(
            f"predictions {cfg.predictions} hold {len(models)} models {models}; score one at a time (model={models[0]})"
        )
    chosen, duplicates = _select_stage(lines, str(cfg.stage))
    k = int(cfg.max_listed)

    missing = [i for i in refs if i not in chosen]
    extra = sorted(i for i in chosen if i not in refs)
    scored: dict[str, list[tuple[ChatExample, dict]]] = {}
    failures: list[dict] = []
    per_task = {t: Counter() for t in sorted({ex.task for ex in refs.values()})}
    for i, ex in refs.items():
        c = per_task[ex.task]
        c["references"] += 1
        if i not in chosen:
            c["missing"] += 1
            continue
        if ex.task not in TASKS:
            c["unsupported"] += 1
            continue
        answer, problem = read_answer(ex.task, chosen[i])
        if problem is None:
            c["scored"] += 1
            scored.setdefault(ex.task, []).append((ex, answer))
        else:
            c["parse_failures"] += 1
            failures.append({"id": i, "line": chosen[i].line, "kind": problem[0], "reason": problem[1]})

    failure_kinds = Counter(f["kind"] for f in failures)
    counts = {
        "prediction_lines": len(lines) + len(malformed) + other_model,
        "malformed_lines": len(malformed),
        "duplicate_lines": len(duplicates),
        "other_model_lines": other_model,
        "references": len(refs),
        "scored": sum(c["scored"] for c in per_task.values()),
        "parse_failures": len(failures),
        "missing": len(missing),
        "unsupported": sum(c["unsupported"] for c in per_task.values()),
        "extra": len(extra),
    }
    report = {
        "predictions": str(cfg.predictions),
        "references": str(cfg.references),
        "model": cfg.model or (models[0] if models else None),
        "stage": str(cfg.stage),
        "stages_used": dict(sorted(Counter(str(p.stage) for p in chosen.values() if p.id in refs).items())),
        "counts": counts,
        "per_task_counts": {
            t: {
                k2: c.get(k2, 0)
                for k2 in ("references", "scored", "parse_failures", "missing", "unsupported")
            }
            for t, c in per_task.items()
        },
        "parse_failures": {
            "by_kind": {kind: failure_kinds.get(kind, 0) for kind in FAILURE_KINDS},
            "examples": failures[:k],
        },
        "malformed_lines": {
            "by_kind": dict(Counter(m.kind for m in malformed)),
            "examples": [asdict(m) for m in malformed[:k]],
        },
        "duplicate_lines": duplicates[:k],
        "missing_ids": missing[:k],
        "extra_ids": extra[:k],
        "unsupported_tasks": sorted(t for t, c in per_task.items() if c["unsupported"]),
        "tasks": {},
    }
    groups = []
    for task in sorted(scored):
        for gi, g in enumerate(build_groups(task, scored[task], cfg)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                entry = {"metrics": g.full(g.data), "headline": g.headline(g.data)}
            if cfg.bootstrap.samples > 0:
                # One stream per group, so adding a task does not move another task's intervals.
                entry["ci"] = bootstrap_intervals(
                    g,
                    int(cfg.bootstrap.samples),
                    float(cfg.bootstrap.confidence),
                    int(cfg.bootstrap.seed) + gi,
                )
            if g.name == "attrition":
                entry["decision"] = (
                    "attrition_risk == high"
                    if cfg.attrition_decision == "risk"
                    else f"attrition_probability >= {float(cfg.attrition_threshold)}"
                )
            entry["slices"] = slice_metrics(g, list(cfg.slices))
            report["tasks"].setdefault(task, {})[g.name] = entry
            groups.append(g)
    if cfg.bootstrap.samples > 0:
        report["bootstrap"] = {
            "samples": int(cfg.bootstrap.samples),
            "confidence": float(cfg.bootstrap.confidence),
            "seed": int(cfg.bootstrap.seed),
        }
    return Evaluation(_jsonable(report), groups)


def _jsonable(x):
    """Plain JSON types; NaN and infinities become None."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


# --------------------------------------------------------------------------------------------------------------
# Outputs


def _fmt(x) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.3f}"
    return str(x)


def _fmt_ci(value, ci) -> str:
    text = _fmt(value)
    return f"{text} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else text


def summary_markdown(report: dict) -> str:
    """The report as a Markdown page: counts, problems, headline metrics with intervals, slices.

    Examples:
        python -c "import json; from recipes.evaluate import summary_markdown; print(summary_markdown(json.load(open('work/eval/report.json'))))"
    """
    c = report["counts"]
    out = [
        f"# Evaluation of {report['model'] or '(unnamed model)'}",
        "",
        f"- predictions: `{report['predictions']}`",
        f"- references: `{report['references']}`",
        f"- stage: {report['stage']} (used: {report['stages_used']})",
        "",
        "| references | scored | parse failures | missing | unsupported | extra ids | malformed lines | duplicates |",
        "|---|---|---|---|---|---|---|---|",
        f"| {c['references']} | {c['scored']} | {c['parse_failures']} | {c['missing']} | {c['unsupported']} "
        f"| {c['extra']} | {c['malformed_lines']} | {c['duplicate_lines']} |",
        "",
    ]
    kinds = {k: v for k, v in report["parse_failures"]["by_kind"].items() if v}
    if kinds:
        out += ["Parse failures by kind: " + ", ".join(f"{k} {v}" for k, v in kinds.items()), ""]
    if report["malformed_lines"]["by_kind"]:
        out += [
            "Malformed lines by kind: "
            + ", ".join(f"{k} {v}" for k, v in report["malformed_lines"]["by_kind"].items()),
            "",
        ]
    if report["unsupported_tasks"]:
        out += [f"Tasks without an answer parser (not scored): {', '.join(report['unsupported_tasks'])}", ""]
    level = report.get("bootstrap", {}).get("confidence")
    for task, fields in report["tasks"].items():
        for name, entry in fields.items():
            head, ci = entry["headline"], entry.get("ci", {})
            n = entry["metrics"].get("n", entry["metrics"].get("uncensored", {}).get("n"))
            title = f"## {task}: {name}"
            if level:
                title += f" ({level:.0%} bootstrap intervals)"
            out += [title, ""]
            if "decision" in entry:
                out += [f"Predicted leaver: {entry['decision']}.", ""]
            out += ["| metric | value |", "|---|---|"]
            out += [f"| {k} | {_fmt_ci(v, ci.get(k))} |" for k, v in head.items()]
            if name in ("tenure", "promotion"):
                m = entry["metrics"]
                out += [
                    f"| uncensored n | {m['uncensored']['n']} |",
                    f"| predicted none (uncensored) | {m['uncensored']['predicted_none']} |",
                    f"| censored n | {m['censored']['n']} |",
                ]
            elif n is not None:
                out += [f"| n | {n} |"]
            out.append("")
            for f, rows in entry["slices"].items():
                keys = [k for k in head]
                out += [
                    f"By {f}:",
                    "",
                    "| " + " | ".join([f, "n", *keys]) + " |",
                    "|" + "---|" * (len(keys) + 2),
                ]
                out += [
                    "| " + " | ".join([r["value"], str(r["n"]), *(_fmt(r[k]) for k in keys)]) + " |"
                    for r in rows
                ]
                out.append("")
    return "\n".join(out) + "\n"


def write_plots(ev: Evaluation, out_dir: Path) -> list[Path]:
    """A calibration curve per attrition group and a confusion matrix per ticket field, as PNG files.

    Examples:
        python -c "import recipes.evaluate as e; help(e.write_plots)"
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.calibration import CalibrationDisplay
    from sklearn.metrics import ConfusionMatrixDisplay

    paths = []
    for g in ev.groups:
        entry = ev.report["tasks"][g.task][g.name]
        if g.name == "attrition":
            fig, ax = plt.subplots(figsize=(5, 5))
            CalibrationDisplay.from_predictions(
                g.data["y"],
                g.data["p"],
                n_bins=entry["metrics"]["calibration"]["bins"],
                ax=ax,
                name=ev.report["model"],
            )
            ax.set_title(f"Attrition calibration (n={len(g)})")
            path = out_dir / f"calibration_{g.task}.png"
        elif g.task == "tickets":
            conf = entry["metrics"]["confusion"]
            size = max(5.0, 0.6 * len(conf["labels"]) + 2)
            fig, ax = plt.subplots(figsize=(size, size))
            ConfusionMatrixDisplay(np.asarray(conf["matrix"]), display_labels=conf["labels"]).plot(
                ax=ax, xticks_rotation=45, colorbar=False
            )
            plt.setp(ax.get_xticklabels(), rotation=45, ha="right", rotation_mode="anchor")
            ax.set_title(f"Ticket {g.name} (rows: reference, columns: prediction)")
            path = out_dir / f"confusion_{g.task}_{g.name}.png"
        else:
            continue
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths


def write_outputs(ev: Evaluation, out_dir: str | Path, plots: bool = True) -> dict[str, Path]:
    """Write ``report.json``, ``summary.md`` and (optionally) the PNG plots under ``out_dir``.

    Examples:
        python -c "import recipes.evaluate as e; help(e.write_outputs)"
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"report": out / "report.json", "summary": out / "summary.md"}
    paths["report"].write_text(json.dumps(ev.report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    paths["summary"].write_text(summary_markdown(ev.report), encoding="utf-8")
    if plots:
        for p in write_plots(ev, out):
            paths[p.stem] = p
    return paths


def run(cfg) -> dict[str, Path]:
    """validate -> build -> write: what ``main`` and ``recipes.baselines`` call.

    Examples:
        python -c "from omegaconf import OmegaConf; from recipes.evaluate import EvaluateConfig, run; run(OmegaConf.structured(EvaluateConfig(predictions='work/p.jsonl', references='work/data/hr/test.jsonl')))"
    """
    validate(cfg)
    return write_outputs(build(cfg), cfg.out_dir, plots=bool(cfg.plots))


ConfigStore.instance().store(name="evaluate_schema", node=EvaluateConfig)


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    try:
        paths = run(cfg)
    except EvaluateError as e:
        raise SystemExit(f"error: {e}") from None
    report = json.loads(paths["report"].read_text(encoding="utf-8"))
    c = report["counts"]
    print(
        f"scored {c['scored']}/{c['references']} (parse failures {c['parse_failures']}, missing {c['missing']}, "
        f"malformed lines {c['malformed_lines']}, extra ids {c['extra']})"
    )
    for name, p in paths.items():
        print(f"{name:>12}: {p}")


if __name__ == "__main__":
    main()
