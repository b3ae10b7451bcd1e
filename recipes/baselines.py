"""Classical baselines fit on data_prep's training split, written as predictions the same evaluator scores.

The question a user asks of the fine-tuned gpt-oss is "does it beat what I already had?". These models are
what they had: fit on ``train.jsonl`` of a data_prep folder, they answer every example of ``test.jsonl``
in the JSON answer format (`data_prep.answers`) and are scored by ``recipes.evaluate`` like the LLM.

HR (``task="hr"``), ``logistic_regression`` and ``gradient_boosting``:

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

Tickets (``task="tickets"``), ``tfidf_logistic_regression``: TF-IDF of the user message (word 1-2 grams)
and a logistic regression for the queue, another for the priority. Queues are imbalanced, so classes are
reweighted and regularisation is light (``tickets.C``, ``tickets.class_weight``; chosen on the validation
split of the multilingual tickets).

Outputs under ``out_dir``: ``predictions/<model>.jsonl`` (stage 1) and, with ``evaluate=true``,
``eval/<model>/`` (the evaluator's report, summary and plots) and ``summary.md`` comparing the models.

Examples:
    python -m data_prep data_prep=hr_ibm_attrition input=../shared/data/hr/ibm_hr_attrition.csv out_dir=work/data/ibm splits.train=0.8 splits.validation=0 splits.test=0.2 pii.mode=drop answer_format=json
    python -m recipes.baselines data_dir=work/data/ibm out_dir=work/baselines/ibm
    python -m recipes.baselines data_dir=work/data/ibm out_dir=work/baselines/ibm_all_columns hr.source_csv=../shared/data/hr/ibm_hr_attrition.csv
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import hydra
import numpy as np
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from sklearn.dummy import DummyRegressor
from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor
from sklearn.feature_extraction import DictVectorizer
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from data_prep.schema import ChatExample, SchemaError, read_jsonl
from data_prep.table import InputError, read_table
from recipes import evaluate
from recipes.evaluate import Prediction, write_predictions

HR_MODELS = ("logistic_regression", "gradient_boosting")
TICKET_MODELS = ("tfidf_logistic_regression",)
MODEL_PREFIX = "baseline/"
_PROFILE_LINE = re.compile(r"^\s*-\s*([^:\n]+?)\s*:\s*(.*?)\s*$", re.M)
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


# --------------------------------------------------------------------------------------------------------------
# Configuration


@dataclass
class HrBaselineConfig:
    models: list[str] = field(default_factory=lambda: list(HR_MODELS))
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


@dataclass
class TicketBaselineConfig:
    models: list[str] = field(default_factory=lambda: list(TICKET_MODELS))
    max_features: int = 50000
    C: float = 100.0  # inverse regularisation strength of the logistic regression
    class_weight: str = "balanced"  # "" or balanced


@dataclass
class BaselinesConfig:
    data_dir: str = MISSING
    train_split: str = "train"
    eval_split: str = "test"
    out_dir: str = "work/baselines"
    seed: int = 0
    hr: HrBaselineConfig = field(default_factory=HrBaselineConfig)
    tickets: TicketBaselineConfig = field(default_factory=TicketBaselineConfig)
    evaluate: bool = True
    bootstrap_samples: int = 1000
    plots: bool = True


class BaselinesError(ValueError):
    """A baseline run that cannot start; the message lists every problem and its fix."""


def validate(cfg) -> None:
    """Check a composed config and its input files; raise one `BaselinesError` listing every problem.

    Examples:
        python -c "from omegaconf import OmegaConf; from recipes.baselines import BaselinesConfig, validate; validate(OmegaConf.structured(BaselinesConfig(data_dir='work/data/ibm')))"
    """
    problems = []
    make_data = "python -m data_prep data_prep=<source> input=<file> out_dir=<data_dir>"
    if OmegaConf.is_missing(cfg, "data_dir") or not str(cfg.data_dir).strip():
        problems.append(
            f"data_dir is not set; pass data_dir=<data_prep output folder> (created by {make_data})"
        )
    else:
        for split in (cfg.train_split, cfg.eval_split):
            path = Path(cfg.data_dir) / f"{split}.jsonl"
            if not path.is_file():
                problems.append(f"{path} does not exist; create it with {make_data}")
    bad = [m for m in cfg.hr.models if m not in HR_MODELS]
    if bad:
        problems.append(
            f"hr.models has {bad}; use some of {list(HR_MODELS)} (hr.models=[logistic_regression])"
        )
    bad = [m for m in cfg.tickets.models if m not in TICKET_MODELS]
    if bad:
        problems.append(f"tickets.models has {bad}; use {list(TICKET_MODELS)}")
    if cfg.hr.source_csv and not Path(cfg.hr.source_csv).is_file():
        problems.append(
            f"hr.source_csv={cfg.hr.source_csv} does not exist; pass the file data_prep read, or hr.source_csv=''"
        )
    if cfg.hr.class_weight not in ("", "balanced"):
        problems.append(f"hr.class_weight={cfg.hr.class_weight!r}; use '' or balanced")
    bands = list(cfg.hr.risk_bands)
    if len(bands) != 2 or not 0.0 <= bands[0] <= bands[1] <= 1.0:
        problems.append(f"hr.risk_bands={bands}; use [medium_from, high_from] with 0 <= medium <= high <= 1")
    if cfg.tickets.class_weight not in ("", "balanced"):
        problems.append(f"tickets.class_weight={cfg.tickets.class_weight!r}; use '' or balanced")
    if cfg.tickets.C <= 0:
        problems.append(f"tickets.C={cfg.tickets.C}; use a positive regularisation constant (100)")
    if cfg.tickets.max_features < 1:
        problems.append(f"tickets.max_features={cfg.tickets.max_features}; use a positive number")
    if cfg.bootstrap_samples < 0:
        problems.append(f"bootstrap_samples={cfg.bootstrap_samples}; use 0 (off) or more")
    if problems:
        raise BaselinesError("baselines config has problems:\n  - " + "\n  - ".join(problems))


# --------------------------------------------------------------------------------------------------------------
# Features


def profile_features(example: ChatExample) -> dict[str, float | str]:
    """The ``- Key: value`` lines of the example's last user message, typed for `DictVectorizer`.

    Numbers become floats, ``YYYY-MM-DD`` dates decimal years, anything else a string (one-hot encoded).

    Examples:
        python -c "from recipes.baselines import profile_features; from data_prep.schema import ChatExample; print(profile_features(ChatExample('a', 'hr', [{'role': 'user', 'content': '- Age: 41\\n- Department: Sales'}, {'role': 'assistant', 'content': 'x'}])))"
    """
    user = [m["content"] for m in example.messages if m.get("role") == "user"][-1]
    return {k.strip(): _typed(v) for k, v in _PROFILE_LINE.findall(user) if v.strip()}


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


# --------------------------------------------------------------------------------------------------------------
# Models


def _hr_pipelines(name: str, cfg) -> tuple[Pipeline, Pipeline]:
    """(classifier, regressor) of one HR baseline."""
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


def _fit_duration(reg: Pipeline, feats: list[dict], train: list[ChatExample], key: str):
    """Fit on the uncensored labels of ``key``; None when fewer than two exist."""
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
    if isinstance(model, DummyRegressor):
        return model.predict(np.zeros((len(feats), 1)))
    return np.clip(model.predict(feats), 0.0, None)


def hr_predictions(name: str, train: list[ChatExample], test: list[ChatExample], cfg) -> list[Prediction]:
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
    clf, reg = _hr_pipelines(name, cfg)
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

    tenure, n_tenure = _fit_duration(_hr_pipelines(name, cfg)[1], without(f_train), train, "tenure_years")
    promo, n_promo = _fit_duration(reg, without(f_train), train, "promotion_years")
    tenure_pred = _predict_duration(tenure, without(f_test)) if tenure is not None else np.zeros(len(test))
    promo_pred = _predict_duration(promo, without(f_test)) if promo is not None else [None] * len(test)
    label = name.replace("_", " ")
    reasons = {
        "tenure": f"{label} fit on {n_tenure} uncensored training tenures",
        "promotion": f"{label} fit on {n_promo} observed training promotions"
        if promo is not None
        else "too few observed promotions in training to estimate",
        "attrition": f"{label} fit on {len(labelled)} training outcomes",
    }
    out = []
    for ex, p, t, pr in zip(test, prob, tenure_pred, promo_pred, strict=True):
        answer = {
            "tenure_years": round(float(t), 2),
            "time_to_promotion_years": None if pr is None else round(float(pr), 2),
            "attrition_risk": _risk(float(p), cfg.hr.risk_bands),
            "attrition_probability": round(float(p), 4),
            "reasons": reasons,
        }
        out.append(Prediction(ex.id, ex.task, MODEL_PREFIX + name, 1, json.dumps(answer)))
    return out


def ticket_predictions(name: str, train: list[ChatExample], test: list[ChatExample], cfg) -> list[Prediction]:
    """Fit TF-IDF + logistic regression on ``train`` (queue, and priority where labelled) and answer ``test``.

    Raises:
        BaselinesError: The training split has fewer than two queues.

    Examples:
        python -m recipes.baselines data_dir=work/data/tickets
    """

    def text(ex):
        return "\n".join(m["content"] for m in ex.messages if m.get("role") == "user")

    def fit(key):
        rows = [(text(ex), str(ex.label[key])) for ex in train if ex.label.get(key) is not None]
        classes = {y for _, y in rows}
        if len(classes) < 2:
            return None, next(iter(classes), None)
        model = make_pipeline(
            TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), max_features=cfg.tickets.max_features),
            LogisticRegression(max_iter=5000, C=cfg.tickets.C, class_weight=cfg.tickets.class_weight or None),
        )
        return model.fit([t for t, _ in rows], [y for _, y in rows]), None

    queue, only_queue = fit("queue")
    if queue is None and only_queue is None:
        raise BaselinesError(
            f"the {cfg.train_split} split has no queue labels; check data_prep's tickets mapping"
        )
    priority, only_priority = fit("priority")
    texts = [text(ex) for ex in test]
    queues = queue.predict(texts) if queue else [only_queue] * len(test)
    priorities = priority.predict(texts) if priority else [only_priority] * len(test)
    return [
        Prediction(ex.id, ex.task, MODEL_PREFIX + name, 1, json.dumps({"queue": str(q), "priority": p}))
        for ex, q, p in zip(test, queues, priorities, strict=True)
    ]


# --------------------------------------------------------------------------------------------------------------
# build / main


def _read_split(cfg, split: str) -> list[ChatExample]:
    path = Path(cfg.data_dir) / f"{split}.jsonl"
    try:
        return list(read_jsonl(path))
    except SchemaError as e:
        raise BaselinesError(f"{e}; regenerate {path} with python -m data_prep") from e


def build(cfg) -> dict[str, list[Prediction]]:
    """Fit every configured baseline on the training split and predict the evaluation split.

    Returns:
        ``{model name: predictions}``; tasks without a baseline (rubric, builtin) are left out.

    Raises:
        BaselinesError: A split cannot be read, or a task's labels cannot train a model.

    Examples:
        python -c "from omegaconf import OmegaConf; from recipes.baselines import BaselinesConfig, build; print({k: len(v) for k, v in build(OmegaConf.structured(BaselinesConfig(data_dir='work/data/ibm'))).items()})"
    """
    train, test = _read_split(cfg, cfg.train_split), _read_split(cfg, cfg.eval_split)
    out: dict[str, list[Prediction]] = {}
    for task, names, fn in (
        ("hr", cfg.hr.models, hr_predictions),
        ("tickets", cfg.tickets.models, ticket_predictions),
    ):
        tr = [ex for ex in train if ex.task == task]
        te = [ex for ex in test if ex.task == task]
        if not te:
            continue
        if not tr:
            raise BaselinesError(
                f"the {cfg.train_split} split has no {task} examples to fit on, but {cfg.eval_split} has {len(te)}"
            )
        for name in names:
            out.setdefault(name, []).extend(fn(name, tr, te, cfg))
    return out


def comparison_markdown(reports: dict[str, dict]) -> str:
    """One table per answer field: each model's headline metrics with their intervals.

    Examples:
        python -c "import recipes.baselines as b; help(b.comparison_markdown)"
    """
    out = ["# Baselines", ""]
    fields: dict[tuple[str, str], list[str]] = {}
    for name, rep in reports.items():
        for task, groups in rep["tasks"].items():
            for g in groups:
                fields.setdefault((task, g), []).append(name)
    for (task, g), names in fields.items():
        keys = list(reports[names[0]]["tasks"][task][g]["headline"])
        out += [f"## {task}: {g}", "", "| model | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 1)]
        for name in names:
            entry = reports[name]["tasks"][task][g]
            cells = [evaluate._fmt_ci(entry["headline"][k], entry.get("ci", {}).get(k)) for k in keys]
            out.append(f"| {name} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out) + "\n"


def run(cfg) -> dict[str, Path]:
    """validate -> build -> write predictions -> (evaluate each model and write the comparison).

    Examples:
        python -m recipes.baselines data_dir=work/data/ibm out_dir=work/baselines/ibm
    """
    validate(cfg)
    predictions = build(cfg)
    out = Path(cfg.out_dir)
    paths, reports = {}, {}
    references = Path(cfg.data_dir) / f"{cfg.eval_split}.jsonl"
    for name, preds in predictions.items():
        paths[name] = out / "predictions" / f"{name}.jsonl"
        write_predictions(paths[name], preds)
        if cfg.evaluate:
            ecfg = OmegaConf.structured(evaluate.EvaluateConfig)
            ecfg.predictions, ecfg.references = str(paths[name]), str(references)
            ecfg.out_dir, ecfg.plots = str(out / "eval" / name), bool(cfg.plots)
            ecfg.bootstrap.samples, ecfg.bootstrap.seed = int(cfg.bootstrap_samples), int(cfg.seed)
            written = evaluate.run(ecfg)
            reports[name] = json.loads(written["report"].read_text(encoding="utf-8"))
    if reports:
        paths["summary"] = out / "summary.md"
        paths["summary"].write_text(comparison_markdown(reports), encoding="utf-8")
    return paths


ConfigStore.instance().store(name="baselines_schema", node=BaselinesConfig)


@hydra.main(version_base="1.3", config_path="../conf", config_name="baselines")
def main(cfg: DictConfig) -> None:
    try:
        paths = run(cfg)
    except (BaselinesError, evaluate.EvaluateError, InputError) as e:
        raise SystemExit(f"error: {e}") from None
    for name, p in paths.items():
        print(f"{name:>26}: {p}")
    if "summary" in paths:
        print(paths["summary"].read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
