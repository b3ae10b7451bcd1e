"""Rubric-scored submissions (JSON or JSONL) -> chat examples that teach the model to score.

A record (field names mapped in ``conf/data_prep/rubric.yaml``)::

    {"id": "s-12", "student": "...", "prompt": "Explain LoRA.", "submission": "...",
     "rubric_alignment": [{"question": "...", "answer": "...", "score": 2}, ...],
     "score": 7, "max_score": 10, "feedback": "..."}

The user message holds the assignment, the rubric questions with the submitted answers, the
submission text and the maximum score; the assistant gives ``Score: 7/10`` and the feedback. When a
record has no feedback, the feedback lists the per-question scores it does have. Records are grouped
by ``group`` (a submitter) when mapped, so no submitter lands in two splits; splits are stratified by
score band (``score_bands`` equal bands of score / max_score). Submitter and record ids are written
only as salted hashes; e-mail addresses in text become ``<email>``.

``data_prep.recode`` (`data_prep.config.recode_maps`, the rule HR follows) replaces whole stripped values of a
mapped text field (id, group, prompt, submission, feedback) before anything reads them: a recoded ``group``
merges submitters before grouping and splits, a recoded ``id`` is hashed. It is refused for the fields in
`NOT_RECODED`.

Input: a ``.jsonl`` file (line numbers are file lines), a ``.json`` file holding one record or a list
(line numbers are record numbers), or a folder of both. Rejected with their line number: invalid
JSON, invalid UTF-8, a record that is not an object, a missing or non-numeric score or max_score,
a score outside ``[0, max_score]``, nothing to score (no rubric answers and no submission).

Examples:
    python -m data_prep data_prep=rubric input=submissions.jsonl
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from pathlib import Path

import pandas as pd

from data_prep.answers import render_answer
from data_prep.config import pii_salt, recode_maps
from data_prep.dataset import ExampleFrame, SourceRejects, input_files
from data_prep.table import InputError, Reject
from data_prep.tickets import EMAIL

TASK = "rubric"
SUFFIXES = (".jsonl", ".json")
_INVALID_UTF8 = re.compile("[\udc80-\udcff]")
# Fields that `data_prep.recode` cannot apply to, and why (refused by the task's check).
NOT_RECODED = {
    "score": "scores are JSON numbers, which have no single text form (7, 7.0, 7e0) for a recode key to match; "
    "fix the scores in the file",
    "max_score": "maximum scores are JSON numbers, which have no single text form (10, 10.0) for a recode key "
    "to match; fix them in the file",
    "rubric_alignment": "it is a list of {question, answer, score} items, not one value",
}


def input_paths(cfg) -> list[str]:
    """The JSON or JSONL files ``input=`` names (a file, a folder or a glob)."""
    return input_files(cfg.input, SUFFIXES)


def system_prompt(ex: ExampleFrame, cfg) -> str:
    """The configured system prompt (``data_prep.system_prompt``), the same for every example."""
    return cfg.data_prep.system_prompt


def read_records(path: str | Path, max_field_chars: int) -> tuple[list[tuple[int, dict]], list[Reject]]:
    """``(line, record)`` pairs and rejects of one JSON or JSONL file.

    Raises:
        InputError: A ``.json`` file that is not valid JSON as a whole.

    Examples:
        python -c "from data_prep.rubric import read_records; print(read_records('scores.jsonl', 100000)[1])"
    """
    raw = Path(path).read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    text = raw.decode("utf-8", errors="surrogateescape")
    records, rejects = [], []
    if str(path).lower().endswith(".json"):
        if _INVALID_UTF8.search(text):
            raise InputError(
                f"{path}: invalid UTF-8; re-export it as UTF-8 (or as JSONL to reject only bad lines)"
            )
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}: not valid JSON ({e}); fix the file or export it as JSONL") from e
        items = obj if isinstance(obj, list) else [obj]
        for i, item in enumerate(items, start=1):
            if isinstance(item, dict):
                records.append((i, item))
            else:
                rejects.append(Reject(i, f"record is a {type(item).__name__}, not an object"))
        return records, rejects
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if _INVALID_UTF8.search(line):
            rejects.append(Reject(i, "invalid UTF-8 bytes; re-export the file as UTF-8"))
        elif len(line) > max_field_chars:
            rejects.append(
                Reject(i, f"record has {len(line)} characters, over max_field_chars={max_field_chars}")
            )
        else:
            try:
                item = json.loads(line)
            except json.JSONDecodeError as e:
                rejects.append(Reject(i, f"not valid JSON: {e}"))
                continue
            if isinstance(item, dict):
                records.append((i, item))
            else:
                rejects.append(Reject(i, f"record is a {type(item).__name__}, not an object"))
    return records, rejects


def build(cfg) -> tuple[ExampleFrame, list[SourceRejects], int, dict]:
    """Read the rubric file(s); every valid record becomes an example with its answer fields.

    Examples:
        python -m data_prep data_prep=rubric input=submissions.jsonl answer_format=json
    """
    src = cfg.data_prep
    cols = {k: v for k, v in src.columns.items() if v}
    recode = recode_maps(src)
    salt = (pii_salt(cfg) or os.urandom(16).hex()).encode()[:64]
    rows, rejects, n_records = [], [], 0
    for path in input_paths(cfg):
        records, bad = read_records(path, cfg.max_field_chars)
        name = Path(path).name
        n_records += len(records) + len(bad)
        sr = SourceRejects(name, list(bad))
        rejects.append(sr)
        for line, rec in records:
            row, why = _example(rec, cols, src.score_bands, recode)
            if why:
                sr.rejects.append(Reject(line, why))
                continue
            raw_group = row.pop("raw_group")
            raw_id = row.pop("raw_id")
            if cfg.pii.mode == "drop":
                ident = f"rubric-{Path(name).stem}-{line}"
            else:
                ident = "rubric-" + _hash(raw_id or f"{name}:{line}", salt)
            row.update(
                id=ident,
                source=name,
                line=line,
                group=raw_group or row["user"],
            )
            rows.append(row)
    df = pd.DataFrame(
        rows,
        columns=["id", "user", "source", "line", "group", "stratum", "score", "max_score", "feedback"],
    )
    n = df.groupby("id").cumcount()
    df["id"] = df["id"].where(n == 0, df["id"] + "-" + (n + 1).astype(str))
    frame = df[["id", "user", "source", "line", "group", "stratum", "feedback"]].copy()
    label = {"score": df["score"].astype(object), "max_score": df["max_score"].astype(object)}
    meta = {"source": df["source"].astype(object), "source_line": df["line"].astype(object)}
    return ExampleFrame(frame, label, meta), rejects, n_records, {}


def answers(ex: ExampleFrame, cfg) -> tuple[dict[str, pd.Series], dict]:
    """Score and feedback in the configured answer format.

    Examples:
        python -m data_prep data_prep=rubric input=submissions.jsonl answer_format=prose
    """
    text = [
        render_answer(TASK, {"score": s, "max_score": m, "feedback": f}, cfg.answer_format)
        for s, m, f in zip(ex.label["score"], ex.label["max_score"], ex.frame["feedback"], strict=True)
    ]
    return {"assistant": pd.Series(text, index=ex.frame.index, dtype=object)}, {}


def _example(rec: dict, cols: dict, bands: int, recode: dict) -> tuple[dict, str | None]:
    def text(f: str) -> str:
        value = _text(rec.get(cols.get(f, "")))
        return recode[f].get(value, value) if f in recode else value

    score, why = _number(rec.get(cols["score"]), "score")
    if why:
        return {}, why
    max_score, why = _number(rec.get(cols["max_score"]), "max_score")
    if why:
        return {}, why
    if max_score <= 0:
        return {}, f"max_score is {max_score:g}; expected a positive number"
    if not 0 <= score <= max_score:
        return {}, f"score {score:g} is outside [0, max_score={max_score:g}]"
    items = rec.get(cols.get("rubric_alignment", ""), []) or []
    if not isinstance(items, list):
        return {}, "rubric_alignment is not a list of {question, answer, score} items"
    submission = text("submission")
    prompt = text("prompt")
    lines, item_scores = [], []
    for k, item in enumerate(items, start=1):
        if not isinstance(item, dict) or not _text(item.get("question")):
            return {}, f"rubric_alignment item {k} has no question"
        lines.append(
            f"{k}. Question: {_text(item['question'])}\n   Answer: {_text(item.get('answer')) or '(none)'}"
        )
        s, bad = _number(item.get("score"), f"item {k} score")
        if not bad:
            item_scores.append(f"Q{k}: {s:g}")
    if not lines and not submission:
        return {}, "nothing to score: no rubric_alignment items and no submission"
    user = "Score this submission against the rubric.\n"
    if prompt:
        user += f"\nAssignment: {prompt}\n"
    if lines:
        user += "\nRubric questions and answers:\n" + "\n".join(lines) + "\n"
    if submission:
        user += f"\nSubmission:\n{submission}\n"
    user += "\nMaximum score: " + f"{max_score:.4f}".rstrip("0").rstrip(".")
    feedback = text("feedback")
    if not feedback and item_scores:
        feedback = "Per-question scores: " + ", ".join(item_scores) + "."
    band = min(int(score / max_score * bands), bands - 1)
    return {
        "user": EMAIL.sub("<email>", user),
        "stratum": f"band {band + 1}/{bands}",
        "score": round(score, 4),
        "max_score": round(max_score, 4),
        "feedback": EMAIL.sub("<email>", feedback),
        "raw_group": text("group"),
        "raw_id": text("id"),
    }, None


def _number(value, name: str) -> tuple[float, str | None]:
    if value is None or value == "" or isinstance(value, bool):
        return 0.0, f"{name} is missing"
    try:
        x = float(value)
    except (TypeError, ValueError):
        return 0.0, f"{name} {str(value)[:40]!r} is not a number"
    if not math.isfinite(x):
        return 0.0, f"{name} {value!r} is not a finite number"
    return x, None


def _text(value) -> str:
    return "" if value is None else str(value).strip()


def _hash(value: str, salt: bytes) -> str:
    return hashlib.blake2b(value.encode("utf-8", "surrogatepass"), key=salt, digest_size=8).hexdigest()
