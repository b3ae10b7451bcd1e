"""HR exports (CSV or Parquet) -> one chat example per employee: tenure, promotion time, attrition risk.

Column names come from the mapping in ``conf/data_prep/hr_*.yaml``, so another export maps onto ours
without code. The user message is the profile (hire date, title, department, region, performance and
the mapping's extra ``profile`` columns; never names or ids); the assistant answers in the format of
`data_prep.answers` (``answer_format=prose|json``).

Labels (``ChatExample.label``), stated so an evaluator can score them honestly:

- ``tenure_years``: years at the company. With ``actual_tenure`` mapped, that column (in ``tenure_unit``:
  years, months or days); where it is blank, or without it, ``termination_date - hire_date``, or
  ``as_of - hire_date`` for an employee still employed. ``tenure_censored`` is true when the employee had
  not left: the value is then a lower bound, and the answer says "at least X years (still employed)"
  (JSON ``tenure_censored: true``), never an expected tenure. With both hire dates and ``actual_tenure``,
  the records with an exact end (a termination date, or a set ``as_of``) are compared: when fewer than
  ``tenure_min_agree_share`` (half) agree within ``tenure_tolerance_years`` + ``tenure_tolerance_share`` x the
  dates' tenure (0.5 years + 10%), the run is refused naming the ``tenure_unit`` that fits.
- ``promotion_years``: years from hire to the recorded ``promotion_date``
  (``promotion_censored=false``). Without a promotion date it is the observed window (hire to
  termination or ``as_of``; hire plus ``actual_tenure`` when that is mapped) and
  ``promotion_censored=true``: no promotion happened within that many years. ``None`` (censored) when the source records no promotion dates at all (IBM attrition,
  HRDataset v14). The answer then says ``not expected`` (JSON ``null``).
- ``attrition``: the mapped flag (``true_values`` / ``false_values``), or, without one, whether a
  termination date is set.

``as_of`` (the date censored tenures are measured to) defaults to the latest date found in the mapped
date columns and is written to the manifest.

Dates: ``date_formats`` maps a date column (or field) to its strptime format. A column not named there has
its order read from its values: ``Y-M-D`` is unambiguous; for ``A/B/Y`` (``/``, ``.`` or ``-``, 2- or
4-digit years) a value with ``A > 12`` settles day-first and ``B > 12`` month-first. A column holding both,
or whose values fit both with nothing to settle it, is refused naming ``data_prep.date_formats.<column>``
and an example line; so is a configured format that fails for more than ``date_fail_share`` (5%) of a
column's rows. The manifest's ``date_formats`` records the format(s) used per column and what chose them.

Duplicates (`data_prep.dataset.drop_duplicates`): a record is a duplicate only of one with the same
employee id (without an id, the same text in every source column) and the same example; distinct people
with identical profiles are all kept. All records of an id whose records differ are rejected, each naming
another. The manifest's ``label_counts`` gives the leaver/stayer counts of the input, the rejects and the
output ("unknown" where a record's label cannot be read), which add up.

The assistant's numbers are the labels; its reasons are statistics of the employee's cohort
(``cohort`` fields, falling back to fewer fields below ``min_cohort`` training employees) computed
on the training split only: Kaplan-Meier median tenure (censored employees counted as such), share
promoted and median time to promotion, and the attrition rate. ``attrition_probability`` is that
training attrition rate; ``attrition_risk`` is ``high`` for an employee who left, and for one who
stayed ``medium`` when the cohort rate is at least ``medium_risk_rate``, else ``low``. No reason is
written that the data does not support.

History (``data_prep.history``, ``{column: label}``): columns shown only in the stage-2 (personalised) turn,
never in the profile (`data_prep.stage2`). With a history, every employee gets a second line after the stage-1
one, in the same split: the same prompt, the population-level answer as the earlier assistant turn (the
cohort's Kaplan-Meier median tenure, or "at least" its longest when more than half stayed, its median time to
promotion, and its training attrition rate as the risk: high from 50%, medium from ``medium_risk_rate``), the
history turn, and the stage-1 answer again (the same labels) with the attrition reasons extended by the
training attrition rate of the employees sharing each history value ("Overtime Yes: 98 of 330 left in training
(30%)."; fewer than ``min_cohort``: said so). The manifest's ``history_rates`` holds those counts. The leak
guard covers the history columns too.

Records that cannot give an honest example are rejected with their line number: an empty required
field, a date in none of ``date_formats``, an attrition value in neither list, a termination or
promotion before hire, a leaver without a termination date when tenure comes from dates, a tenure of
more than ``max_tenure_years`` (60 by default: longer than a working life, so a unit or entry error).

Examples:
    python -m data_prep data_prep=hr_ibm_attrition input=../shared/data/hr/ibm_hr_attrition.csv
    python -m data_prep data_prep=hr_hrdataset_v14 input=../shared/data/hr/HRDataset_v14.csv answer_format=json
"""

from __future__ import annotations

import base64
import hashlib
import os
from json.encoder import encode_basestring
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from data_prep.config import pii_salt, recode_maps
from data_prep.dataset import (
    STAGE2_ANSWER,
    STAGE2_EARLIER,
    STAGE2_TURN,
    ExampleFrame,
    SourceRejects,
    input_files,
)
from data_prep.fast import Coded, Text, coded, hash_strings, narrow_codes
from data_prep.stage2 import HISTORY_HEADER, HISTORY_REQUEST, history_line
from data_prep.table import TABLE_SUFFIXES, InputError, Reject, read_table, reading_options

TASK = "hr"
STRATA = ("left", "stayed", "unknown")  # the label a record states; unknown: unreadable
# Divisor from the unit of ``actual_tenure`` (data_prep.tenure_unit) to years.
TENURE_UNITS = {"years": 1.0, "months": 12.0, "days": 365.25}
NOT_EXPECTED = "not expected"  # the answer when no promotion is expected (JSON null)
# A censored tenure (still employed) is a lower bound, never the expected tenure: prose
# "Expected Tenure: at least 3.1 years (still employed)", JSON "tenure_censored": true.
CENSORED_PREFIX, CENSORED_SUFFIX = "at least ", " (still employed)"
DAYS_PER_YEAR = 365.25
DATE_FIELDS = ("hire_date", "termination_date", "promotion_date")
TEXT_FIELDS = ("title", "department", "region", "performance_rating")
PROFILE_LABELS = {
    "hire_date": "Hire Date",
    "title": "Title",
    "department": "Department",
    "region": "Region",
    "performance_rating": "Performance",
}
QUESTION = "Predict: 1) Expected tenure at the company, 2) Time to next promotion, 3) Attrition risk"
# The one mapped field with a value per employee: kept as Arrow strings, never as categories.
ID_FIELD = "employee_id"


def build(cfg) -> tuple[ExampleFrame, list[SourceRejects], int, dict]:
    """Read the HR input(s) and turn every valid record into an example without its answer.

    Every other column is handled as categories (each distinct value stripped, parsed and checked once);
    the employee id stays one Arrow string per row and is hashed in bulk.

    Returns:
        The examples (answers come after splitting, from training statistics), the rejects per file,
        the number of records read, and manifest fields (``as_of``).

    Raises:
        InputError: The input is missing or lacks a mapped column.

    Examples:
        python -m data_prep data_prep=hr_generic input=employees.parquet
    """
    src = cfg.data_prep
    # Names are mapped only to be kept out: they are never read into the examples.
    cols = {k: v for k, v in src.columns.items() if v and k != "name"}
    tables, rejects, n_records = [], [], 0
    for path in input_paths(cfg):
        t = read_table(
            path,
            max_field_chars=cfg.max_field_chars,
            progress=cfg.progress,
            arrow=True,
            **reading_options(cfg),
        )
        n_records += t.n_records
        rejects.append(SourceRejects(Path(path).name, list(t.rejects), t.reading()))
        header = t.arrow.column_names
        missing = [c for c in list(cols.values()) + list(src.profile) + list(src.history) if c not in header]
        if missing:
            raise InputError(
                f"{path}: column(s) {missing} not in its header {header[:40]}; fix the mapping "
                f"(data_prep.columns.<field>=<column>, data_prep.profile) or choose another one (data_prep=hr_generic)"
            )
        tables.append((Path(path).name, t))
    n = sum(len(t.line) for _, t in tables)
    source = pd.Series(
        pd.Categorical.from_codes(
            np.repeat(np.arange(len(tables), dtype=np.int16), [len(t.line) for _, t in tables]),
            categories=pd.Index([name for name, _ in tables], dtype=object),
        )
    )
    line = np.concatenate([t.line for _, t in tables]) if tables else np.zeros(0, dtype=np.int64)
    # A recode names a field, or else a profile column.
    recode = recode_maps(src)
    df = {}  # field or "profile:<column>" -> categorical Series of stripped, recoded values
    for f, c in cols.items():
        if f != ID_FIELD:
            df[f] = _categories(_column(tables, c), recode.get(f))
    for c in src.profile:
        df["profile:" + c] = _categories(_column(tables, c), None if c in cols else recode.get(c))
    for c in src.history:
        df["history:" + c] = _categories(_column(tables, c), recode.get(c))
    raw_id = None
    if ID_FIELD in cols:
        raw_id = _strip_strings(_column(tables, cols[ID_FIELD]))
        if recode.get(ID_FIELD):
            raw_id = _recode_strings(raw_id, recode[ID_FIELD])

    reason = np.zeros(n, dtype=np.int32)  # 0: kept; else an index into messages
    messages: list[str | None] = [None]

    def reject(mask, message: str) -> None:
        mask = np.asarray(mask, dtype=bool) & (reason == 0)
        if mask.any():
            messages.append(message)
            reason[mask] = len(messages) - 1

    def reject_values(mask, values: pd.Series, template: str) -> None:
        """Reject with a message naming each row's value (formatted once per distinct value)."""
        mask = np.asarray(mask, dtype=bool) & (reason == 0)
        if mask.any():
            codes = values.cat.codes.to_numpy()
            used = np.unique(codes[mask])
            lookup = np.zeros(len(values.cat.categories), dtype=np.int32)
            lookup[used] = len(messages) + np.arange(len(used))
            messages.extend(template.format(values.cat.categories[c][:80]) for c in used)
            reason[mask] = lookup[codes[mask]]

    for f in ("title", "department"):
        reject(_is(df[f], ""), f"{f} is empty ({cols[f]})")
    dates, parsed, date_info = {}, {}, {}  # per row; per category; the format used per column
    for f in DATE_FIELDS:
        if f in df:
            fmt = src.date_formats.get(cols[f]) or src.date_formats.get(f) or None
            parsed[f], date_info[cols[f]] = _parse_date_column(
                df[f], cols[f], fmt, source, line, src.date_fail_share
            )
            dates[f] = pd.Series(parsed[f][df[f].cat.codes.to_numpy()])
            bad = ~_is(df[f], "") & dates[f].isna().to_numpy()
            setting = f"data_prep.date_formats.{cols[f]}={fmt or '<format>'}"
            reject_values(
                bad, df[f], f"{f} {{!r}} is not a date (read as {_formats(date_info[cols[f]])}; {setting})"
            )
    as_of = _as_of(src.as_of, dates, date_info)

    # The label each record states, before any check: "unknown" where it cannot be read. The manifest
    # reports these counts for the input, the rejects and the output (`data_prep.dataset.write_dataset`).
    if "attrition" in df:
        low = [v.lower() for v in df["attrition"].cat.categories]
        true_values = {v.lower() for v in src.true_values}
        false_values = {v.lower() for v in src.false_values}
        codes = df["attrition"].cat.codes.to_numpy()
        is_true = np.array([v in true_values for v in low], dtype=bool)[codes]
        is_false = np.array([v in false_values for v in low], dtype=bool)[codes]
        readable = is_true | is_false
        reject_values(
            ~readable,
            df["attrition"],
            "attrition {!r} is in neither data_prep.true_values nor false_values",
        )
        left = is_true
    else:
        left = dates["termination_date"].notna().to_numpy()
        readable = left | _is(df["termination_date"], "")
    stratum_all = np.where(readable, np.where(left, 0, 1), 2).astype(np.int8)  # left, stayed, unknown

    hire = dates.get("hire_date")
    term = dates.get("termination_date")
    end = None
    recorded = "actual_tenure" in df
    blank = _is(df["actual_tenure"], "") if recorded else np.ones(n, dtype=bool)
    if hire is not None:
        as_of_col = pd.Series(as_of, index=hire.index, dtype="datetime64[ns]")
        end = term.where(term.notna(), as_of_col) if term is not None else as_of_col
        reject(hire.isna().to_numpy() & blank, "hire_date is empty; tenure comes from dates")
        reject((hire > end).to_numpy(), "hire_date after the termination date or as_of")
        if term is not None:
            reject(left & term.isna().to_numpy() & blank, "left but termination_date is empty")
            reject(~left & term.notna().to_numpy(), "attrition says stayed but termination_date is set")
        from_dates = ((end - hire).dt.days / DAYS_PER_YEAR).to_numpy(dtype=float)
    else:
        from_dates = np.full(n, np.nan)
    unit_check = None
    if recorded:
        values = np.asarray(df["actual_tenure"].cat.categories, dtype=object)
        tenure_of = (
            np.asarray(pd.to_numeric(values, errors="coerce"), dtype=float) / TENURE_UNITS[src.tenure_unit]
        )
        tenure = tenure_of[df["actual_tenure"].cat.codes.to_numpy()]
        if hire is None:
            reject(blank, "actual_tenure is empty and no hire_date is mapped to compute it from")
        elif term is None:
            reject(blank & left, "left but actual_tenure is empty and no termination_date is mapped")
        reject_values(
            ~blank & (~(tenure >= 0) | ~np.isfinite(tenure)),
            df["actual_tenure"],
            f"actual_tenure {{!r}} is not a non-negative number of {src.tenure_unit}",
        )
        reject_values(
            tenure > src.max_tenure_years,
            df["actual_tenure"],
            f"actual_tenure {{!r}} is more years than data_prep.max_tenure_years ({src.max_tenure_years:g}); "
            "fix the record or raise the bound",
        )
        if hire is not None:
            # An exact end of employment: a termination date, or the as_of a user set.
            exact = (term.notna().to_numpy() if term is not None else np.zeros(n, dtype=bool)) | bool(
                src.as_of
            )
            unit_check = _check_tenure_unit(tenure, from_dates, exact & ~blank & (reason == 0), src)
            # Blank for someone still employed (or a leaver with a termination date): from the dates,
            # censored for the former (tenure_censored is ``not attrition``).
            tenure = np.where(blank, from_dates, tenure)
    else:
        tenure = from_dates
    reject(
        ~(tenure <= src.max_tenure_years) & np.isfinite(from_dates) & blank,
        f"hire_date gives a tenure of more than data_prep.max_tenure_years ({src.max_tenure_years:g}) "
        "years; fix the record, as_of or the bound",
    )

    promo_years = np.full(n, np.nan)
    promo_censored = np.ones(n, dtype=bool)
    if "promotion_date" in dates and hire is not None:
        if recorded:
            # The observed window ends where the recorded tenure does, not at as_of. A tenure that is
            # no date span (negative, infinite, past 2262) has no window; its record is kept or
            # rejected by its tenure alone.
            days = np.round(tenure * DAYS_PER_YEAR)
            usable = np.isfinite(days) & (days >= 0) & (days <= pd.Timedelta.max.days)
            # Whole days in nanoseconds, NaT where unusable: pd.to_timedelta(days, unit="D") without its
            # per-value float path (86,400e9 ns x at most 106,751 days stays within 64 bits).
            ns = np.where(usable, days, 0).astype(np.int64)
            ns *= 86_400 * 10**9
            ns[~usable] = np.iinfo(np.int64).min
            window = pd.Series(ns.view("m8[ns]"), index=hire.index)
            end = hire.where(hire <= pd.Timestamp.max - window) + window
        promo = dates["promotion_date"]
        reject((promo < hire).to_numpy(), "promotion_date before hire_date")
        reject(
            (promo > end).to_numpy(),
            "promotion_date after the end of employment (termination, tenure or as_of)",
        )
        has = promo.notna().to_numpy()
        promo_years = np.where(
            has, (promo - hire).dt.days / DAYS_PER_YEAR, (end - hire).dt.days / DAYS_PER_YEAR
        )
        promo_censored = ~has

    ok = reason == 0
    by_source = {sr.source: sr for sr in rejects}
    bad_rows = np.flatnonzero(~ok)
    for s, ln, why in zip(
        source.iloc[bad_rows].tolist(), line[bad_rows].tolist(), reason[bad_rows].tolist(), strict=True
    ):
        by_source[s].rejects.append(Reject(int(ln), messages[why]))

    rows = np.flatnonzero(ok)
    df = {k: v.iloc[rows].reset_index(drop=True) for k, v in df.items()}
    source, line = source.iloc[rows].reset_index(drop=True), line[rows]
    tenure, left = tenure[rows], left[rows]
    promo_years, promo_censored = promo_years[rows], promo_censored[rows]
    hire_shown = None  # the parsed hire date, ISO
    if "hire_date" in dates:
        hire_shown = Coded(df["hire_date"].cat.codes.to_numpy(), _iso(parsed["hire_date"]))

    user = _profiles(df, hire_shown, src)
    raw_id = (
        raw_id.take(pa.array(rows)) if raw_id is not None else pa.array([""] * len(rows), type=pa.string())
    )
    group = _groups(raw_id, source, line)
    frame = pd.DataFrame(
        {
            "id": pd.Series(pd.arrays.ArrowExtensionArray(_ids(group, source, line, cfg))),
            "source": source,
            "line": line,
            "group": pd.Series(pd.arrays.ArrowExtensionArray(group)),
            "entity": pd.Series(pd.arrays.ArrowExtensionArray(_entities(raw_id, group, tables, rows))),
            "stratum": pd.Categorical.from_codes(np.where(left, 0, 1).astype(np.int8), STRATA[:2]),
            # The history (stage-2 turn only): categoricals, written by `answers` once the split is known.
            **{"history:" + c: df["history:" + c] for c in src.history},
        }
    )
    label = {
        "tenure_years": pd.Series(np.round(tenure, 3)),
        "tenure_censored": pd.Series(~left),
        "promotion_years": pd.Series(np.round(promo_years, 3)),
        "promotion_censored": pd.Series(promo_censored),
        "attrition": pd.Series(left),
    }
    meta = {f: _or_none(df[f]) if f in df else _all_none(len(rows)) for f in TEXT_FIELDS}
    meta["source"] = source
    meta["source_line"] = pd.Series(line)
    meta = {
        k: meta[k] for k in ("department", "region", "title", "performance_rating", "source", "source_line")
    }
    extra = {"as_of": None if pd.isna(as_of) else as_of.strftime("%Y-%m-%d"), "date_formats": date_info}
    if unit_check is not None:
        extra["tenure_unit_check"] = unit_check
    out = ExampleFrame(frame, label, meta, {"user": user})
    # Records the reader rejected have no readable label.
    n_unread = n_records - n
    out.input_strata = _strata_counts(stratum_all, n_unread)
    out.rejected_strata = _strata_counts(stratum_all[~ok], n_unread)
    return out, rejects, n_records, extra


def input_paths(cfg) -> list[str]:
    """The CSV or Parquet files ``input=`` names (a file, a folder or a glob)."""
    return input_files(cfg.input, TABLE_SUFFIXES)


def system_prompt(ex: ExampleFrame, cfg) -> str:
    """The configured system prompt (``data_prep.system_prompt``), the same for every example."""
    return cfg.data_prep.system_prompt


def answers(ex: ExampleFrame, cfg) -> tuple[dict[str, Text], dict]:
    """Write every example's answer from its labels and its cohort's training-split statistics.

    Returns:
        The assistant text per example and the cohort statistics (for the manifest).

    Examples:
        python -m data_prep data_prep=hr_ibm_attrition input=../shared/data/hr/ibm_hr_attrition.csv answer_format=json
    """
    src = cfg.data_prep
    meta = ex.meta
    train = np.asarray(ex.frame["split"] == "train")
    tenure = ex.label["tenure_years"].to_numpy(dtype=float)
    left = ex.label["attrition"].to_numpy(dtype=bool)
    promo = ex.label["promotion_years"].to_numpy(dtype=float, na_value=np.nan)
    promo_event = ~ex.label["promotion_censored"].to_numpy(dtype=bool)
    has_promo_dates = bool(src.columns.get("promotion_date"))

    levels = [list(src.cohort[: len(src.cohort) - i]) for i in range(len(src.cohort) + 1)]
    names: list[str] = []  # cohort names; a row's cohort is an index into it
    index: dict[str, int] = {}
    chosen = np.full(len(tenure), -1, dtype=np.int64)
    stats: dict[str, dict] = {}
    # Training rows by tenure, once: each cohort's rows taken in this order arrive sorted for Kaplan-Meier.
    rows = np.flatnonzero(train)
    rows = rows[np.argsort(tenure[rows], kind="stable")]
    for fields in levels:
        key = _cohort_keys([meta[f] for f in fields], len(tenure), names, index)
        order = np.argsort(narrow_codes(key[rows], len(names)), kind="stable")  # radix sort for small ints
        bounds = np.flatnonzero(np.diff(key[rows][order])) + 1
        for i in np.split(order, bounds) if len(order) else []:
            m = rows[i]
            k = names[key[m[0]]]
            if k in stats or (len(m) < src.min_cohort and fields):
                continue
            stats[k] = _cohort_stats(tenure[m], left[m], promo[m], promo_event[m])
        has_stats = np.array([k in stats for k in names], dtype=bool)
        take = (chosen < 0) & has_stats[key]
        chosen[take] = key[take]
    if not stats:
        stats["all employees"] = _cohort_stats(tenure[:0], left[:0], promo[:0], promo_event[:0])
        chosen[chosen < 0] = _name_index("all employees", names, index)
    overall = stats.get("all employees") or _cohort_stats(
        tenure[train], left[train], promo[train], promo_event[train]
    )
    reasons = {k: _reasons(k, s, overall, has_promo_dates) for k, s in stats.items()}

    # Every row's chosen cohort has statistics; the categories are those cohorts alone.
    codes, used = pd.factorize(chosen)
    cohort = pd.Categorical.from_codes(codes, categories=pd.Index([names[u] for u in used], dtype=object))
    rate = np.array([stats[k]["attrition_rate"] for k in cohort.categories], dtype=float)[codes]
    prob = np.round(rate, 2)
    risk = pd.Categorical.from_codes(
        np.where(left, 2, np.where(rate >= src.medium_risk_rate, 1, 0)).astype(np.int8),
        ["low", "medium", "high"],
    )
    promo_answer = np.where(promo_event, promo, np.nan)
    censored = ex.label["tenure_censored"].to_numpy(dtype=bool)
    text = hr_answer_literals(tenure, promo_answer, risk, prob, cohort, reasons, cfg.answer_format, censored)
    columns = {"assistant": text}
    extra = {
        "cohorts": {
            k: {kk: v for kk, v in s.items() if kk != "attrition_rate"} for k, s in sorted(stats.items())
        }
    }
    if src.history:
        history = {c: ex.frame["history:" + c] for c in src.history}
        population = _population_answer(stats, cohort, src, reasons, cfg.answer_format)
        cited, rates = _history_reasons(history, left, train, src, cfg.answer_format)
        personal = hr_answer_literals(
            tenure, promo_answer, risk, prob, cohort, reasons, cfg.answer_format, censored, cited
        )
        columns.update(
            {STAGE2_TURN: _history_turns(history, src), STAGE2_EARLIER: population, STAGE2_ANSWER: personal}
        )
        extra["history_rates"] = rates
    return columns, extra


def _population_answer(stats: dict, cohort: pd.Categorical, src, reasons: dict, fmt: str) -> Text:
    """The stage-1 answer the profile alone supports (the earlier turn of the stage-2 conversation): the cohort's
    Kaplan-Meier median tenure (or "at least" its longest, when more than half stayed), its median time to
    promotion, and its training attrition rate as the risk (high from 50%, medium from ``medium_risk_rate``)."""
    codes = cohort.codes
    s = [stats[k] for k in cohort.categories]
    median = np.array([np.nan if x["median_tenure_years"] is None else x["median_tenure_years"] for x in s])
    longest = np.array([0.0 if x["max_tenure_years"] is None else x["max_tenure_years"] for x in s])
    at_least = np.isnan(median)
    tenure = np.where(at_least, longest, median)[codes]
    promo = np.array(
        [np.nan if x["median_promotion_years"] is None else x["median_promotion_years"] for x in s]
    )[codes]
    rate = np.array([x["attrition_rate"] for x in s], dtype=float)[codes]
    risk = pd.Categorical.from_codes(
        np.where(rate >= 0.5, 2, np.where(rate >= src.medium_risk_rate, 1, 0)).astype(np.int8),
        ["low", "medium", "high"],
    )
    return hr_answer_literals(tenure, promo, risk, np.round(rate, 2), cohort, reasons, fmt, at_least[codes])


def _history_turns(history: dict[str, pd.Series], src) -> Text:
    """The stage-2 user turn of every row as a JSON string literal (`data_prep.stage2.history_turn`)."""
    parts: list = ['"' + _esc(HISTORY_HEADER)]
    for c, values in history.items():
        texts = [_esc(history_line(src.history[c], v)) for v in values.cat.categories]
        parts.append(Coded(values.cat.codes.to_numpy(), _texts(texts)))
    parts.append(_esc(HISTORY_REQUEST) + '"')
    return Text(parts)


def _history_reasons(history: dict[str, pd.Series], left, train, src, fmt: str) -> tuple[list, dict]:
    """The attrition reasons stage 2 adds: for each history column, the training attrition rate of the people
    with the same value (`Overtime Yes: 98 of 330 left in training (30%).`; fewer than ``min_cohort``: said so).

    Returns:
        `Coded` pieces to append to the attrition reason (escaped for ``fmt``), and the rates for the manifest.
    """
    prose = fmt == "prose"
    pieces, rates = [], {}
    for c, values in history.items():
        codes = values.cat.codes.to_numpy()
        n_cats = len(values.cat.categories)
        n = np.bincount(codes[train], minlength=n_cats)
        k = np.bincount(codes[train], weights=left[train].astype(float), minlength=n_cats).astype(int)
        label = src.history[c]
        texts, rates[c] = [], {}
        for i, v in enumerate(values.cat.categories):
            if v == "":
                text = ""
            elif n[i] < src.min_cohort:
                text = f" {label} {v}: fewer than {src.min_cohort} in training."
            else:
                text = f" {label} {v}: {k[i]} of {n[i]} left in training ({round(100 * k[i] / n[i])}%)."
            rates[c][str(v)] = {"n": int(n[i]), "left": int(k[i])}
            texts.append(_esc(text if prose else encode_basestring(text)[1:-1]))
        pieces.append(Coded(codes, _texts(texts)))
    return pieces, rates


def hr_answer_literals(
    tenure, promo, risk, prob, cohort, reasons: dict, fmt: str, censored=None, attrition_extra=()
) -> Text:
    """`data_prep.answers.render_answer` for many HR answers at once, as JSON string literals.

    Each piece is formatted and escaped once per distinct value; the pieces are joined row-wise when
    the lines are written. ``json.loads`` of a literal equals ``render_answer("hr", answer, fmt)``.

    Args:
        tenure: Tenure in years per example.
        promo: Years to promotion, NaN for "not expected".
        risk: low/medium/high per example.
        prob: Attrition probability per example.
        cohort: Cohort name per example (a key of ``reasons``).
        reasons: ``{cohort: (tenure, promotion, attrition)}`` reason strings.
        fmt: ``prose`` or ``json``.
        censored: True where the tenure is a lower bound (still employed); None: none is.
        attrition_extra: `Coded` pieces appended to the attrition reason (already escaped for ``fmt``): the
            history rates of a stage-2 answer.

    Examples:
        python -c "from data_prep.hr import hr_answer_literals as f; print(f([3.14], [float('nan')], ['low'], [0.1], ['all'], {'all': ('a', 'b', 'c')}, 'prose').strings().to_pylist()[0])"
    """
    prose = fmt == "prose"

    def piece(values, render) -> Coded:
        return coded(values, lambda v: _esc(render(v)))

    def reason(i: int) -> Coded:
        return piece(cohort, lambda k: reasons[k][i] if prose else encode_basestring(reasons[k][i]))

    def years(v) -> str:
        return f"{v:.1f}" if prose else repr(round(float(v), 1))

    t = piece(np.round(np.asarray(tenure, dtype=float), 1), years)
    c = np.zeros(len(t.codes), dtype=bool) if censored is None else np.asarray(censored, dtype=bool)
    p = piece(
        np.round(np.asarray(promo, dtype=float), 1),
        lambda v: (NOT_EXPECTED if prose else "null")
        if v is None
        else (f"{years(v)} years" if prose else years(v)),
    )
    r = piece(risk, lambda v: v.capitalize() if prose else f'"{v}"')
    q = piece(
        np.round(np.asarray(prob, dtype=float), 2),
        lambda v: f"{round(v * 100):d}%" if prose else repr(round(float(v), 2)),
    )
    if prose:
        parts = [
            "1. Expected Tenure: ",
            piece(c, lambda v: CENSORED_PREFIX if v else ""),
            t,
            " years",
            piece(c, lambda v: CENSORED_SUFFIX if v else ""),
            "\n   Reasoning: ",
            reason(0),
            "\n\n2. Time to Next Promotion: ",
            p,
            "\n   Reasoning: ",
            reason(1),
            "\n\n3. Attrition Risk: ",
            r,
            " (",
            q,
            ")\n   Reasoning: ",
            reason(2),
            *attrition_extra,
        ]
    else:
        parts = [
            '{"tenure_years": ',
            t,
            ', "tenure_censored": ',
            piece(c, lambda v: "true" if v else "false"),
            ', "time_to_promotion_years": ',
            p,
            ', "attrition_risk": ',
            r,
            ', "attrition_probability": ',
            q,
            ', "reasons": {"tenure": ',
            reason(0),
            ', "promotion": ',
            reason(1),
            ', "attrition": ',
            piece(cohort, lambda k: encode_basestring(reasons[k][2])[:-1]),
            *attrition_extra,
            '"}}',
        ]
    return Text(['"', *(_esc(x) if isinstance(x, str) else x for x in parts), '"'])


# A numeric date: D/M/Y or M/D/Y (2- or 4-digit year), or Y-M-D; one separator of - / . throughout.
_DATE = r"^(\d{1,4})([-/.])(\d{1,2})\2(\d{1,4})$"


def _parse_date_column(
    values: pd.Series,
    column: str,
    fmt: str | None,
    source: pd.Series,
    line: np.ndarray,
    fail_share: float,
):
    """Parse one date column (categorical) once per distinct value; return (datetime64 per category, info).

    With ``fmt`` (``data_prep.date_formats.<column>``) every value is read with it; more than ``fail_share``
    (``data_prep.date_fail_share``) of the non-empty rows failing is refused.
    Without, the order is read from the values: ``Y-M-D`` is unambiguous, and for ``A/B/Y`` a value with
    ``A > 12`` settles day-first, ``B > 12`` month-first. Both orders in one column, or values that fit both
    with nothing to settle it, are refused with the setting that fixes it and an example line. Values in
    neither form are left NaT (rejected).
    """
    cats = pd.Series(np.asarray(values.cat.categories, dtype=object), dtype=object)
    rows = np.bincount(values.cat.codes.to_numpy(), minlength=len(cats))
    nonempty = (cats != "").to_numpy()

    def example(mask) -> str:
        c = int(np.flatnonzero(mask)[0])
        r = int(np.argmax(values.cat.codes.to_numpy() == c))
        return f"{source.iloc[r]} line {int(line[r])}: {cats[c]!r}"

    if fmt:
        parsed = pd.to_datetime(cats, format=fmt, errors="coerce").to_numpy()
        fail = nonempty & pd.isna(parsed)
        if rows[fail].sum() > fail_share * max(rows[nonempty].sum(), 1):
            raise InputError(
                f"{column}: {rows[fail].sum()} of {rows[nonempty].sum()} dates do not fit "
                f"data_prep.date_formats.{column}={fmt} (e.g. {example(fail)}), more than "
                f"data_prep.date_fail_share={fail_share:g} allows; set the format the column uses, "
                f"data_prep.date_formats.{column}='' to infer it from the values, or raise data_prep.date_fail_share "
                "to reject the rows that do not fit one by one"
            )
        return parsed, {"formats": [fmt], "set_by": f"data_prep.date_formats.{column}"}
    m = cats.str.extract(_DATE)
    a, sep, b, y = m[0].fillna(""), m[1].fillna(""), m[2].fillna(""), m[3].fillna("")
    an, bn, yn = (pd.to_numeric(x, errors="coerce").to_numpy() for x in (a, b, y))
    ymd = (a.str.len() == 4).to_numpy() & (y.str.len() <= 2).to_numpy()
    xy = (a.str.len() <= 2).to_numpy() & y.str.len().isin([2, 4]).to_numpy()
    day_first, month_first = xy & (an > 12) & (bn <= 12), xy & (bn > 12) & (an <= 12)
    fix = f"set data_prep.date_formats.{column}=%d/%m/%Y (day first) or %m/%d/%Y (month first)"
    if day_first.any() and month_first.any():
        raise InputError(
            f"{column} holds dates in both orders: day first at {example(day_first)}, month first at "
            f"{example(month_first)}; {fix}, and fix the rows that do not fit"
        )
    ambiguous = xy & (an <= 12) & (bn <= 12) & (an != bn)
    if ambiguous.any() and not (day_first.any() or month_first.any()):
        raise InputError(
            f"{column}: the order of day and month cannot be told from the values (no day above 12; "
            f"e.g. {example(ambiguous)}); {fix}"
        )
    dmy = day_first.any()
    year = np.where(ymd, an, np.where(yn < 100, np.where(yn < 69, 2000 + yn, 1900 + yn), yn))
    month = np.where(ymd, bn, np.where(dmy, bn, an))
    day = np.where(ymd, yn, np.where(dmy, an, bn))
    ok = ymd | xy
    parts = pd.DataFrame({"year": np.where(ok, year, 2000), "month": np.where(ok, month, 1)})
    parts["day"] = np.where(ok, day, 1)
    parsed = pd.to_datetime(parts, errors="coerce").to_numpy() if len(cats) else np.zeros(0, "datetime64[ns]")
    parsed[~ok] = np.datetime64("NaT")
    used = sorted(
        {
            (
                f"%Y{s}%m{s}%d"
                if is_ymd
                else (f"%d{s}%m{s}" if dmy else f"%m{s}%d{s}") + ("%Y" if w == 4 else "%y")
            )
            for s, w, is_ymd in zip(sep[ok], y[ok].str.len(), ymd[ok], strict=True)
        }
    )
    return parsed, {"formats": used, "set_by": "inferred from the values"}


def _formats(info: dict) -> str:
    return " or ".join(info["formats"]) or "no date format"


def _as_of(text: str, dates: dict, info: dict):
    if text:
        formats = ["%Y-%m-%d", *dict.fromkeys(f for i in info.values() for f in i["formats"])]
        for fmt in formats:
            parsed = pd.to_datetime(text, format=fmt, errors="coerce")
            if not pd.isna(parsed):
                return parsed
        raise InputError(
            f"data_prep.as_of={text!r} is not a date; use YYYY-MM-DD (data_prep.as_of=2020-12-31)"
        )
    latest = [d.max() for d in dates.values() if d.notna().any()]
    return max(latest) if latest else pd.NaT


def _check_tenure_unit(recorded: np.ndarray, from_dates: np.ndarray, rows: np.ndarray, src) -> dict:
    """Compare the recorded tenure (in years, after ``tenure_unit``) with the dates where the end is exact.

    Raises:
        InputError: Fewer than ``tenure_min_agree_share`` of those records agree within the tolerance; names the
            unit that fits.
    """
    r, d = recorded[rows], from_dates[rows]
    keep = np.isfinite(r) & np.isfinite(d)
    r, d = r[keep], d[keep]
    if not len(r):
        return {"unit": src.tenure_unit, "compared": 0}

    years, per_year, need = src.tenure_tolerance_years, src.tenure_tolerance_share, src.tenure_min_agree_share

    def agree(scale: float) -> float:
        return float(np.mean(np.abs(r * scale - d) <= years + per_year * d))

    share = agree(1.0)
    if share < need:
        fits = {u: agree(TENURE_UNITS[src.tenure_unit] / k) for u, k in TENURE_UNITS.items()}
        best = max(fits, key=fits.get)
        hint = f"data_prep.tenure_unit={best} fits {fits[best]:.0%}" if fits[best] >= need else "no unit fits"
        raise InputError(
            f"actual_tenure read in {src.tenure_unit} (data_prep.tenure_unit={src.tenure_unit}) agrees with "
            f"hire and termination dates in {share:.0%} of {len(r)} records with an exact end, fewer than "
            f"data_prep.tenure_min_agree_share={need:g} (agreeing: within data_prep.tenure_tolerance_years="
            f"{years:g} + data_prep.tenure_tolerance_share={per_year:g} x the dates' tenure); {hint}. "
            "Set data_prep.tenure_unit, or check the mapping of actual_tenure and the dates"
        )
    return {"unit": src.tenure_unit, "compared": len(r), "agree_share": round(share, 4)}


def _entities(raw_id: pa.Array, group: pa.Array, tables: list, rows: np.ndarray) -> pa.Array:
    """The key records are duplicates under: the employee id, or ``row:<n>`` for one without an id, with
    ``n`` equal exactly for records equal in every source column (`data_prep.dataset.drop_duplicates`)."""
    no_id = np.flatnonzero(pc.binary_length(raw_id).to_numpy(zero_copy_only=False) == 0)
    if not len(no_id):
        return group
    codes = _whole_rows(tables, rows[no_id])
    mask = np.zeros(len(group), dtype=bool)
    mask[no_id] = True
    keys = pa.array([f"row:{c}" for c in codes.tolist()], type=group.type)
    return pc.replace_with_mask(group, pa.array(mask), keys)


def _whole_rows(tables: list, rows: np.ndarray) -> np.ndarray:
    """A code per record (``rows`` numbered over all ``tables``), equal for records with the same header
    and the same text in every column."""
    starts = np.cumsum([0] + [len(t.line) for _, t in tables])
    table_of = np.searchsorted(starts, rows, side="right") - 1
    by_header: dict[tuple, list[int]] = {}
    for i, (_, t) in enumerate(tables):
        by_header.setdefault(tuple(t.arrow.column_names), []).append(i)
    out = np.zeros(len(rows), dtype=np.int64)
    offset = 0
    for header, members in by_header.items():
        sel = np.flatnonzero(np.isin(table_of, members))
        if not len(sel):
            continue
        # Row numbers within the concatenation of this header's tables.
        sizes = np.array([len(tables[i][1].line) for i in members])
        local_start = dict(zip(members, np.cumsum(np.concatenate([[0], sizes[:-1]])).tolist(), strict=True))
        local = rows[sel] - starts[table_of[sel]] + np.array([local_start[i] for i in table_of[sel]])
        combined = np.zeros(len(sel), dtype=np.int64)
        for c in header:
            col = _column([tables[i] for i in members], c).take(pa.array(local))
            codes = pc.fill_null(col, "").dictionary_encode().indices.to_numpy(zero_copy_only=False)
            combined, _ = pd.factorize(combined * (int(codes.max()) + 1) + codes)
        out[sel] = combined + offset
        offset += int(combined.max()) + 1
    return out


def _strata_counts(stratum: np.ndarray, unreadable: int) -> dict[str, int]:
    counts = np.bincount(stratum, minlength=len(STRATA)) + np.array([0, 0, unreadable])
    return {k: int(v) for k, v in zip(STRATA, counts, strict=True) if v}


def _column(tables: list, column: str) -> pa.Array:
    """One column of every input, one after the other, as Arrow strings."""
    chunks = [chunk for _, t in tables for chunk in t.arrow.column(column).chunks]
    if not chunks:
        return pa.array([], type=pa.string())
    return chunks[0] if len(chunks) == 1 else pa.concat_arrays(chunks)


def _categories(values: pa.Array, recode: dict | None) -> pd.Series:
    """Stripped (and recoded) values as a categorical Series: each distinct raw value handled once."""
    encoded = values.dictionary_encode()
    texts = ["" if v is None else v.strip() for v in encoded.dictionary.to_pylist()]
    if recode:
        texts = [recode.get(v, v) for v in texts]
    remap, uniques = pd.factorize(np.asarray(texts, dtype=object))
    codes = remap[encoded.indices.to_numpy()] if len(texts) else np.zeros(len(values), dtype=np.int64)
    return pd.Series(
        pd.Categorical.from_codes(codes.astype(np.int32), categories=pd.Index(uniques, dtype=object))
    )


def _is(values: pd.Series, text: str) -> np.ndarray:
    """Rows of a categorical Series equal to ``text``."""
    cats = values.cat.categories
    hit = np.array([c == text for c in cats], dtype=bool)
    return hit[values.cat.codes.to_numpy()] if len(cats) else np.zeros(len(values), dtype=bool)


# First bytes of the UTF-8 characters ``str.strip`` removes (ASCII whitespace and separators, U+0085,
# U+00A0, U+1680, U+2000-U+205F, U+3000), and last bytes (those, or the end of any non-ASCII character).
_WS_FIRST = np.zeros(256, dtype=bool)
_WS_FIRST[[9, 10, 11, 12, 13, 28, 29, 30, 31, 32, 0xC2, 0xE1, 0xE2, 0xE3]] = True
_WS_LAST = np.zeros(256, dtype=bool)
_WS_LAST[[9, 10, 11, 12, 13, 28, 29, 30, 31, 32]] = True
_WS_LAST[0x80:] = True


def _strip_strings(values: pa.Array) -> pa.Array:
    """``str.strip`` of every value, in Python only for the few that start or end with a candidate byte."""
    values = pc.fill_null(values, "").cast(pa.large_string())
    n = len(values)
    offsets = np.frombuffer(values.buffers()[1], dtype=np.int64, count=n + 1, offset=values.offset * 8)
    data = values.buffers()[2]
    raw = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, dtype=np.uint8)
    nonempty = np.flatnonzero(offsets[1:] > offsets[:-1])
    cand = nonempty[_WS_FIRST[raw[offsets[nonempty]]] | _WS_LAST[raw[offsets[nonempty + 1] - 1]]]
    if len(cand):
        mask = np.zeros(n, dtype=bool)
        mask[cand] = True
        stripped = pa.array([v.strip() for v in values.take(pa.array(cand)).to_pylist()], pa.large_string())
        values = pc.replace_with_mask(values, pa.array(mask), stripped)
    return values


def _recode_strings(values: pa.Array, mapping: dict) -> pa.Array:
    keys = pa.array(list(mapping), type=values.type)
    at = pc.index_in(values, value_set=keys)
    replaced = pa.array(list(mapping.values()), type=values.type).take(at)
    return pc.if_else(at.is_valid(), replaced, values)


def _or_none(s: pd.Series) -> pd.Series:
    """Empty values as None (null in the meta), the others unchanged."""
    codes = s.cat.codes.to_numpy()
    return pd.Series(pd.Categorical.from_codes(np.where(_is(s, ""), -1, codes), categories=s.cat.categories))


def _all_none(n: int) -> pd.Series:
    return pd.Series(
        pd.Categorical.from_codes(np.full(n, -1, dtype=np.int8), categories=pd.Index([], dtype=object))
    )


def _iso(parsed: np.ndarray) -> pa.Array:
    """YYYY-MM-DD of each parsed date, "" for NaT."""
    text = pd.DatetimeIndex(parsed).strftime("%Y-%m-%d")
    return pa.array(["" if pd.isna(v) else v for v in text], type=pa.string())


def _profiles(df: dict, hire_shown: Coded | None, src) -> Text:
    """The user message of every row as a JSON string literal, in pieces: one `Coded` per shown field."""
    parts: list = ['"' + _esc("Employee Profile:\n")]
    labels = {**PROFILE_LABELS, **{c: lab for c, lab in src.profile.items()}}
    if hire_shown is not None:
        texts = [_line(labels["hire_date"], v) for v in hire_shown.texts.to_pylist()]
        parts.append(Coded(hire_shown.codes, _texts(texts)))
    shown = [(f, df[f]) for f in TEXT_FIELDS if f in df] + [(c, df["profile:" + c]) for c in src.profile]
    for f, values in shown:
        texts = [_line(labels[f], v) for v in values.cat.categories]
        parts.append(Coded(values.cat.codes.to_numpy(), _texts(texts)))
    parts.append(_esc("\n" + QUESTION) + '"')
    return Text(parts)


def _texts(texts: list[str]) -> pa.Array:
    return pa.array(texts, type=pa.large_string())


def _line(label: str, value) -> str:
    return _esc(f"- {label}: {value}\n") if value else ""


def _esc(text: str) -> str:
    return encode_basestring(text)[1:-1]


def _groups(raw_id: pa.Array, source: pd.Series, line: np.ndarray) -> pa.Array:
    """The employee id, or ``line:<source>:<line>`` for a record without one."""
    no_id = np.flatnonzero(pc.binary_length(raw_id).to_numpy(zero_copy_only=False) == 0)
    if not len(no_id):
        return raw_id
    names = pa.array(source.cat.categories.tolist(), type=pa.string())
    keys = Text(
        [
            "line:",
            Coded(source.cat.codes.to_numpy()[no_id], names),
            ":",
            pc.cast(pa.array(line[no_id]), pa.string()),
        ]
    ).strings()
    mask = np.zeros(len(raw_id), dtype=bool)
    mask[no_id] = True
    return pc.replace_with_mask(raw_id.cast(keys.type), pa.array(mask), keys)


def _ids(group: pa.Array, source: pd.Series, line: np.ndarray, cfg) -> pa.Array:
    if cfg.pii.mode == "drop":
        stems = pa.array([Path(s).stem for s in source.cat.categories], type=pa.string())
        ids = Text(
            ["hr-", Coded(source.cat.codes.to_numpy(), stems), "-", pc.cast(pa.array(line), pa.string())]
        ).strings()
        key = ids.dictionary_encode().indices.to_numpy()
    else:
        # SipHash keyed by the salt (pandas' hash_array): a keyed hash, cheap for a million ids.
        salt = pii_salt(cfg) or os.urandom(16).hex()
        hash_key = base64.b64encode(hashlib.sha256(salt.encode()).digest()).decode()[:16]
        h = hash_strings(group, hash_key)
        ids, key = _hex_ids("hr-", h), h
    if not pd.Series(key).duplicated().any():
        return ids
    # An employee with several records keeps one id per record: -2, -3, ... after the first.
    codes, _ = pd.factorize(key)
    n = pd.Series(codes).groupby(codes).cumcount().to_numpy()
    again = np.flatnonzero(n > 0)
    suffixed = [
        f"{i}-{k + 1}" for i, k in zip(ids.take(pa.array(again)).to_pylist(), n[again].tolist(), strict=True)
    ]
    return pc.replace_with_mask(ids, pa.array(n > 0), pa.array(suffixed, type=ids.type))


# The two hex digits of each byte value, as the 2 bytes of one uint16 (in memory order).
_HEX = np.frombuffer("".join(f"{i:02x}" for i in range(256)).encode(), dtype=np.uint16)


def _hex_ids(prefix: str, h: np.ndarray) -> pa.Array:
    """``prefix`` + 16 hex digits of each hash (big-endian), built as one fixed-width buffer."""
    n, head = len(h), np.frombuffer(prefix.encode(), dtype=np.uint8)
    width = len(head) + 16
    out = np.empty((n, width), dtype=np.uint8)
    out[:, : len(head)] = head
    out[:, len(head) :] = _HEX[h.astype(">u8").view(np.uint8)].view(np.uint8).reshape(n, 16)
    offsets = np.arange(0, (n + 1) * width, width, dtype=np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(out))


def _cohort_keys(columns: list[pd.Series], n: int, names: list[str], index: dict[str, int]) -> np.ndarray:
    """Each row's cohort name as an index into ``names`` (which grows by the names not seen before).

    The name joins the row's values with `` / `` ("unknown" for a missing one), or is "all employees"
    without fields; it is spelt once per distinct combination of values.
    """
    combined = np.zeros(n, dtype=np.int64)
    parts: list[list[str]] = [[]]
    for col in columns:
        cats = [str(c) for c in col.cat.categories] + ["unknown"]
        codes = col.cat.codes.to_numpy().astype(np.int64)
        codes = np.where(codes < 0, len(cats) - 1, codes)
        combined, pairs = pd.factorize(combined * len(cats) + codes)
        parts = [parts[int(p) // len(cats)] + [cats[int(p) % len(cats)]] for p in pairs]
    if not columns:
        return np.full(n, _name_index("all employees", names, index), dtype=np.int64)
    lookup = np.array([_name_index(" / ".join(p), names, index) for p in parts], dtype=np.int64)
    return lookup[combined] if n else np.zeros(0, dtype=np.int64)


def _name_index(name: str, names: list[str], index: dict[str, int]) -> int:
    if name not in index:
        index[name] = len(names)
        names.append(name)
    return index[name]


def _km_median(t: np.ndarray, event: np.ndarray) -> float | None:
    """Kaplan-Meier median: the first time the estimated share still employed drops to half or below."""
    if len(t) == 0:
        return None
    order = np.argsort(t, kind="stable")
    t, event = t[order], event[order].astype(float)
    # The first row of each distinct time (t is sorted; NaNs, last, count as one time).
    new = (t[1:] != t[:-1]) & ~(np.isnan(t[1:]) & np.isnan(t[:-1]))
    first = np.flatnonzero(np.concatenate([[True], new]))
    times = t[first]
    at_risk = len(t) - first
    events = np.add.reduceat(event, first)
    surv = np.cumprod(1.0 - events / at_risk)
    below = np.flatnonzero(surv <= 0.5)
    return float(times[below[0]]) if below.size else None


def _cohort_stats(tenure, left, promo, promo_event) -> dict:
    n = len(tenure)
    median = _km_median(tenure, left)
    return {
        "n": n,
        "left": int(left.sum()),
        "attrition_rate": float(left.mean()) if n else 0.0,
        "median_tenure_years": None if median is None else round(median, 2),
        "max_tenure_years": round(float(tenure.max()), 2) if n else None,
        "promoted": int(promo_event.sum()),
        "median_promotion_years": round(float(np.median(promo[promo_event])), 2)
        if promo_event.any()
        else None,
    }


def _reasons(name: str, s: dict, overall: dict, has_promo_dates: bool) -> tuple[str, str, str]:
    who = f"Employees in {name} (n={s['n']} in training)"
    still = s["n"] - s["left"]
    if s["median_tenure_years"] is not None:
        tenure = (
            f"{who}: median tenure {s['median_tenure_years']:.1f} years "
            f"(Kaplan-Meier, {still} still employed counted as censored)."
        )
    elif s["n"]:
        tenure = f"{who}: more than half were still employed after {s['max_tenure_years']:.1f} years."
    else:
        tenure = "No training employees to compare with."
    if not has_promo_dates:
        promotion = "The records include no promotion dates, so no promotion time can be estimated."
    elif s["promoted"]:
        share = round(100 * s["promoted"] / s["n"])
        promotion = f"{who}: {share}% promoted, median {s['median_promotion_years']:.1f} years after hire."
    else:
        promotion = f"{who}: none had a recorded promotion."
    rate = round(100 * s["attrition_rate"])
    attrition = f"{who}: {s['left']} left ({rate}%)"
    if name != "all employees":
        attrition += f"; all employees: {round(100 * overall['attrition_rate'])}%"
    return tenure, promotion, attrition + "."
