"""Classical baselines fit on data_prep's training split, written as predictions the same evaluator scores.

The question a user asks of the fine-tuned gpt-oss is "does it beat what I already had?". These models are
what they had: fit on ``train.jsonl`` of a data_prep folder, they answer every example of ``test.jsonl``
in the JSON answer format (`data_prep.answers`) and are scored by ``recipes.evaluate`` like the LLM.

Each task's baselines (features, models, their options in this config) live in its module
(`data_prep.tasks`): HR (``hr.*``: ``logistic_regression``, ``gradient_boosting``) in `data_prep.tasks.hr`,
tickets (``tickets.*``: ``tfidf_logistic_regression``) in `data_prep.tasks.tickets`; a task from another module
is fit once ``task_modules=[<module>]`` loads it. Tasks without a baseline (rubric, builtin) are left out.

Stage 1 and stage 2: each model is fit on the stage-1 lines (the profile) and answers the stage-1 lines; where
data_prep wrote stage-2 conversations (a mapping with ``data_prep.history``), the same model is fit again on the
stage-2 lines (the profile and the history, read from their user turns) and answers as stage 2 for the same
people, so the evaluator sets the two side by side with paired intervals of the difference.

Outputs under ``out_dir``: ``predictions/<model>.jsonl`` (stage 1, and stage 2 where there is history) and,
with ``evaluate=true``, ``eval/<model>/`` (the evaluator's report, summary and plots) and ``summary.md``
comparing the models.

Examples:
    python -m data_prep data_prep=hr_ibm_attrition input=../shared/data/hr/ibm_hr_attrition.csv out_dir=work/data/ibm splits.train=0.8 splits.validation=0 splits.test=0.2 pii.mode=drop answer_format=json
    python -m recipes.baselines data_dir=work/data/ibm out_dir=work/baselines/ibm
    python -m recipes.baselines data_dir=work/data/ibm out_dir=work/baselines/ibm_all_columns hr.source_csv=../shared/data/hr/ibm_hr_attrition.csv
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from data_prep import tasks
from data_prep.predictions import Prediction, write_predictions
from data_prep.schema import ChatExample, SchemaError, read_jsonl
from data_prep.stage2 import is_stage2, person_id
from data_prep.table import InputError
from data_prep.tasks import BaselinesError
from data_prep.tasks.hr import HrBaselineConfig
from data_prep.tasks.tickets import TicketBaselineConfig
from recipes import evaluate
from recipes.report import fmt, fmt_ci, fmt_diff

MODEL_PREFIX = "baseline/"


# --------------------------------------------------------------------------------------------------------------
# Configuration


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
    # Plugin modules that register tasks (data_prep.tasks), e.g. [my_tasks.toy]; the shipped tasks always load.
    task_modules: list[str] = field(default_factory=list)


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
    try:
        tasks.load(cfg.task_modules)
    except tasks.TaskModuleError as e:
        problems.append(str(e))
    for name in tasks.names():
        problems += tasks.get(name).check_baselines(cfg)
    if cfg.bootstrap_samples < 0:
        problems.append(f"bootstrap_samples={cfg.bootstrap_samples}; use 0 (off) or more")
    if problems:
        raise BaselinesError("baselines config has problems:\n  - " + "\n  - ".join(problems))


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
    tasks.load(cfg.task_modules)
    train, test = _read_split(cfg, cfg.train_split), _read_split(cfg, cfg.eval_split)
    out: dict[str, list[Prediction]] = {}
    for task in (tasks.get(name) for name in tasks.names()):
        names = task.baseline_models(cfg)
        te = [ex for ex in test if ex.task == task.name]
        if not te or not names:
            continue
        tr = [ex for ex in train if ex.task == task.name]
        if not tr:
            raise BaselinesError(
                f"the {cfg.train_split} split has no {task.name} examples to fit on, but {cfg.eval_split} has {len(te)}"
            )
        # Stage 1 from the profile (stage-1 lines); stage 2, where data_prep wrote stage-2 conversations, from
        # the profile and the history (their user turns), answered for the same people.
        stages = {
            1: ([ex for ex in tr if not is_stage2(ex)], [ex for ex in te if not is_stage2(ex)]),
            2: ([ex for ex in tr if is_stage2(ex)], [ex for ex in te if is_stage2(ex)]),
        }
        for name in names:
            for stage, (fit_on, answer) in stages.items():
                if not fit_on or not answer:
                    continue
                answers = task.baseline_answers(name, fit_on, answer, cfg)
                out.setdefault(name, []).extend(
                    Prediction(person_id(ex), ex.task, MODEL_PREFIX + name, stage, json.dumps(a))
                    for ex, a in zip(answer, answers, strict=True)
                )
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
            compared = (
                reports[name].get("stage_comparison", {}).get("tasks", {}).get(task, {}).get("groups", {})
            )
            if g in compared:
                m = compared[g]["metrics"]
                out += [
                    f"| {name} stage 1 (profile) | " + " | ".join(fmt(m[k]["stage1"]) for k in keys) + " |",
                    f"| {name} stage 2 (+ history) | " + " | ".join(fmt(m[k]["stage2"]) for k in keys) + " |",
                    f"| {name} stage 2 - stage 1 | " + " | ".join(fmt_diff(m[k]) for k in keys) + " |",
                ]
                continue
            entry = reports[name]["tasks"][task][g]
            cells = [fmt_ci(entry["headline"][k], entry.get("ci", {}).get(k)) for k in keys]
            out.append(f"| {name} | " + " | ".join(cells) + " |")
        out.append("")
    sentences = [
        f"- {name}: {r['stage_comparison']['summary']}"
        for name, r in reports.items()
        if "stage_comparison" in r
    ]
    if sentences:
        out += [
            "Stage 2 against stage 1 (paired bootstrap intervals of the difference, in brackets):",
            "",
            *sentences,
            "",
        ]
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
            ecfg.task_modules = list(cfg.task_modules)
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
    except (BaselinesError, evaluate.EvaluateError, InputError, tasks.TaskModuleError) as e:
        raise SystemExit(f"error: {e}") from None
    for name, p in paths.items():
        print(f"{name:>26}: {p}")
    if "summary" in paths:
        print(paths["summary"].read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
