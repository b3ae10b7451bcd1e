"""Score a predictions JSONL against the reference chat JSONL: metrics, slices, confidence intervals, plots.

Predictions (written by ``recipes.predict`` and ``recipes.baselines``; see `Prediction`) are joined to the
references (``data_prep``'s chat JSONL) by ``id``. Every reference example ends up in exactly one of three
places, and the report's counts add up: *scored* (its answer parsed), a *parse failure* (the prediction is
there but unusable: wrong types, missing fields, no or empty final channel, an answer in neither format),
or *missing* (no prediction line). Prediction lines that cannot be joined at all (not JSON, no ``id`` or
``stage``) are *malformed lines*, listed with their line numbers; predictions whose id is not in the
references are *extra*. Metrics are computed on the scored examples; parse failures are reported apart so
a model that answers badly is not confused with one that answers wrongly.

Each task's metrics are defined by its module (`data_prep.tasks`) from the functions of `data_prep.metrics`;
a task from another module is scored once ``task_modules=[<module>]`` loads it. The shipped tasks' metrics
(all from scikit-learn):

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

Stage 1 against stage 2: when the predictions hold both stages (``recipes.predict`` with a history, or
``recipes.baselines`` on data with history), ``stage_comparison`` in the report sets them side by side on the
same people (those with a parsed answer at both): each group's headline metrics at both stages, the difference
(stage 2 - stage 1) with a paired bootstrap interval, per task and per slice, how many decisions stage 2 changed
and whether each change was right, and one sentence saying whether stage 2 helped (its interval above zero on a
group's primary metric), hurt, or made no measurable difference. The references' stage-2 lines (data_prep writes
one after each stage-1 line) are the same people and are not scored on their own.

Per-slice metrics group the examples by meta fields (``slices``: department, region, title,
performance_rating, language); percentile bootstrap confidence intervals (seeded) accompany the headline
metrics. Outputs under ``out_dir``: ``report.json``, ``summary.md``, ``calibration_<task>.png`` and
``confusion_<task>_<field>.png`` (drawn by `recipes.report`).

Examples:
    python -m recipes.evaluate predictions=work/predict/predictions.jsonl references=work/data/hr/test.jsonl out_dir=work/eval/hr
    python -m recipes.evaluate predictions=work/baselines/ibm/predictions/logistic_regression.jsonl references=work/baselines/ibm/references.jsonl stage=1 bootstrap.samples=0
"""

from __future__ import annotations

import json
import math
import shutil
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import hydra
import numpy as np
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from data_prep import tasks
from data_prep.answers import AnswerParseError, normalise_answer, parse_answer
from data_prep.metrics import Group, bootstrap_intervals, slice_metrics
from data_prep.predictions import FAILURE_KINDS, PredictionLine, read_predictions
from data_prep.schema import ChatExample, SchemaError, read_jsonl
from data_prep.stage2 import is_stage2
from recipes.harmony_text import NoFinalChannel, final_text
from recipes.report import summary_markdown, write_plots

# --------------------------------------------------------------------------------------------------------------
# Reading an answer


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
    slice_samples: int = 200  # resamples per slice in the stage 1 / stage 2 comparison


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
    # Plugin modules that register tasks (data_prep.tasks), e.g. [my_tasks.toy]; the shipped tasks always load.
    task_modules: list[str] = field(default_factory=list)


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
    if cfg.bootstrap.slice_samples < 0:
        problems.append(f"bootstrap.slice_samples={cfg.bootstrap.slice_samples}; use 0 (off) or more (200)")
    if not 0.0 < cfg.bootstrap.confidence < 1.0:
        problems.append(f"bootstrap.confidence={cfg.bootstrap.confidence}; use a level in (0, 1), e.g. 0.95")
    if cfg.max_listed < 0:
        problems.append(f"max_listed={cfg.max_listed}; use 0 or more")
    try:
        tasks.load(cfg.task_modules)
    except tasks.TaskModuleError as e:
        problems.append(str(e))
    if problems:
        raise EvaluateError("evaluate config has problems:\n  - " + "\n  - ".join(problems))


# --------------------------------------------------------------------------------------------------------------
# Joining and scoring


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
            if is_stage2(ex):
                continue  # a person's stage-2 conversation: the same person and label as its stage-1 line
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
    tasks.load(cfg.task_modules)
    known = tasks.names()
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
        if ex.task not in known:
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
        for gi, g in enumerate(tasks.get(task).groups(scored[task], cfg)):
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
            if g.decision is not None:
                entry["decision"] = g.decision
            entry["slices"] = slice_metrics(g, list(cfg.slices))
            report["tasks"].setdefault(task, {})[g.name] = entry
            groups.append(g)
    comparison = compare_stages(lines, refs, cfg)
    if comparison is not None:
        report["stage_comparison"] = comparison
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
# Stage 1 against stage 2

# Headline metrics where lower is better; every other one is better higher.
LOWER_IS_BETTER = frozenset({"mae", "rmse", "brier", "below_bound_share", "mae_normalised"})
# The metric a group's verdict is read from: the first of these its headline has.
PRIMARY_METRICS = ("accuracy", "f1", "exact_match", "mae")


def compare_stages(lines: list[PredictionLine], refs: dict[str, ChatExample], cfg) -> dict | None:
    """Stage 1 and stage 2 side by side on the same people: each group's headline metrics at both stages, the
    difference (stage 2 - stage 1) with a paired bootstrap interval, the same per slice (``bootstrap.slice_samples``
    resamples), and how many decisions stage 2 changed (to right, to wrong, wrong to wrong).

    Only people with a parsed answer at both stages are compared. The bootstrap resamples people, the same
    resample for both stages (seeded with ``bootstrap.seed``, one stream per group); a resample where a metric
    is undefined is left out of its interval.

    Returns:
        The comparison with its one-sentence ``summary``; None when no referenced person has both stages.

    Examples:
        python -m recipes.evaluate predictions=work/runs/<run>/predictions.jsonl references=work/data/builtin/test.jsonl
    """
    known = set(tasks.names())
    s1, _ = _select_stage(lines, "1")
    s2, _ = _select_stage(lines, "2")
    pairs: dict[str, list[tuple[ChatExample, dict, dict]]] = {}
    for i, ex in refs.items():
        if i not in s1 or i not in s2 or ex.task not in known:
            continue
        a1, p1 = read_answer(ex.task, s1[i])
        a2, p2 = read_answer(ex.task, s2[i])
        if p1 is None and p2 is None:
            pairs.setdefault(ex.task, []).append((ex, a1, a2))
    if not pairs:
        return None
    samples, level = int(cfg.bootstrap.samples), float(cfg.bootstrap.confidence)
    out: dict = {"tasks": {}}
    gi = 0
    for task in sorted(pairs):
        rows = pairs[task]
        g1s = {g.name: g for g in tasks.get(task).groups([(ex, a1) for ex, a1, _ in rows], cfg)}
        g2s = {g.name: g for g in tasks.get(task).groups([(ex, a2) for ex, _, a2 in rows], cfg)}
        entry = {"people": len(rows), "answers_changed": sum(a1 != a2 for _, a1, a2 in rows), "groups": {}}
        for name, g1 in g1s.items():
            g2 = g2s.get(name)
            if g2 is None or len(g1) != len(g2) or g1.meta != g2.meta:
                continue  # the group kept other people at the two stages: nothing to pair
            seed = int(cfg.bootstrap.seed) + gi
            gi += 1
            group = {"n": len(g1), "metrics": _paired(g1, g2, np.arange(len(g1)), samples, level, seed)}
            decisions = _decision_changes(g1, g2)
            if decisions is not None:
                group["decisions"] = decisions
            slice_samples = min(samples, int(cfg.bootstrap.slice_samples))
            group["slices"] = _paired_slices(g1, g2, list(cfg.slices), slice_samples, level, seed)
            entry["groups"][name] = group
        out["tasks"][task] = entry
    out["summary"] = comparison_sentence(out, level if samples > 0 else None)
    return out


def _paired(g1: Group, g2: Group, idx: np.ndarray, samples: int, level: float, seed: int) -> dict:
    """``{metric: {stage1, stage2, difference, ci}}`` over the people ``idx`` of two aligned groups."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        h1, h2 = g1.headline(g1.take(idx)), g2.headline(g2.take(idx))
        rng = np.random.default_rng(seed)
        diffs: dict[str, list[float]] = {k: [] for k in h1}
        for _ in range(samples if len(idx) else 0):
            take = idx[rng.integers(0, len(idx), len(idx))]
            b1, b2 = g1.headline(g1.take(take)), g2.headline(g2.take(take))
            for k in diffs:
                ok = b1.get(k) is not None and b2.get(k) is not None
                diffs[k].append(float(b2[k]) - float(b1[k]) if ok else math.nan)
    alpha = (1.0 - level) / 2.0
    out = {}
    for k, v1 in h1.items():
        v2 = h2.get(k)
        arr = np.asarray(diffs[k], dtype=float)
        arr = arr[~np.isnan(arr)]
        ci = [float(np.quantile(arr, alpha)), float(np.quantile(arr, 1.0 - alpha))] if len(arr) else None
        diff = None if v1 is None or v2 is None else float(v2) - float(v1)
        out[k] = {"stage1": v1, "stage2": v2, "difference": diff, "ci": ci if samples > 0 else None}
    return out


def _paired_slices(g1: Group, g2: Group, fields: list[str], samples: int, level: float, seed: int) -> dict:
    """`_paired` per value of each meta field the people carry (largest slice first)."""
    out = {}
    for f in fields:
        values = [m.get(f) for m in g1.meta]
        present = Counter(str(v) for v in values if v is not None and str(v) != "")
        rows = []
        for value, n in sorted(present.items(), key=lambda kv: (-kv[1], kv[0])):
            idx = np.array([i for i, v in enumerate(values) if v is not None and str(v) == value])
            rows.append({"value": value, "n": n, "metrics": _paired(g1, g2, idx, samples, level, seed)})
        if rows:
            out[f] = rows
    return out


def _decision_changes(g1: Group, g2: Group) -> dict | None:
    """How many of a group's decisions stage 2 changed, and whether each change was right: ``to_right`` (stage 1
    wrong, stage 2 right), ``to_wrong`` (the reverse), ``wrong_to_wrong``. None for a group without a decision
    to be right about (durations)."""
    key = "pred" if "pred" in g1.data else "p"
    y = g1.data.get("y")
    d1, d2 = g1.data.get(key), g2.data.get(key)
    if y is None or d1 is None or (key == "p" and np.asarray(d1).dtype.kind == "f"):
        return None
    changed = d1 != d2
    return {
        "changed": int(changed.sum()),
        "to_right": int((changed & (d2 == y)).sum()),
        "to_wrong": int((changed & (d1 == y)).sum()),
        "wrong_to_wrong": int((changed & (d1 != y) & (d2 != y)).sum()),
    }


def _primary(metrics: dict) -> str | None:
    return next((m for m in PRIMARY_METRICS if m in metrics), next(iter(metrics), None))


def comparison_sentence(comparison: dict, level: float | None) -> str:
    """One sentence saying whether stage 2 helped, from each group's primary metric and its paired interval:
    helped where the interval lies wholly on the better side of zero, hurt where wholly on the worse side.

    Examples:
        python -c "from recipes.evaluate import comparison_sentence; print(comparison_sentence({'tasks': {}}, 0.95))"
    """
    verdicts, parts = [], []
    for task, entry in comparison["tasks"].items():
        for name, g in entry["groups"].items():
            metric = _primary(g["metrics"])
            m = g["metrics"].get(metric) if metric else None
            if m is None or m["difference"] is None:
                continue
            sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
            ci = m["ci"]
            if ci is None:
                verdict = "unknown"
            elif sign * ci[0] > 0 and sign * ci[1] > 0:
                verdict = "helped"
            elif sign * ci[0] < 0 and sign * ci[1] < 0:
                verdict = "hurt"
            else:
                verdict = "no difference"
            verdicts.append(verdict)
            text = f"{task} {name} {metric} {m['stage1']:.3f} -> {m['stage2']:.3f} ({m['difference']:+.3f}"
            text += f", {level:.0%} CI {ci[0]:+.3f} to {ci[1]:+.3f}" if ci else ""
            dec = g.get("decisions")
            if dec is not None:
                text += (
                    f"; {dec['changed']} of {g['n']} answers changed: {dec['to_right']} to right, "
                    f"{dec['to_wrong']} to wrong"
                )
            parts.append(text + ")")
    if not parts:
        return (
            "Stage 2 could not be compared with stage 1: no metric is defined on the people with both stages."
        )
    detail = "; ".join(parts)
    if "hurt" in verdicts:
        return f"Stage 2 hurt: {detail}."
    if "helped" in verdicts:
        return f"Stage 2 helped: {detail}."
    if "unknown" in verdicts:
        return f"Stage 2 against stage 1, without intervals (bootstrap.samples=0): {detail}."
    return f"Stage 2 made no measurable difference (every interval includes 0): {detail}."


# --------------------------------------------------------------------------------------------------------------
# Outputs


# What an evaluation folder holds; a folder holding anything else is not ours to replace.
OUTPUT_PATTERNS = ("report.json", "summary.md", "calibration_*.png", "confusion_*.png")


def write_outputs(ev: Evaluation, out_dir: str | Path, plots: bool = True) -> dict[str, Path]:
    """Write ``report.json``, ``summary.md`` and (optionally) the PNG plots as a new ``out_dir``.

    Everything is written into ``<out_dir>.partial``, which then replaces ``out_dir`` whole: no plot of an
    earlier run survives beside the new report, and a failure midway leaves the previous folder as it was.
    An existing ``out_dir`` holding anything but an evaluation's files is refused, not replaced.

    Examples:
        python -c "import recipes.evaluate as e; help(e.write_outputs)"
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise EvaluateError(f"out_dir={out} is a file; pass a folder (out_dir=<new folder>)")
    if out.exists():
        foreign = sorted(p.name for p in out.iterdir() if not any(p.match(pat) for pat in OUTPUT_PATTERNS))
        if foreign:
            listed = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise EvaluateError(
                f"out_dir={out} holds more than an evaluation ({listed}) and a new one replaces the folder "
                "whole; pass a new or empty folder (out_dir=<new folder>)"
            )
    partial, old = out.with_name(out.name + ".partial"), out.with_name(out.name + ".old")
    for leftover in (partial, old):  # of a run that died midway
        shutil.rmtree(leftover, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        names = {"report": "report.json", "summary": "summary.md"}
        (partial / names["report"]).write_text(
            json.dumps(ev.report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        (partial / names["summary"]).write_text(summary_markdown(ev.report), encoding="utf-8")
        if plots:
            names.update((p.stem, p.name) for p in write_plots(ev.report, ev.groups, partial))
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    # Two renames: out -> out.old, partial -> out (the old one is put back if the second fails).
    if out.exists():
        out.rename(old)
    try:
        partial.rename(out)
    except BaseException:
        if old.exists():
            old.rename(out)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return {key: out / name for key, name in names.items()}


def run(cfg) -> dict[str, Path]:
    """validate -> build -> write: what ``main`` and ``recipes.baselines`` call.

    Examples:
        python -c "from omegaconf import OmegaConf; from recipes.evaluate import EvaluateConfig, run; run(OmegaConf.structured(EvaluateConfig(predictions='work/p.jsonl', references='work/data/hr/test.jsonl')))"
    """
    validate(cfg)
    return write_outputs(build(cfg), cfg.out_dir, plots=bool(cfg.plots))


ConfigStore.instance().store(name="evaluate_schema", node=EvaluateConfig)


def majority_share(metrics: dict) -> float | None:
    """The share of the most frequent reference class, from a label group's confusion matrix (rows: reference);
    None for a group without one. Always answering that class scores this accuracy."""
    matrix = metrics.get("confusion", {}).get("matrix")
    if not matrix:
        return None
    rows = [sum(row) for row in matrix]
    return max(rows) / sum(rows) if sum(rows) else None


def headline_lines(report: dict) -> list[str]:
    """One line per metric group: its headline metrics (with their bootstrap interval when computed) and, for a
    label group, the accuracy of always answering the majority class.

    Examples:
        python -c "from recipes.evaluate import headline_lines; print(headline_lines({'tasks': {'t': {'g': {'metrics': {'confusion': {'matrix': [[3, 1], [0, 1]]}}, 'headline': {'accuracy': 0.8}}}}}))"
    """
    lines = []
    level = f"{report.get('bootstrap', {}).get('confidence', 0.95):.0%}"
    for task, groups in report["tasks"].items():
        for name, entry in groups.items():
            parts = []
            for metric, value in entry["headline"].items():
                if value is None or (isinstance(value, float) and math.isnan(value)):
                    continue
                ci = (entry.get("ci") or {}).get(metric)
                parts.append(
                    f"{metric} {value:.3f}" + (f" ({level} CI {ci[0]:.3f}-{ci[1]:.3f})" if ci else "")
                )
            majority = majority_share(entry["metrics"])
            if majority is not None:
                parts.append(f"majority class {majority:.3f}")
            lines.append(f"  {task} {name}: " + ", ".join(parts))
    return lines


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    try:
        paths = run(cfg)
    except (EvaluateError, tasks.TaskModuleError) as e:
        raise SystemExit(f"error: {e}") from None
    report = json.loads(paths["report"].read_text(encoding="utf-8"))
    c = report["counts"]
    print(
        f"scored {c['scored']}/{c['references']} (parse failures {c['parse_failures']}, missing {c['missing']}, "
        f"malformed lines {c['malformed_lines']}, extra ids {c['extra']})"
    )
    for line in headline_lines(report):
        print(line)
    if "stage_comparison" in report:
        print(report["stage_comparison"]["summary"])
    for name, p in paths.items():
        print(f"{name:>12}: {p}")


if __name__ == "__main__":
    main()
