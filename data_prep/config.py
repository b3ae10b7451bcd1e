"""Typed schema of ``conf/data_prep.yaml`` and its ``data_prep`` group, registered in Hydra's ConfigStore.

A misspelt key or a wrong type in a YAML file or on the command line fails at compose time;
`validate` then collects every remaining problem (fractions, formats, PII columns in the profile, and each
task's own rules: its fields and checks live in its module under `data_prep.tasks`) and
raises one error that lists them all with the override that fixes each.

Examples:
    python -m data_prep --cfg job data_prep=hr_hrdataset_v14
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from data_prep import tasks
from data_prep.answers import FORMATS


@dataclass
class SplitConfig:
    train: float = 0.8
    validation: float = 0.1
    test: float = 0.1


@dataclass
class PiiConfig:
    mode: str = "hash"  # hash: salted sha256 of ids; drop: ids replaced by source name and line
    salt: str = ""  # "" draws a random salt per run (ids then differ between runs)


@dataclass
class SourceConfig:
    """One source mapping: which task it feeds and how its columns map onto ours."""

    name: str = MISSING
    task: str = MISSING
    system_prompt: str = MISSING
    columns: dict[str, str] = field(default_factory=dict)
    profile: dict[str, str] = field(default_factory=dict)
    recode: dict[str, dict[str, str]] = field(default_factory=dict)
    true_values: list[str] = field(default_factory=lambda: ["yes", "y", "true", "1", "left", "terminated"])
    false_values: list[str] = field(default_factory=lambda: ["no", "n", "false", "0", "stayed", "active"])
    pii_columns: list[str] = field(default_factory=list)
    date_formats: list[str] = field(default_factory=lambda: ["%Y-%m-%d", "%m/%d/%Y", "%m/%d/%y"])
    as_of: str = ""
    max_tenure_years: float = 60.0
    cohort: list[str] = field(default_factory=lambda: ["department", "title"])
    min_cohort: int = 10
    medium_risk_rate: float = 0.2
    languages: list[str] = field(default_factory=list)
    unescape_newlines: bool = False
    score_bands: int = 5


@dataclass
class DataPrepConfig:
    data_prep: SourceConfig = field(default_factory=SourceConfig)
    input: str = MISSING
    work_dir: str = "work"
    out_dir: str = MISSING
    answer_format: str = "prose"
    seed: int = 0
    splits: SplitConfig = field(default_factory=SplitConfig)
    pii: PiiConfig = field(default_factory=PiiConfig)
    progress: bool = True
    max_field_chars: int = 100_000
    task_modules: list[str] = field(
        default_factory=list
    )  # plugin modules registering tasks (data_prep.tasks)


class ConfigError(ValueError):
    """A data-prep configuration that cannot run; the message lists every problem and its fix."""


def validate(cfg) -> None:
    """Check a composed config; raise one `ConfigError` listing every problem.

    Examples:
        python -c "from data_prep.config import validate, DataPrepConfig; validate(DataPrepConfig())"
    """
    problems = []
    src = cfg.data_prep
    task = None
    try:
        tasks.load(cfg.task_modules)
        task = tasks.get(src.task)
    except tasks.TaskModuleError as e:
        problems.append(str(e))
    except tasks.UnknownTaskError as e:
        problems.append(f"data_prep.task: {e}")
    if task is not None and task.source is None:
        problems.append(
            f"data_prep.task={src.task!r} has no source reader for python -m data_prep; its module makes its data"
        )
    if cfg.answer_format not in FORMATS:
        problems.append(f"answer_format={cfg.answer_format!r}; use one of {FORMATS} (answer_format=json)")
    fr = [cfg.splits.train, cfg.splits.validation, cfg.splits.test]
    if any(f < 0 for f in fr) or abs(sum(fr) - 1.0) > 1e-6:
        problems.append(
            f"splits {fr} must be non-negative and sum to 1 (splits.train=0.8 splits.validation=0.1 ...)"
        )
    if cfg.pii.mode not in ("hash", "drop"):
        problems.append(f"pii.mode={cfg.pii.mode!r}; use hash or drop")
    if cfg.max_field_chars < 1:
        problems.append(f"max_field_chars={cfg.max_field_chars}; use a positive number of characters")
    if not str(src.system_prompt).strip():
        problems.append("data_prep.system_prompt is empty; every example needs a system prompt")
    if task is not None:
        unknown = sorted(set(src.columns) - set(task.fields))
        if unknown:
            problems.append(
                f"data_prep.columns has unknown field(s) {unknown} for task {task.name}; known: {list(task.fields)}"
            )
        missing = [f for f in task.required if not src.columns.get(f)]
        if missing:
            problems.append(
                f"data_prep.columns must map {missing} to source columns (data_prep.columns.{missing[0]}=<column>)"
            )
    personal = set(src.pii_columns) | {src.columns.get(k) for k in ("employee_id", "name")} - {None, ""}
    leaked = sorted(set(src.profile) & personal)
    if leaked:
        problems.append(
            f"data_prep.profile shows personal column(s) {leaked}; remove them from data_prep.profile"
        )
    if task is not None:
        problems += task.check(src)
    if problems:
        raise ConfigError("data_prep config has problems:\n  - " + "\n  - ".join(problems))


def register() -> None:
    """Register the schema so ``conf/data_prep.yaml`` composes against it."""
    ConfigStore.instance().store(name="data_prep_schema", node=DataPrepConfig)


register()
