"""Support tickets (CSV or Parquet, any language) -> chat examples that route subject + body to a queue and priority.

The system prompt lists the label set (every queue and priority written, sorted), so the model
chooses among known queues; the manifest records the same set. E-mail addresses in the text are
replaced by ``<email>``. Records are grouped by their prompt for splitting, so the same ticket text
never lands in two splits, and splits are stratified by queue.

``data_prep.recode`` (`data_prep.config.recode_maps`, the rule HR follows) replaces whole stripped values of a
mapped field before anything else reads them: ``recode.queue`` changes the label, the answer, the label set in
the system prompt and the stratum; ``recode.priority`` and ``recode.language`` act before priorities and
languages are lower-cased and before the ``languages`` filter. ``recode.id`` is refused (ids come from the text).

Rejected with their line number: a cut-off last record (the files in ``../shared/data/tickets`` end
with one), an empty body and subject, an empty queue, a language outside ``data_prep.languages``.

Examples:
    python -m data_prep data_prep=tickets input=../shared/data/tickets
    python -m data_prep data_prep=tickets input=../shared/data/tickets 'data_prep.languages=[en,de]' answer_format=json
    python -m data_prep data_prep=tickets input=../shared/data/tickets 'data_prep.recode.queue={"Returns and Exchanges": Returns}'
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pandas as pd

from data_prep.answers import render_answer
from data_prep.config import recode_maps
from data_prep.dataset import ExampleFrame, SourceRejects, input_files
from data_prep.table import TABLE_SUFFIXES, InputError, Reject, read_table, reading_options

TASK = "tickets"
EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")


def input_paths(cfg) -> list[str]:
    """The CSV or Parquet files ``input=`` names (a file, a folder or a glob)."""
    return input_files(cfg.input, TABLE_SUFFIXES)


def build(cfg) -> tuple[ExampleFrame, list[SourceRejects], int, dict]:
    """Read the ticket file(s); every valid record becomes an example (answers come later).

    Raises:
        InputError: An input is missing or lacks a mapped column.

    Examples:
        python -m data_prep data_prep=tickets input=../shared/data/tickets/dataset-tickets-multi-lang3-4k.TRUNCATED.csv
    """
    src = cfg.data_prep
    cols = {k: v for k, v in src.columns.items() if v}
    parts, rejects, n_records = [], [], 0
    for path in input_paths(cfg):
        t = read_table(
            path, max_field_chars=cfg.max_field_chars, progress=cfg.progress, **reading_options(cfg)
        )
        n_records += t.n_records
        rejects.append(SourceRejects(Path(path).name, list(t.rejects), t.reading()))
        missing = [c for c in cols.values() if c not in t.frame.columns]
        if missing:
            raise InputError(
                f"{path}: column(s) {missing} not in its header {list(t.frame.columns)}; "
                "fix data_prep.columns.<field>=<column>"
            )
        part = pd.DataFrame({f: t.frame[c].str.strip() for f, c in cols.items()})
        part["source"] = Path(path).name
        part["line"] = t.line
        parts.append(part)
    df = pd.concat(parts, ignore_index=True)
    for f, mapping in recode_maps(src).items():
        if f in df:
            df[f] = df[f].map(lambda v, m=mapping: m.get(v, v))
    for f in ("priority", "language"):
        if f not in df:
            df[f] = ""
    df["priority"] = df["priority"].str.lower()
    df["language"] = df["language"].str.lower()

    reason = np.full(len(df), None, dtype=object)
    checks = [
        ((df["subject"] == "") & (df["body"] == ""), "subject and body are both empty"),
        (df["queue"] == "", "queue is empty"),
    ]
    if src.languages:
        allowed = [x.lower() for x in src.languages]
        checks.append((~df["language"].isin(allowed), f"language not in data_prep.languages {allowed}"))
    for mask, why in checks:
        reason[mask.to_numpy() & pd.isna(reason)] = why
    ok = pd.isna(reason)
    by_source = {sr.source: sr for sr in rejects}
    for s, line, why in zip(df["source"][~ok], df["line"][~ok], reason[~ok], strict=True):
        by_source[s].rejects.append(Reject(int(line), why))
    df = df[ok].reset_index(drop=True)

    subject = df["subject"].str.replace(EMAIL, "<email>", regex=True)
    body = df["body"].str.replace(EMAIL, "<email>", regex=True)
    if src.unescape_newlines:
        body = body.str.replace("\\n", "\n", regex=False)
    user = ("Subject: " + subject + "\n\n").where(subject != "", "") + body
    user = user.where(body != "", "Subject: " + subject)
    user = "Route this support ticket.\n\n" + user
    ids = "tickets-" + user.map(lambda u: hashlib.blake2b(u.encode(), digest_size=8).hexdigest())
    n = ids.groupby(ids).cumcount()
    ids = ids.where(n == 0, ids + "-" + (n + 1).astype(str))
    frame = pd.DataFrame(
        {
            "id": ids,
            "user": user,
            "source": df["source"],
            "line": df["line"],
            "group": user,
            "stratum": df["queue"],
        }
    )
    label = {
        "queue": df["queue"].astype(object),
        "priority": df["priority"].where(df["priority"] != "", None),
    }
    meta = {
        "language": df["language"].where(df["language"] != "", None),
        "source": df["source"],
        "source_line": df["line"],
    }
    return ExampleFrame(frame, label, meta), rejects, n_records, {}


def label_set(ex: ExampleFrame) -> dict:
    """Every queue and priority among the written examples, sorted."""
    return {
        "queue": sorted(set(ex.label["queue"])),
        "priority": sorted({p for p in ex.label["priority"] if p is not None}),
    }


def system_prompt(ex: ExampleFrame, cfg) -> str:
    """The configured prompt with ``{queues}`` and ``{priorities}`` filled from the label set."""
    labels = label_set(ex)
    text = cfg.data_prep.system_prompt.replace("{queues}", ", ".join(labels["queue"]))
    return text.replace("{priorities}", ", ".join(labels["priority"]))


def answers(ex: ExampleFrame, cfg) -> tuple[dict[str, pd.Series], dict]:
    """Queue and priority in the configured answer format; the label set for the manifest.

    Examples:
        python -m data_prep data_prep=tickets input=../shared/data/tickets answer_format=json
    """
    text = [
        render_answer(TASK, {"queue": q, "priority": p}, cfg.answer_format)
        for q, p in zip(ex.label["queue"], ex.label["priority"], strict=True)
    ]
    return {"assistant": pd.Series(text, index=ex.frame.index, dtype=object)}, {"labels": label_set(ex)}
