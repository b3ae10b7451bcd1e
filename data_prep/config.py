"""Typed schema of ``conf/data_prep.yaml`` and its ``data_prep`` group, registered in Hydra's ConfigStore.

A misspelt key or a wrong type in a YAML file or on the command line fails at compose time;
`validate` then collects every remaining problem (fractions, formats, PII columns in the profile, and each
task's own rules: its fields and checks live in its module under `data_prep.tasks`) and
raises one error that lists them all with the override that fixes each.

Examples:
    python -m data_prep --cfg job data_prep=hr_hrdataset_v14
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass, field
from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from data_prep import tasks
from data_prep.answers import FORMATS


@dataclass
class SplitConfig:
    train: float = 0.8
    validation: float = 0.1
    test: float = 0.1


@dataclass
class PiiConfig:
    mode: str = "hash"  # hash: ids become keyed hashes; drop: ids replaced by source name and line
    # The salt itself never sits in the config (Hydra would write it to disk): it comes from the environment
    # (SALT_ENV) or from this file; neither given draws a random salt per run (ids then differ between runs).
    salt_file: str = ""
    salt: str = ""  # refused when set: only here to name the fix (see `pii_salt`)


@dataclass
class SourceConfig:
    """One source mapping: which task it feeds and how its columns map onto ours."""

    name: str = MISSING
    task: str = MISSING
    system_prompt: str = MISSING
    columns: dict[str, str] = field(default_factory=dict)
    profile: dict[str, str] = field(default_factory=dict)
    # {SourceColumn: Label}: the individual's history, shown only in the stage-2 (personalised) turn, never in the
    # profile; with it, each person also gets a stage-2 conversation (`data_prep.stage2`). {}: stage 1 only.
    history: dict[str, str] = field(default_factory=dict)
    # {field or profile column: {raw: shown}}; every task applies it the same way (see `recode_maps`).
    recode: dict[str, dict[str, str]] = field(default_factory=dict)
    true_values: list[str] = field(default_factory=lambda: ["yes", "y", "true", "1", "left", "terminated"])
    false_values: list[str] = field(default_factory=lambda: ["no", "n", "false", "0", "stayed", "active"])
    pii_columns: list[str] = field(default_factory=list)
    # Prompt columns accepted although they determine the label on the training split (the leak guard of
    # `data_prep.inspect.label_leaks`), e.g. [EmploymentStatus]; [] refuses every such column.
    allow_label_columns: list[str] = field(default_factory=list)
    # {column or field: strptime format}; a date column not named here has its order read from its values.
    date_formats: dict[str, str] = field(default_factory=dict)
    # A share of a column's non-empty dates (0-1): when more fail its date_formats entry the run is refused;
    # up to it, those records are rejected one by one. Higher: more tolerance of mistyped dates.
    date_fail_share: float = 0.05
    tenure_unit: str = "years"  # unit of actual_tenure: years, months or days
    # actual_tenure is checked against the dates wherever the end is exact: a record agrees when within
    # tenure_tolerance_years + tenure_tolerance_share x the dates' tenure; fewer than tenure_min_agree_share
    # of them agreeing refuses tenure_unit.
    tenure_tolerance_years: float = 0.5  # years; higher: larger entry errors pass as agreeing
    tenure_tolerance_share: float = 0.1  # of the dates' tenure (0.1 = 10%), added to tenure_tolerance_years
    tenure_min_agree_share: float = 0.5  # 0-1; lower: tenure_unit refused only when fewer records agree
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
    overwrite: bool = False  # true: an existing out_dir is replaced (only at the end, by a rename)
    answer_format: str = "prose"
    seed: int = 0
    splits: SplitConfig = field(default_factory=SplitConfig)
    pii: PiiConfig = field(default_factory=PiiConfig)
    progress: bool = True
    max_field_chars: int = 100_000
    # How CSV inputs are read (data_prep.table.read_table); what was used is reported per input file.
    delimiter: str = "auto"  # auto: detected among , ; tab | (.tsv: tab); or one character, or tab
    encoding: str = "auto"  # auto: UTF-8 (with or without BOM), else cp1252; or utf-8, cp1252, latin-1, ...
    sheet: str = ""  # the .xlsx sheet to read; "" for the first
    # Plugin modules that register tasks (data_prep.tasks), e.g. [my_tasks.toy]; the shipped tasks always load.
    task_modules: list[str] = field(default_factory=list)


class ConfigError(ValueError):
    """A data-prep configuration that cannot run; the message lists every problem and its fix."""


SALT_ENV = "DATA_PREP_SALT"  # the environment variable that holds the PII salt
SALT_FIX = (
    f"pass the salt in the environment ({SALT_ENV}=$(cat <salt file>) python -m data_prep ...) or as a file "
    "(pii.salt_file=<path>), never in the config or on the command line, where Hydra's config dumps and shell "
    "histories keep it"
)
# The fingerprint is a keyed hash of this constant: equal fingerprints mean equal salts, and the fingerprint
# reveals nothing about the salt beyond that (HMAC-SHA256, truncated to 64 bits).
_FINGERPRINT_MESSAGE = b"gpt-oss data_prep salt fingerprint v1"


def pii_salt(cfg) -> str:
    """The PII salt from the environment (`SALT_ENV`) or ``pii.salt_file``; "" when neither is given.

    A salt file holds the salt on its first line (surrounding whitespace ignored). The salt is read here and
    kept out of the config, so no config dump, log or manifest can hold it.

    Raises:
        ConfigError: The salt is in the config, both sources are given, or the salt file is unreadable or empty.

    Examples:
        DATA_PREP_SALT=$(cat ~/.salt) python -m data_prep data_prep=hr_ibm_attrition input=../shared/data/hr/ibm_hr_attrition.csv
        python -m data_prep data_prep=rubric input=submissions/ pii.salt_file=$HOME/.config/gpt-oss/salt
    """
    if cfg.pii.get("salt"):
        raise ConfigError(f"pii.salt is set in the config: {SALT_FIX}")
    from_env = os.environ.get(SALT_ENV, "")
    path = cfg.pii.get("salt_file") or ""
    if from_env and path:
        raise ConfigError(f"the salt is given twice ({SALT_ENV} and pii.salt_file={path}); unset one of them")
    if not path:
        return from_env
    try:
        salt = Path(path).expanduser().read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(
            f"pii.salt_file={path} cannot be read ({type(e).__name__}); give a UTF-8 text file that holds the salt"
        ) from None
    if not salt:
        raise ConfigError(
            f"pii.salt_file={path} is empty; write the salt into it (e.g. openssl rand -hex 32 > {path})"
        )
    return salt


def salt_fingerprint(salt: str) -> str:
    """16 hex digits that are equal for equal salts and reveal nothing else (HMAC-SHA256 of a constant).

    Examples:
        python -c "from data_prep.config import salt_fingerprint; print(salt_fingerprint('s3cret'))"
    """
    return hmac.new(salt.encode(), _FINGERPRINT_MESSAGE, hashlib.sha256).hexdigest()[:16]


def salt_argv_problem(argv: list[str]) -> str | None:
    """The refusal for a salt on the command line (checked before Hydra writes anything), or None.

    The message names the fix and never repeats the value.

    Examples:
        python -c "from data_prep.config import salt_argv_problem; print(salt_argv_problem(['pii.salt=x']))"
    """
    for arg in argv:
        key, _, value = arg.partition("=")
        key = key.lstrip("+~")
        # pii.salt=..., +pii.salt=..., or the whole node: pii={mode:hash,salt:...}
        if key == "pii.salt" or (key == "pii" and "salt:" in value.replace(" ", "")):
            return f"error: a salt on the command line ({key}=...) is refused: {SALT_FIX}"
    return None


# The source options every task reads; any other is read by some tasks only (see `unread_options`).
COMMON_OPTIONS = ("name", "task", "system_prompt", "columns", "recode")


def recode_maps(src) -> dict[str, dict[str, str]]:
    """``data_prep.recode`` as ``{field or profile column: {raw: shown}}`` with text keys and values.

    The one rule for every task: a recode replaces a whole value, compared after its surrounding whitespace is
    stripped (case matters), before the value is checked, shown or used as a label, so before duplicates,
    grouping and splits; values it does not list are kept. An empty map recodes nothing.

    Examples:
        python -m data_prep data_prep=tickets input=../shared/data/tickets '++data_prep.recode.queue={Returns and Exchanges: Returns}'
    """
    return {name: {str(k): str(v) for k, v in m.items()} for name, m in src.recode.items() if m}


def recode_problems(src) -> list[str]:
    """A recode entry must name a field ``data_prep.columns`` maps, or a ``data_prep.profile`` or
    ``data_prep.history`` column.

    Examples:
        python -c "from data_prep.config import recode_problems, SourceConfig; print(recode_problems(SourceConfig(recode={'x': {'1': 'a'}})))"
    """
    mapped = {f for f, c in src.columns.items() if c}
    fields_of = {c: f for f, c in src.columns.items() if c}
    problems = []
    shown = set(src.profile) | set(getattr(src, "history", None) or {})
    for key in sorted(set(src.recode) - mapped - shown):
        hint = (
            f"; it is the column of {fields_of[key]}: recode the field (data_prep.recode.{fields_of[key]})"
            if key in fields_of
            else ""
        )
        problems.append(
            f"data_prep.recode.{key} names no mapped field and no data_prep.profile column (nor data_prep.history "
            f"column), so it would recode nothing{hint}; recode one of {sorted(mapped) + sorted(shown)} or map "
            f"the field (data_prep.columns.{key}=<column>)"
        )
    return problems


def unread_options(src, task: str, reads: tuple[str, ...]) -> list[str]:
    """One problem per source option set away from its default that ``task``'s source never reads.

    ``reads`` names the task's own options besides `COMMON_OPTIONS` (its ``Task.options``); `validate` calls this
    for every task, so an option meant for another task is refused instead of silently doing nothing.

    Examples:
        python -c "from data_prep.config import unread_options, SourceConfig; print(unread_options(SourceConfig(languages=['en']), 'rubric', ()))"
    """
    defaults = SourceConfig()
    problems = []
    for name in SourceConfig.__dataclass_fields__:
        if name in COMMON_OPTIONS or name in reads:
            continue
        value, default = getattr(src, name), getattr(defaults, name)
        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value)
        if value != default:
            problems.append(
                f"data_prep.{name} does not apply to task {task}: its source reads only "
                f"{list(COMMON_OPTIONS) + list(reads)}, so {name} would change nothing; remove it from the "
                f"mapping (default: {name}={default!r})"
            )
    return problems


def history_problems(src, personal: set) -> list[str]:
    """``data_prep.history`` must stay out of the stage-1 profile and hold no personal or label column.

    Examples:
        python -c "from data_prep.config import history_problems, SourceConfig; print(history_problems(SourceConfig(profile={'a': 'A'}, history={'a': 'A'}), set()))"
    """
    history = set(getattr(src, "history", None) or {})
    problems = []
    both = sorted(history & set(src.profile))
    if both:
        problems.append(
            f"data_prep.history and data_prep.profile both show {both}: the history belongs to the stage-2 turn "
            f"only, so stage 1 cannot see it; remove them from one of the two (data_prep.profile)"
        )
    shown = sorted(history & personal)
    if shown:
        problems.append(
            f"data_prep.history shows personal column(s) {shown}; remove them from data_prep.history"
        )
    labels = {src.columns.get(f) for f in ("attrition", "termination_date", "actual_tenure")} - {None, ""}
    stated = sorted(history & labels)
    if stated:
        problems.append(
            f"data_prep.history shows {stated}, the column(s) the labels come from: the answer would be in the "
            "prompt; remove them from data_prep.history"
        )
    return problems


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
    try:
        pii_salt(cfg)
    except ConfigError as e:
        problems.append(str(e))
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
        problems += unread_options(src, task.name, task.options)
    personal = set(src.pii_columns) | {src.columns.get(k) for k in ("employee_id", "name")} - {None, ""}
    leaked = sorted(set(src.profile) & personal)
    if leaked:
        problems.append(
            f"data_prep.profile shows personal column(s) {leaked}; remove them from data_prep.profile"
        )
    problems += history_problems(src, personal)
    problems += recode_problems(src)
    if task is not None:
        problems += task.check(src)
    if problems:
        raise ConfigError("data_prep config has problems:\n  - " + "\n  - ".join(problems))


def register() -> None:
    """Register the schema so ``conf/data_prep.yaml`` composes against it."""
    ConfigStore.instance().store(name="data_prep_schema", node=DataPrepConfig)


register()
