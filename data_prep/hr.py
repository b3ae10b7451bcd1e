"""HR exports (CSV or Parquet) -> one chat example per employee: tenure, promotion time, attrition risk.

Column names come from the mapping in ``conf/data_prep/hr_*.yaml``, so another export maps onto ours
without code. The user message is the profile (hire date, title, department, region, performance and
the mapping's extra ``profile`` columns; never names or ids); the assistant answers in the format of
`data_prep.answers` (``answer_format=prose|json``).

Labels (``ChatExample.label``), stated so an evaluator can score them honestly:

- ``tenure_years``: years at the company. With ``actual_tenure`` mapped, that column (years); otherwise
  ``termination_date - hire_date``, or ``as_of - hire_date`` for an employee still employed.
  ``tenure_censored`` is true when the employee had not left: the value is then a lower bound.
- ``promotion_years``: years from hire to the recorded ``promotion_date``
  (``promotion_censored=false``). Without a promotion date it is the observed window (hire to
  termination or ``as_of``; hire plus ``actual_tenure`` when that is mapped) and
  ``promotion_censored=true``: no promotion happened within that many years. ``None`` (censored) when the source records no promotion dates at all (IBM attrition,
  HRDataset v14). The answer then says ``not expected`` (JSON ``null``).
- ``attrition``: the mapped flag (``true_values`` / ``false_values``), or, without one, whether a
  termination date is set.

``as_of`` (the date censored tenures are measured to) defaults to the latest date found in the mapped
date columns and is written to the manifest.

The assistant's numbers are the labels; its reasons are statistics of the employee's cohort
(``cohort`` fields, falling back to fewer fields below ``min_cohort`` training employees) computed
on the training split only: Kaplan-Meier median tenure (censored employees counted as such), share
promoted and median time to promotion, and the attrition rate. ``attrition_probability`` is that
training attrition rate; ``attrition_risk`` is ``high`` for an employee who left, and for one who
stayed ``medium`` when the cohort rate is at least ``medium_risk_rate``, else ``low``. No reason is
written that the data does not support.

Records that cannot give an honest example are rejected with their line number: an empty required
field, a date in none of ``date_formats``, an attrition value in neither list, a termination or
promotion before hire, a leaver without a termination date when tenure comes from dates.

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

from data_prep.answers import NOT_EXPECTED
from data_prep.dataset import ExampleFrame, SourceRejects, concat, input_files, per_unique
from data_prep.table import CSV_SUFFIXES, PARQUET_SUFFIXES, InputError, Reject, read_table

TASK = "hr"
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


def build(cfg) -> tuple[ExampleFrame, list[SourceRejects], int, dict]:
    """Read the HR input(s) and turn every valid record into an example without its answer.

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
    parts, rejects, n_records = [], [], 0
    for path in input_paths(cfg):
        t = read_table(path, max_field_chars=cfg.max_field_chars, progress=cfg.progress)
        n_records += t.n_records
        rejects.append(SourceRejects(Path(path).name, list(t.rejects)))
        needed = list(cols.values()) + list(src.profile)
        missing = [c for c in needed if c not in t.frame.columns]
        if missing:
            raise InputError(
                f"{path}: column(s) {missing} not in its header {list(t.frame.columns)[:40]}; fix the mapping "
                f"(data_prep.columns.<field>=<column>, data_prep.profile) or choose another one (data_prep=hr_generic)"
            )
        part = pd.DataFrame({f: _strip(t.frame[c]) for f, c in cols.items()})
        for c in src.profile:
            part["profile:" + c] = _strip(t.frame[c])
        part["source"] = Path(path).name
        part["line"] = t.line
        parts.append(part)
    df = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    for name, mapping in src.recode.items():
        key = name if name in df.columns else "profile:" + name
        if key in df.columns and mapping:
            m = {str(k): str(v) for k, v in mapping.items()}
            df[key] = df[key].map(m).fillna(df[key])

    reason = np.full(len(df), None, dtype=object)

    def reject(mask, message) -> None:
        mask = np.asarray(mask, dtype=bool) & pd.isna(reason)
        if mask.any():
            reason[mask] = message(mask) if callable(message) else message

    for f in ("title", "department"):
        reject(df[f] == "", f"{f} is empty ({cols[f]})")
    dates = {}
    for f in DATE_FIELDS:
        if f in df:
            dates[f] = parse_dates(df[f], src.date_formats)
            bad = (df[f] != "").to_numpy() & dates[f].isna().to_numpy()
            reject(bad, _values_msg(df[f], f"{f} {{!r}} is not a date in any of data_prep.date_formats"))
    as_of = _as_of(src.as_of, dates, src.date_formats)

    if "attrition" in df:
        low = df["attrition"].str.lower()
        is_true = low.isin([v.lower() for v in src.true_values]).to_numpy()
        is_false = low.isin([v.lower() for v in src.false_values]).to_numpy()
        reject(
            ~(is_true | is_false),
            _values_msg(
                df["attrition"], "attrition {!r} is in neither data_prep.true_values nor false_values"
            ),
        )
        left = is_true
    else:
        left = dates["termination_date"].notna().to_numpy()

    hire = dates.get("hire_date")
    term = dates.get("termination_date")
    end = None
    if hire is not None:
        as_of_col = pd.Series(as_of, index=df.index, dtype="datetime64[ns]")
        end = term.where(term.notna(), as_of_col) if term is not None else as_of_col
        if "actual_tenure" not in df:
            reject(hire.isna(), "hire_date is empty; tenure comes from dates")
        reject((hire > end).to_numpy(), "hire_date after the termination date or as_of")
        if term is not None:
            reject(
                left & term.isna().to_numpy() & ("actual_tenure" not in df),
                "left but termination_date is empty",
            )
            reject(~left & term.notna().to_numpy(), "attrition says stayed but termination_date is set")
    if "actual_tenure" in df:
        tenure = pd.to_numeric(df["actual_tenure"], errors="coerce").to_numpy(dtype=float)
        reject(
            ~(tenure >= 0) | ~np.isfinite(tenure),
            _values_msg(df["actual_tenure"], "actual_tenure {!r} is not a non-negative number of years"),
        )
    else:
        tenure = ((end - hire).dt.days / DAYS_PER_YEAR).to_numpy(dtype=float)

    promo_years = np.full(len(df), np.nan)
    promo_censored = np.ones(len(df), dtype=bool)
    if "promotion_date" in dates and hire is not None:
        if "actual_tenure" in df:
            # The observed window ends where the recorded tenure does, not at as_of.
            end = hire + pd.to_timedelta(np.round(tenure * DAYS_PER_YEAR), unit="D")
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

    ok = pd.isna(reason)
    row_rejects = {}
    for src_name, line, why in zip(df["source"][~ok], df["line"][~ok], reason[~ok], strict=True):
        row_rejects.setdefault(src_name, []).append(Reject(int(line), why))
    for sr in rejects:
        sr.rejects.extend(row_rejects.get(sr.source, []))

    df = df[ok].reset_index(drop=True)
    tenure, left = tenure[ok], left[ok]
    promo_years, promo_censored = promo_years[ok], promo_censored[ok]
    hire_shown = _iso(dates["hire_date"][ok].reset_index(drop=True)) if "hire_date" in dates else None

    user = _profiles(df, hire_shown, src)
    raw_id = df["employee_id"] if "employee_id" in df else pd.Series("", index=df.index)
    no_id = raw_id == ""
    group = raw_id.where(~no_id, "line:" + df["source"] + ":" + df["line"].astype(str))
    frame = pd.DataFrame(
        {
            "id": _ids(group, df, cfg),
            "user_json": user,
            "source": df["source"],
            "line": df["line"],
            "group": group,
            "stratum": np.where(left, "left", "stayed"),
        }
    )
    label = {
        "tenure_years": pd.Series(np.round(tenure, 3), dtype=object),
        "tenure_censored": pd.Series(~left, dtype=object),
        "promotion_years": pd.Series(_nan_to_none(np.round(promo_years, 3)), dtype=object),
        "promotion_censored": pd.Series(promo_censored, dtype=object),
        "attrition": pd.Series(left, dtype=object),
    }
    meta = {
        f: _or_none(df[f]) if f in df else pd.Series(None, index=df.index, dtype=object) for f in TEXT_FIELDS
    }
    meta["source"] = df["source"]
    meta["source_line"] = df["line"]
    meta = {
        k: meta[k] for k in ("department", "region", "title", "performance_rating", "source", "source_line")
    }
    extra = {"as_of": None if pd.isna(as_of) else as_of.strftime("%Y-%m-%d")}
    return ExampleFrame(frame, label, meta), rejects, n_records, extra


def input_paths(cfg) -> list[str]:
    """The CSV or Parquet files ``input=`` names (a file, a folder or a glob)."""
    return input_files(cfg.input, CSV_SUFFIXES + PARQUET_SUFFIXES)


def system_prompt(ex: ExampleFrame, cfg) -> str:
    """The configured system prompt (``data_prep.system_prompt``), the same for every example."""
    return cfg.data_prep.system_prompt


def answers(ex: ExampleFrame, cfg) -> tuple[dict[str, pd.Series], dict]:
    """Write every example's answer from its labels and its cohort's training-split statistics.

    Returns:
        The assistant text per example and the cohort statistics (for the manifest).

    Examples:
        python -m data_prep data_prep=hr_ibm_attrition input=../shared/data/hr/ibm_hr_attrition.csv answer_format=json
    """
    src = cfg.data_prep
    meta = ex.meta
    train = (ex.frame["split"] == "train").to_numpy()
    tenure = ex.label["tenure_years"].to_numpy(dtype=float)
    left = ex.label["attrition"].to_numpy(dtype=bool)
    promo = ex.label["promotion_years"].to_numpy(dtype=float, na_value=np.nan)
    promo_event = ~ex.label["promotion_censored"].to_numpy(dtype=bool)
    has_promo_dates = bool(src.columns.get("promotion_date"))

    levels = [list(src.cohort[: len(src.cohort) - i]) for i in range(len(src.cohort) + 1)]
    chosen = np.full(len(tenure), "", dtype=object)
    stats: dict[str, dict] = {}
    for fields in levels:
        if fields:
            key = meta[fields[0]].fillna("unknown").astype(str)
            for f in fields[1:]:
                key = key + " / " + meta[f].fillna("unknown").astype(str)
            key = key.to_numpy(dtype=object)
        else:
            key = np.full(len(tenure), "all employees", dtype=object)
        rows = np.flatnonzero(train)
        for k, i in pd.Series(rows).groupby(key[rows]).indices.items():
            m = rows[i]
            if k in stats or (len(m) < src.min_cohort and fields):
                continue
            stats[k] = _cohort_stats(tenure[m], left[m], promo[m], promo_event[m])
        take = (chosen == "") & pd.Series(key).isin(stats.keys()).to_numpy()
        chosen[take] = key[take]
    if not stats:
        stats["all employees"] = _cohort_stats(tenure[:0], left[:0], promo[:0], promo_event[:0])
        chosen[chosen == ""] = "all employees"
    overall = stats.get("all employees") or _cohort_stats(
        tenure[train], left[train], promo[train], promo_event[train]
    )
    reasons = {k: _reasons(k, s, overall, has_promo_dates) for k, s in stats.items()}

    rate = per_unique(chosen, lambda k: stats[k]["attrition_rate"]).astype(float)
    prob = np.round(rate, 2)
    risk = np.where(left, "high", np.where(rate >= src.medium_risk_rate, "medium", "low"))
    promo_answer = np.where(promo_event, promo, np.nan)
    literals = hr_answer_literals(tenure, promo_answer, risk, prob, chosen, reasons, cfg.answer_format)
    return {"assistant_json": pd.Series(literals, index=ex.frame.index, dtype=object)}, {
        "cohorts": {
            k: {kk: v for kk, v in s.items() if kk != "attrition_rate"} for k, s in sorted(stats.items())
        }
    }


def hr_answer_literals(tenure, promo, risk, prob, cohort, reasons: dict, fmt: str) -> np.ndarray:
    """`data_prep.answers.render_answer` for many HR answers at once, as JSON string literals.

    Each piece is formatted and escaped once per distinct value, then the pieces are concatenated
    column-wise; ``json.loads`` of a literal equals ``render_answer("hr", answer, fmt)``.

    Args:
        tenure: Tenure in years per example.
        promo: Years to promotion, NaN for "not expected".
        risk: low/medium/high per example.
        prob: Attrition probability per example.
        cohort: Cohort name per example (a key of ``reasons``).
        reasons: ``{cohort: (tenure, promotion, attrition)}`` reason strings.
        fmt: ``prose`` or ``json``.

    Examples:
        python -c "from data_prep.hr import hr_answer_literals as f; print(f([3.14], [float('nan')], ['low'], [0.1], ['all'], {'all': ('a', 'b', 'c')}, 'prose')[0])"
    """
    prose = fmt == "prose"

    def piece(values, render) -> np.ndarray:
        return per_unique(values, lambda v: _esc(render(v)))

    def reason(i: int) -> np.ndarray:
        return piece(cohort, lambda k: reasons[k][i] if prose else encode_basestring(reasons[k][i]))

    def years(v) -> str:
        return f"{v:.1f}" if prose else repr(round(float(v), 1))

    t = piece(np.round(np.asarray(tenure, dtype=float), 1), years)
    p = piece(
        _nan_to_none(np.round(np.asarray(promo, dtype=float), 1)),
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
            t,
            " years\n   Reasoning: ",
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
        ]
    else:
        parts = [
            '{"tenure_years": ',
            t,
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
            reason(2),
            "}}",
        ]
    return concat(['"', *(_esc(x) if isinstance(x, str) else x for x in parts), '"'], len(t))


def parse_dates(s: pd.Series, formats: list[str]) -> pd.Series:
    """Parse strings with the first of ``formats`` that fits each value (vectorised, per format).

    Examples:
        python -c "import pandas as pd; from data_prep.hr import parse_dates; print(parse_dates(pd.Series(['3/30/2015', '2015-03-30', 'x']), ['%Y-%m-%d', '%m/%d/%Y']))"
    """
    out = pd.Series(pd.NaT, index=s.index, dtype="datetime64[ns]")
    codes, uniques = pd.factorize(s.to_numpy(dtype=object))
    if len(uniques) == 0:
        return out
    u = pd.Series(uniques, dtype=object)
    parsed = pd.Series(pd.NaT, index=u.index, dtype="datetime64[ns]")
    for fmt in formats:
        todo = parsed.isna() & (u != "")
        if not todo.any():
            break
        parsed[todo] = pd.to_datetime(u[todo], format=fmt, errors="coerce")
    values = parsed.to_numpy()
    return pd.Series(np.where(codes >= 0, values[codes], np.datetime64("NaT")), index=s.index)


def _as_of(text: str, dates: dict, formats: list[str]):
    if text:
        parsed = parse_dates(pd.Series([text]), ["%Y-%m-%d", *formats])[0]
        if pd.isna(parsed):
            raise InputError(
                f"data_prep.as_of={text!r} is not a date; use YYYY-MM-DD (data_prep.as_of=2020-12-31)"
            )
        return parsed
    latest = [d.max() for d in dates.values() if d.notna().any()]
    return max(latest) if latest else pd.NaT


def _values_msg(values: pd.Series, template: str):
    def message(mask):
        return [template.format(v[:80]) for v in values.to_numpy()[mask]]

    return message


def _strip(s: pd.Series) -> pd.Series:
    return pd.Series(
        per_unique(s.to_numpy(dtype=object), lambda v: "" if v is None else v.strip()), index=s.index
    )


def _or_none(s: pd.Series) -> pd.Series:
    return s.where(s != "", None).astype(object)


def _iso(d: pd.Series) -> pd.Series:
    codes, uniques = pd.factorize(d)
    text = np.array(list(pd.DatetimeIndex(uniques).strftime("%Y-%m-%d")) + [""], dtype=object)
    return pd.Series(text[codes], index=d.index)


def _profiles(df: pd.DataFrame, hire_shown, src) -> np.ndarray:
    """The user message of every row as a JSON string literal, built column by column."""
    parts: list = ['"' + _esc("Employee Profile:\n")]
    shown = [("hire_date", hire_shown)] + [(f, df[f] if f in df else None) for f in TEXT_FIELDS]
    shown += [(c, df["profile:" + c]) for c in src.profile]
    labels = {**PROFILE_LABELS, **{c: lab for c, lab in src.profile.items()}}
    for f, values in shown:
        if values is not None:
            label = labels[f]
            parts.append(per_unique(values.to_numpy(dtype=object), lambda v, lab=label: _line(lab, v)))
    parts.append(_esc("\n" + QUESTION) + '"')
    return concat(parts, len(df))


def _line(label: str, value) -> str:
    return _esc(f"- {label}: {value}\n") if value else ""


def _nan_to_none(x: np.ndarray) -> np.ndarray:
    out = x.astype(object)
    out[np.isnan(x)] = None
    return out


def _esc(text: str) -> str:
    return encode_basestring(text)[1:-1]


def _ids(group: pd.Series, df: pd.DataFrame, cfg) -> pd.Series:
    if cfg.pii.mode == "drop":
        ids = np.array(
            [f"hr-{Path(s).stem}-{line}" for s, line in zip(df["source"], df["line"], strict=True)],
            dtype=object,
        )
    else:
        # SipHash keyed by the salt (pandas' hash_array): a keyed hash, cheap for a million ids.
        salt = cfg.pii.salt or os.urandom(16).hex()
        key = base64.b64encode(hashlib.sha256(salt.encode()).digest()).decode()[:16]
        h = pd.util.hash_array(group.to_numpy(dtype=object), hash_key=key)
        hexed = h.astype(">u8").tobytes().hex()
        ids = np.array(["hr-" + hexed[i : i + 16] for i in range(0, len(hexed), 16)], dtype=object)
    ids = pd.Series(ids, index=group.index, dtype=object)
    if not ids.duplicated().any():
        return ids
    # An employee with several records keeps one id per record: -2, -3, ... after the first.
    n = ids.groupby(ids).cumcount()
    return ids.where(n == 0, ids + "-" + (n + 1).astype(str))


def _km_median(t: np.ndarray, event: np.ndarray) -> float | None:
    """Kaplan-Meier median: the first time the estimated share still employed drops to half or below."""
    if len(t) == 0:
        return None
    order = np.argsort(t, kind="stable")
    t, event = t[order], event[order].astype(float)
    times, first = np.unique(t, return_index=True)
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
