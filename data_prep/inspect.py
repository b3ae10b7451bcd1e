"""Look at an export before mapping it: how it reads, what each column holds, and a starter mapping YAML.

``python -m data_prep.inspect <file>`` reads a CSV, TSV, Excel (.xlsx) or Parquet file the way
``python -m data_prep`` does (`data_prep.table.read_table`: delimiter and encoding detected) and prints:

- how it was read (format, delimiter, encoding, sheet), the records and the rejected ones;
- per column: a type guess (number, date, text, constant), blanks and distinct values; for a date column
  the day/month order read from its values by the same function ``python -m data_prep`` uses
  (`data_prep.hr._parse_date_column`), or why the order cannot be told;
- candidate columns: id (a value in every row, unique per row), dates (hire, termination, promotion by
  name), label (2-10 distinct values, all in the attrition vocabulary of ``data_prep.true_values`` /
  ``false_values``, or one of two), tenure, title, department, region, performance; the label's
  distribution and duplicate ids;
- likely outcome leaks: columns that determine the candidate label (`label_leaks`, the rule the HR task
  refuses a prompt column by, measured here on the whole file);
- a starter mapping in the form of ``conf/data_prep/hr_generic.yaml``, written with ``--yaml``.

The leak rule lives here, once: a column leaks when its normalised mutual information with the label is at
least `LEAK_NMI` (``sklearn.metrics.normalized_mutual_info_score`` with ``average_method="min"``: the share
of the label's uncertainty the column removes; computed by `data_prep.fast.nmi_min` on integer codes, the same
float without importing scikit-learn). The default arithmetic mean would miss the typical leak, a
status with a few values per outcome: HRDataset v14's EmploymentStatus (Active / Voluntarily Terminated /
Terminated for Cause) scores 0.899 by the arithmetic mean and 1.0 by the minimum. So that a column with a
value per row does not "determine" the label by chance, numbers and ISO dates with more than `MAX_LEVELS`
distinct values are cut into `NUMERIC_BINS` quantile bins, and values seen in fewer than `RARE_ROWS` rows
are pooled into one level.

Use the YAML without editing the project: save it as ``<dir>/data_prep/<name>.yaml`` and run
``python -m data_prep --config-dir <dir> data_prep=<name> input=<file>`` (Hydra adds ``<dir>`` to its
config search path, so the group ``data_prep`` finds the file beside the shipped ones).

Examples:
    python -m data_prep.inspect ../shared/data/hr/HRDataset_v14.csv
    python -m data_prep.inspect export.csv --name my_export --yaml my_conf/data_prep/my_export.yaml
    python -m data_prep --config-dir my_conf data_prep=my_export input=export.csv
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from data_prep.config import ConfigError, SourceConfig
from data_prep.fast import nmi_min
from data_prep.hr import _parse_date_column
from data_prep.table import AUTO, InputError, read_table

LEAK_NMI = 0.9  # a column whose NMI with the label is at least this determines the label: refused
NUMERIC_BINS = 10  # quantile bins of a numeric or date column with more than MAX_LEVELS values
MAX_LEVELS = 10
RARE_ROWS = 10  # values seen in fewer rows are pooled into one level before the NMI
LABEL_LEVELS = (2, 10)  # a label candidate has this many distinct values (inclusive)
DATE_SHARE = 0.95  # a text column whose non-blank values parse as dates this often is a date column
_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DEFAULTS = SourceConfig()
TRUE_VALUES = tuple(_DEFAULTS.true_values)
FALSE_VALUES = tuple(_DEFAULTS.false_values)

# Name hints (lowercase, letters and digits only), in order of preference.
_HINTS = {
    "id": ("employeeid", "empid", "employeenumber", "staffid", "personid", "id", "number", "code", "key"),
    "name": ("name",),
    "hire_date": ("hire", "start", "join", "entry"),
    "termination_date": ("termination", "term", "leave", "exit", "separation", "end"),
    "promotion_date": ("promot",),
    "title": ("title", "position", "jobrole", "role", "job", "grade"),
    "department": ("department", "dept", "division", "unit", "team", "function"),
    "region": ("region", "location", "country", "state", "site", "office", "city"),
    "performance_rating": ("performance", "perf", "rating"),
    "actual_tenure": ("tenure", "yearsatcompany", "service", "seniority", "lengthofservice"),
    "attrition": ("attrition", "termd", "left", "leaver", "churn", "terminated", "quit", "status"),
}
# Never shown in a starter profile: personal data and protected attributes.
_PERSONAL = ("name", "email", "mail", "phone", "address", "zip", "postcode", "ssn", "birth", "dob", "manager")
_PROTECTED = (
    "age", "sex", "gender", "race", "ethnic", "hispanic", "marital", "married", "citizen", "religion",
    "disab", "veteran", "diversity", "nationality",
)  # fmt: skip


class LabelLeakError(ConfigError):
    """A prompt column that determines the label on the training split; the message names the override."""


def leak_levels(values: pd.Series) -> np.ndarray:
    """The level of each value the leak NMI is measured on (an int per row).

    Numbers and ``YYYY-MM-DD`` dates with more than `MAX_LEVELS` distinct values become `NUMERIC_BINS`
    quantile bins of at least `RARE_ROWS` rows (blanks a level of their own); other values seen in fewer than `RARE_ROWS` rows are
    pooled into one level.

    Examples:
        python -c "import pandas as pd; from data_prep.inspect import leak_levels; print(leak_levels(pd.Series(list('aab'))))"
    """
    s = values if isinstance(values.dtype, pd.CategoricalDtype) else values.astype(str).astype("category")
    cats = pd.Series(np.asarray(s.cat.categories, dtype=object)).astype(str).str.strip()
    codes = s.cat.codes.to_numpy()
    blank = (cats == "").to_numpy()
    number = pd.to_numeric(cats, errors="coerce").to_numpy(dtype=float)
    if not np.isfinite(number[~blank]).all() and cats[~blank].str.match(_ISO).all():
        number = (
            pd.to_datetime(cats, format="%Y-%m-%d", errors="coerce").to_numpy().astype("int64").astype(float)
        )
        number[blank] = np.nan
    used = np.bincount(codes[codes >= 0], minlength=len(cats)) > 0
    if np.isfinite(number[~blank]).all() and int((~blank & used).sum()) > MAX_LEVELS:
        per_row = np.where(codes >= 0, number[np.maximum(codes, 0)], np.nan)
        # At least RARE_ROWS rows a bin, as for text values: a handful of rows cannot leak by chance.
        k = min(NUMERIC_BINS, int(np.isfinite(per_row).sum()) // RARE_ROWS)
        if k < 2:
            return np.where(np.isfinite(per_row), 0, -1)
        bins = pd.qcut(per_row, k, labels=False, duplicates="drop")
        return np.where(np.isnan(bins), -1, bins).astype(np.int64)
    counts = np.bincount(codes[codes >= 0], minlength=len(cats))
    pooled = np.where(counts < RARE_ROWS, -2, np.arange(len(cats)))
    return np.where(codes >= 0, pooled[np.maximum(codes, 0)], -1)


def label_leaks(columns: Mapping[str, pd.Series], label, threshold: float = LEAK_NMI) -> dict[str, float]:
    """The columns whose values determine ``label`` (NMI at least ``threshold``), with their NMI, highest first.

    Args:
        columns: Values per row (strings or categoricals) by column name, aligned with ``label``.
        label: The label per row; with fewer than two distinct labels nothing can leak.
        threshold: The NMI from which a column counts as a leak.

    Examples:
        python -c "import pandas as pd; from data_prep.inspect import label_leaks; print(label_leaks({'s': pd.Series(['a', 'b'] * 20)}, ['x', 'y'] * 20))"
    """
    y = np.asarray(label)
    # Codes in order of first appearance, -1 for a missing label (a class of its own, as before the NMI).
    y, classes = pd.factorize(y if y.dtype.kind in "biuf" else y.astype(object))
    if len(classes) + int((y < 0).any()) < 2:
        return {}
    out = {}
    for name, values in columns.items():
        levels = leak_levels(values.reset_index(drop=True))
        score = nmi_min(y, levels)
        if score >= threshold:
            out[name] = round(score, 3)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def leak_message(leaks: dict[str, float], label: str, setting: str = "data_prep.allow_label_columns") -> str:
    """The refusal of prompt columns that determine ``label``, naming each NMI and the two fixes."""
    listed = ", ".join(f"{c!r} (NMI {v:.3f})" for c, v in leaks.items())
    return (
        f"prompt column(s) {listed} determine the label ({label}) on the training split (normalised mutual "
        f"information >= {LEAK_NMI}): the answer would be in the prompt. Remove them from data_prep.profile, or, "
        f"if that is intended, accept them with {setting}=[{','.join(leaks)}]"
    )


# ------------------------------------------------------------------------------------------------- inspect


@dataclass
class Column:
    name: str
    kind: str  # number, date, text or constant
    blanks: int
    distinct: int
    date_formats: list[str] = field(default_factory=list)
    date_problem: str = ""


@dataclass
class Report:
    path: str
    reading: dict
    records: int
    rejects: list
    columns: dict[str, Column]
    roles: dict[str, str]  # our field -> column ("" when none)
    label_values: tuple[list[str], list[str]]  # (true values, false values) of the label column
    label_counts: dict[str, int]
    duplicate_ids: dict[str, int]
    leaks: dict[str, float]
    tenure_unit: str
    tenure_unit_why: str
    profile: list[str]
    left_out: dict[str, str]  # column -> why it is not in the starter profile


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _hint(name: str, role: str) -> int:
    """Rank of ``name`` among the hints of ``role`` (lower is better), or -1 when none fits."""
    n = _norm(name)
    for i, h in enumerate(_HINTS[role]):
        if (h == "id" and (n == "id" or n.endswith("id"))) or (h != "id" and h in n):
            return i
    return -1


def _is_personal(name: str) -> bool:
    n = _norm(name)
    return any(h in n for h in _PERSONAL)


def _is_protected(name: str) -> bool:
    n = _norm(name)
    return any(n == h or n.startswith(h) or h in n for h in _PROTECTED if len(h) > 3) or n in _PROTECTED


def _describe(
    df: pd.DataFrame, line: np.ndarray, path: str
) -> tuple[dict[str, Column], dict[str, pd.Series]]:
    """Each column's summary, and the ISO text of every date column's values."""
    out, iso = {}, {}
    source = pd.Series(pd.Categorical([Path(path).name] * len(df)))
    for c in df.columns:
        v = df[c].astype(str).str.strip()
        nonblank = v[v != ""]
        distinct = int(nonblank.nunique())
        col = Column(c, "text", int((v == "").sum()), distinct)
        if distinct <= 1:
            col.kind = "constant"
        elif pd.to_numeric(nonblank, errors="coerce").notna().all():
            col.kind = "number"
        else:
            cat = v.astype("category")
            try:
                parsed, info = _parse_date_column(cat, c, None, source, line, _DEFAULTS.date_fail_share)
                col.date_formats = list(info["formats"])
            except InputError as e:
                parsed, col.date_problem = None, str(e)
            if parsed is not None:
                per_row = pd.Series(parsed[cat.cat.codes.to_numpy()])
                if per_row[(v != "").to_numpy()].notna().mean() >= DATE_SHARE:
                    col.kind = "date"
                    iso[c] = per_row.dt.strftime("%Y-%m-%d").fillna("")
            elif col.date_problem:
                col.kind = "date"
        out[c] = col
    return out, iso


def _label_values(values: pd.Series) -> tuple[list[str], list[str]] | None:
    """(true values, false values) of a label candidate, or None when its values are no attrition flag."""
    distinct = sorted(set(values[values != ""]))
    if not LABEL_LEVELS[0] <= len(distinct) <= LABEL_LEVELS[1]:
        return None
    t = [d for d in distinct if d.lower() in TRUE_VALUES]
    f = [d for d in distinct if d.lower() in FALSE_VALUES]
    rest = [d for d in distinct if d not in t and d not in f]
    if len(distinct) == 2 and len(rest) == 1 and (t or f):
        # One value of two is known: the other one means the opposite.
        return (t, rest) if t else (rest, f)
    if rest or not t or not f:
        return None
    return t, f


def inspect(
    path: str | Path,
    *,
    delimiter: str = AUTO,
    encoding: str = AUTO,
    sheet: str = "",
    max_field_chars: int = 100_000,
) -> Report:
    """Read ``path`` and guess how it maps onto the HR task.

    Raises:
        InputError: The file cannot be read at all (the message names the setting that fixes it).

    Examples:
        python -c "from data_prep.inspect import inspect; print(inspect('../shared/data/hr/HRDataset_v14.csv').roles)"
    """
    t = read_table(path, delimiter=delimiter, encoding=encoding, sheet=sheet, max_field_chars=max_field_chars)
    df = t.frame.astype(str).apply(lambda s: s.str.strip())
    n = len(df)
    columns, iso = _describe(df, t.line, str(path))
    roles: dict[str, str] = {}

    def best(role: str, ok) -> str:
        ranked = [
            (r, i, c) for i, c in enumerate(df.columns) if ok(columns[c]) and (r := _hint(c, role)) >= 0
        ]
        return min(ranked)[2] if ranked else ""

    unique = {c for c, col in columns.items() if col.blanks == 0 and col.distinct == n and n > 1}
    roles["employee_id"] = best("id", lambda col: col.name in unique and not _is_personal(col.name)) or next(
        (
            c
            for c in df.columns
            if c in unique and columns[c].kind in ("number", "text") and not _is_personal(c)
        ),
        "",
    )
    roles["name"] = best("name", lambda col: col.kind == "text" and col.name != roles["employee_id"])
    for f in ("hire_date", "termination_date", "promotion_date"):
        roles[f] = best(
            f,
            lambda col: col.kind == "date" and not col.date_problem and col.name not in roles.values(),
        )
    labels = {c: v for c in df.columns if (v := _label_values(df[c])) is not None}
    ranked = sorted(
        labels,
        key=lambda c: (_hint(c, "attrition") < 0, _hint(c, "attrition"), columns[c].kind == "number"),
    )
    roles["attrition"] = ranked[0] if ranked else ""
    for f in ("title", "department", "region"):
        roles[f] = best(
            f,
            lambda col: col.kind == "text" and col.name not in roles.values() and col.name not in unique,
        )
    taken = set(roles.values())
    roles["performance_rating"] = best(
        "performance_rating",
        lambda col: col.kind in ("text", "number") and col.name not in taken and col.distinct <= 10,
    )
    roles["actual_tenure"] = best("actual_tenure", lambda col: col.kind == "number")

    label_col = roles["attrition"]
    true_v, false_v = labels.get(label_col, ([], []))
    left = None
    if label_col:
        left = df[label_col].isin(true_v).to_numpy()
        readable = df[label_col].isin(true_v + false_v).to_numpy()
        label_counts = dict(df[label_col].value_counts().sort_index().items())
    elif roles["termination_date"]:
        left = (df[roles["termination_date"]] != "").to_numpy()
        readable = np.ones(n, dtype=bool)
        label_counts = {"termination date set": int(left.sum()), "blank": int((~left).sum())}
    else:
        label_counts = {}

    dup: dict[str, int] = {}
    if roles["employee_id"] == "" and n:
        id_like = best("id", lambda col: col.kind in ("number", "text") and not _is_personal(col.name))
        if id_like:
            roles["employee_id"] = id_like
    if roles["employee_id"]:
        counts = df[roles["employee_id"]][df[roles["employee_id"]] != ""].value_counts()
        dup = {str(k): int(v) for k, v in counts[counts > 1].items()}

    leaks: dict[str, float] = {}
    if left is not None:
        candidates = {
            c: (iso.get(c, df[c]))[readable].reset_index(drop=True)
            for c in df.columns
            if c not in (label_col, roles["employee_id"], roles["name"]) and columns[c].kind != "constant"
        }
        leaks = label_leaks(candidates, left[readable])

    unit, why = _tenure_unit(df, iso, roles)

    profile, left_out = [], {}
    mapped = {v for v in roles.values() if v}
    for c in df.columns:
        col = columns[c]
        why_not = (
            "mapped" if c in mapped
            else "likely leak" if c in leaks
            else "may encode the tenure" if col.kind == "number" and "year" in _norm(c) and roles["actual_tenure"]
            else "personal data" if _is_personal(c)
            else "protected attribute" if _is_protected(c)
            else "an id or code" if c in unique or _hint(c, "id") >= 0
            else "constant" if col.kind == "constant"
            else "a date (shown only as hire_date)" if col.kind == "date"
            else "free text (more than 20 values)" if col.kind == "text" and col.distinct > 20
            else ""
        )  # fmt: skip
        if why_not and why_not != "mapped":
            left_out[c] = why_not
        elif not why_not:
            profile.append(c)
    return Report(
        str(path), t.reading(), t.n_records, list(t.rejects), columns, roles, (true_v, false_v),
        {str(k): int(v) for k, v in label_counts.items()}, dup, leaks, unit, why, profile, left_out,
    )  # fmt: skip


def _tenure_unit(df: pd.DataFrame, iso: dict, roles: dict) -> tuple[str, str]:
    """The unit of the tenure column: from hire and termination dates where both exist, else from its name."""
    col = roles.get("actual_tenure")
    if not col:
        return "years", "no tenure column"
    name = _norm(col)
    by_name = "months" if "month" in name else "days" if "day" in name else "years"
    hire, term = roles.get("hire_date"), roles.get("termination_date")
    if hire and term and hire in iso and term in iso:
        h = pd.to_datetime(iso[hire], errors="coerce")
        e = pd.to_datetime(iso[term], errors="coerce")
        years = ((e - h).dt.days / 365.25).to_numpy(dtype=float)
        recorded = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float)
        ok = np.isfinite(years) & np.isfinite(recorded) & (years > 0.25)
        if ok.sum() >= 5:
            ratio = float(np.median(recorded[ok] / years[ok]))
            scales = {"years": 1.0, "months": 12.0, "days": 365.25}
            unit = min(scales, key=lambda u: abs(np.log(max(ratio, 1e-9) / scales[u])))
            return unit, f"median tenure / (termination - hire) = {ratio:.2f} over {int(ok.sum())} leavers"
    return by_name, "from the column name (no hire and termination dates to compare with)"


def starter_yaml(report: Report, name: str) -> str:
    """The starter mapping in the form of ``conf/data_prep/hr_generic.yaml``, for ``<dir>/data_prep/<name>.yaml``.

    Examples:
        python -c "from data_prep.inspect import inspect, starter_yaml; print(starter_yaml(inspect('../shared/data/hr/ibm_hr_attrition.csv'), 'ibm'))"
    """
    q = json.dumps
    r = report.roles
    true_v, false_v = report.label_values
    date_formats = {
        r[f]: report.columns[r[f]].date_formats[0]
        for f in ("hire_date", "termination_date", "promotion_date")
        if r.get(f) and len(report.columns[r[f]].date_formats) == 1
    }
    pii = [c for c in (r["employee_id"], r["name"]) if c] + [
        c
        for c, why in report.left_out.items()
        if why == "personal data" and c not in (r["employee_id"], r["name"])
    ]
    lines = [
        f"# python -m data_prep --config-dir <dir holding data_prep/{name}.yaml> data_prep={name} input={report.path}",
        f"# Starter mapping written by python -m data_prep.inspect {report.path}; check every line.",
        f"name: {q(name)}",
        "task: hr",
        "system_prompt: >-",
        "  You are an HR analytics expert. Predict employee tenure, promotion time, and attrition risk based on",
        "  employee profiles.",
        'columns:                       # our field: your column ("" when the export lacks it)',
    ]
    for f in (
        "employee_id", "name", "hire_date", "termination_date", "promotion_date", "title", "department",
        "region", "performance_rating", "actual_tenure", "attrition",
    ):  # fmt: skip
        lines.append(f"  {f}: {q(r.get(f, ''))}")
    lines.append("profile:                       # extra columns shown in the profile: {column: label}")
    lines += [f"  {q(c)}: {q(c)}" for c in report.profile] or ["  {}"]
    if not report.profile:
        lines[-2:] = ["profile: {}"]
    if report.left_out:
        lines.append(
            "# left out of the profile: " + "; ".join(f"{c} ({w})" for c, w in report.left_out.items())
        )
    tv = list(dict.fromkeys([*TRUE_VALUES, *(v.lower() for v in true_v)]))
    fv = list(dict.fromkeys([*FALSE_VALUES, *(v.lower() for v in false_v)]))
    lines += [
        f"true_values: {q(tv)}   # attrition values meaning the employee left (any case)",
        f"false_values: {q(fv)}",
        f"pii_columns: {q(pii)}          # may never appear in profile",
        f"date_formats: {q(date_formats)}   # inferred from the values; remove one to infer it again at each run",
        f"tenure_unit: {report.tenure_unit}             # {report.tenure_unit_why}",
        "cohort: [department, title]    # reasons compare with these training-split cohorts",
    ]
    return "\n".join(lines) + "\n"


def render(report: Report) -> str:
    """The report as the console shows it."""
    out = [f"file: {report.path}", "read as: " + ", ".join(f"{k} {v!r}" for k, v in report.reading.items())]
    out.append(
        f"records: {report.records} ({report.records - len(report.rejects)} rows, {len(report.rejects)} rejected)"
    )
    out += [f"  rejected line {r.line}: {r.reason}" for r in report.rejects[:3]]
    out.append("columns (type, blanks, distinct):")
    width = max((len(c) for c in report.columns), default=0)
    for c, col in report.columns.items():
        extra = ""
        if col.kind == "date":
            extra = (
                f"  order: {' or '.join(col.date_formats)}"
                if col.date_formats
                else f"  PROBLEM: {col.date_problem}"
            )
        out.append(f"  {c:<{width}}  {col.kind:<8} {col.blanks:>7} {col.distinct:>7}{extra}")
    out.append("candidates:")
    out += [f"  {f:<18} {c or '-'}" for f, c in report.roles.items()]
    out.append(
        f"label distribution ({report.roles['attrition'] or 'termination date'}): {report.label_counts}"
    )
    if report.roles["attrition"]:
        out.append(f"  left: {report.label_values[0]}, stayed: {report.label_values[1]}")
    shown = list(report.duplicate_ids.items())[:5]
    out.append(f"duplicate ids: {len(report.duplicate_ids)}" + (f" (e.g. {shown})" if shown else ""))
    out.append(
        "likely leaks (NMI with the label >= "
        f"{LEAK_NMI}, whole file): " + (", ".join(f"{c} {v:.3f}" for c, v in report.leaks.items()) or "none")
    )
    out.append(f"tenure_unit: {report.tenure_unit} ({report.tenure_unit_why})")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``python -m data_prep.inspect <file> [--yaml out.yaml] [--name <source name>]``."""
    p = argparse.ArgumentParser(prog="python -m data_prep.inspect", description=__doc__.split("\n\n")[0])
    p.add_argument("file", help="a CSV, TSV, .xlsx or Parquet export")
    p.add_argument("--name", default="", help="the mapping's name (default: from the file name)")
    p.add_argument(
        "--yaml", default="", help="also write the starter mapping here, e.g. my_conf/data_prep/<name>.yaml"
    )
    p.add_argument("--delimiter", default=AUTO, help="CSV separator (default: detected)")
    p.add_argument("--encoding", default=AUTO, help="CSV encoding (default: detected)")
    p.add_argument("--sheet", default="", help=".xlsx sheet (default: the first)")
    args = p.parse_args(argv)
    name = args.name or (
        Path(args.yaml).stem if args.yaml else re.sub(r"\W+", "_", Path(args.file).stem).lower()
    )
    try:
        report = inspect(args.file, delimiter=args.delimiter, encoding=args.encoding, sheet=args.sheet)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    text = starter_yaml(report, name)
    print(render(report))
    print(f"\nstarter mapping (save as <dir>/data_prep/{name}.yaml):\n")
    print(text)
    if args.yaml:
        Path(args.yaml).parent.mkdir(parents=True, exist_ok=True)
        Path(args.yaml).write_text(text, encoding="utf-8")
        print(f"wrote {args.yaml}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
