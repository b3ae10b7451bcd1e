"""Metrics of scored answers, one function per kind of answer field, each a thin layer over scikit-learn.

Task modules (`data_prep.tasks`) arrange their scored examples into `Group` objects with these functions;
``recipes.evaluate`` computes every group's metrics, bootstrap intervals (`bootstrap_intervals`) and slices
(`slice_metrics`) without knowing which task made it.

- `attrition_metrics`: precision, recall and F1 of "leaves", ROC-AUC, PR-AUC, Brier score, calibration bins.
- `duration_metrics`: MAE and RMSE on uncensored durations with point predictions (a lower-bound answer,
  "at least X", is counted apart); the share of censored labels predicted below their bound.
- `label_metrics`: accuracy, macro-F1 and confusion matrix of a categorical field.
- `rubric_metrics`: exact match, normalised MAE and quadratic weighted kappa of scores.

Examples:
    python -c "from data_prep.metrics import label_metrics; print(label_metrics(['a', 'b'], ['a', 'a']))"
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
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
        python -c "from data_prep.metrics import attrition_metrics; print(attrition_metrics([True, False], [0.8, 0.3]))"
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


def duration_metrics(label_years, censored, predicted_years, predicted_censored=None) -> dict:
    """Errors of predicted durations (tenure, time to promotion) under right-censoring.

    A censored value, label or prediction, is a lower bound ("at least X, still employed"), never a point
    estimate: MAE and RMSE use uncensored labels with point predictions only.

    Args:
        label_years: Observed durations; for censored labels, the lower bound observed so far.
        censored: True where the label is a lower bound (the event had not happened yet).
        predicted_years: Predictions; NaN means "not expected" (no event predicted).
        predicted_censored: True where the prediction is a lower bound ("at least"); None: none is.

    Returns:
        ``uncensored``: n, ``predicted_none``, ``predicted_at_least`` (with ``predicted_censored``: lower-bound predictions of an observed
        duration: not scored by MAE/RMSE; ``at_least_above_label`` of them claim more than it was, a known
        error) and MAE/RMSE over the point predictions.
        ``censored``: n, ``predicted_at_least``, and ``below_bound_share``, the share of censored labels whose
        point prediction is below the bound (a known error; "not expected" and a lower bound are never below).

    Examples:
        python -c "from data_prep.metrics import duration_metrics; print(duration_metrics([2.0, 5.0], [False, True], [3.0, 4.0]))"
    """
    y = np.asarray(label_years, dtype=float)
    c = np.asarray(censored, dtype=bool)
    p = np.asarray(predicted_years, dtype=float)
    at_least = (
        np.zeros(len(p), dtype=bool) if predicted_censored is None else np.asarray(predicted_censored, bool)
    )
    u = ~c
    has = u & ~np.isnan(p) & ~at_least
    uncensored = {"n": int(u.sum()), "predicted_none": int((u & np.isnan(p)).sum())}
    if predicted_censored is not None:
        uncensored["predicted_at_least"] = int((u & at_least).sum())
        uncensored["at_least_above_label"] = int((u & at_least & (p > y)).sum())
    uncensored["mae"] = mean_absolute_error(y[has], p[has]) if has.any() else None
    uncensored["rmse"] = root_mean_squared_error(y[has], p[has]) if has.any() else None
    below = c & ~np.isnan(p) & ~at_least & (p < y)
    cens = {"n": int(c.sum())}
    if predicted_censored is not None:
        cens["predicted_at_least"] = int((c & at_least).sum())
    cens["below_bound"] = int(below.sum())
    cens["below_bound_share"] = float(below.sum() / c.sum()) if c.any() else None
    return {"uncensored": uncensored, "censored": cens}


def label_metrics(y_true, y_pred) -> dict:
    """Accuracy, macro-F1 and confusion matrix of a categorical field (ticket queue or priority).

    Macro-F1 averages over the classes present in ``y_true``; a predicted class that no reference has
    lowers the recall of the true class, not the average's denominator. The confusion matrix covers every
    class seen on either side (rows: reference, columns: prediction).

    Examples:
        python -c "from data_prep.metrics import label_metrics; print(label_metrics(['a', 'b'], ['a', 'a']))"
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
        python -c "from data_prep.metrics import rubric_metrics; print(rubric_metrics([7, 3], [10, 10], [7, 5], [10, 10]))"
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
        decision: How a predicted positive is decided, when the report should state it.
        plot: The kind of plot ``recipes.report`` draws of the group, if any.
        title: The plot's title.
    """

    task: str
    name: str
    data: dict[str, np.ndarray]
    meta: list[dict]
    full: Callable[[dict], dict]
    headline: Callable[[dict], dict]
    decision: str | None = None  # how a prediction is decided, stated in the report (e.g. "p >= 0.5")
    plot: str = ""  # "", calibration (data y, p) or confusion (metrics' confusion): drawn by recipes.report
    title: str = ""  # the plot's title; {n} and {name} are filled in

    def take(self, idx: np.ndarray) -> dict:
        return {k: v[idx] for k, v in self.data.items()}

    def __len__(self) -> int:
        return len(self.meta)


def attrition_headline(d: dict) -> dict:
    """The headline metrics of a attrition group's arrays (what slices and intervals report)."""
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


def duration_headline(d: dict) -> dict:
    """The headline metrics of a duration group's arrays (what slices and intervals report)."""
    m = duration_metrics(d["y"], d["censored"], d["p"], d.get("p_censored"))
    return {
        "mae": m["uncensored"]["mae"],
        "rmse": m["uncensored"]["rmse"],
        "below_bound_share": m["censored"]["below_bound_share"],
    }


def label_headline(d: dict) -> dict:
    """The headline metrics of a label group's arrays (what slices and intervals report)."""
    y, p = d["y"], d["p"]
    return {
        "accuracy": accuracy_score(y, p),
        "macro_f1": f1_score(y, p, labels=np.unique(y), average="macro", zero_division=0),
    }


def rubric_headline(d: dict) -> dict:
    """The headline metrics of a rubric group's arrays (what slices and intervals report)."""
    m = rubric_metrics(d["score"], d["max"], d["pred"], d["pred_max"])
    return {"exact_match": m["exact_match"], "mae_normalised": m["mae_normalised"], "qwk": m["qwk"]}


def canonical(value: str | None, spelling: dict[str, str]) -> str:
    """``value`` as the references spell it (matched case-insensitively); ``(none)`` for None."""
    if value is None:
        return "(none)"
    return spelling.get(value.casefold(), value)


def make_group(task: str, name: str, rows: list, data: dict, full, headline, **kw) -> Group | None:
    """A `Group` of ``rows`` (``(example, answer)`` pairs) with ``data`` as arrays; None when ``rows`` is empty.

    Examples:
        python -c "from data_prep.metrics import make_group, label_metrics, label_headline; print(make_group('t', 'x', [], {}, label_metrics, label_headline))"
    """
    if not rows:
        return None
    return Group(
        task,
        name,
        {k: np.asarray(v) for k, v in data.items()},
        [r[0].meta for r in rows],
        full,
        headline,
        **kw,
    )


def bootstrap_intervals(group: Group, samples: int, confidence: float, seed: int) -> dict:
    """Percentile bootstrap intervals of a group's headline metrics.

    Examples are resampled with replacement ``samples`` times from a generator seeded with ``seed`` (the
    same seed gives the same intervals); a resample where a metric is undefined (one class only) is left
    out of that metric's interval.

    Returns:
        ``{metric: [low, high]}``, or ``{metric: None}`` when no resample defines the metric.

    Examples:
        python -c "import data_prep.metrics as m; help(m.bootstrap_intervals)"
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
        python -c "import data_prep.metrics as m; help(m.slice_metrics)"
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
