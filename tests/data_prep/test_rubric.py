"""Rubric records: prompts carry the rubric, answers the score; bad records rejected by line."""

from __future__ import annotations

import json

import pytest
from dp_helpers import prepare, read_rejects, read_split_files

from data_prep.answers import parse_answer
from data_prep.config import ConfigError


def _record(i, **kw):
    rec = {
        "id": f"sub-{i}",
        "student": f"student{i % 7}@school.example",
        "prompt": "Explain LoRA.",
        "rubric_alignment": [
            {"question": "What is the rank?", "answer": f"answer {i}", "score": i % 3},
            {"question": "Why freeze the base?", "answer": "memory", "score": 1},
        ],
        "score": i % 11,
        "max_score": 10,
        "feedback": "" if i % 2 else f"Good point {i}.",
    }
    rec.update(kw)
    return rec


def test_jsonl_rubric(tmp_path):
    lines = [json.dumps(_record(i)) for i in range(60)]
    lines[3] = "{not json"
    lines[4] = json.dumps(_record(4, score=12))
    lines[5] = json.dumps(_record(5, score="n/a"))
    lines[6] = json.dumps(_record(6, rubric_alignment=[], submission=""))
    lines[7] = "[1, 2]"
    p = tmp_path / "r.jsonl"
    p.write_bytes(("\r\n".join(lines) + "\r\n").encode())
    manifest, out = prepare(tmp_path, "data_prep=rubric", f"input={p}")
    got = {r["line"]: r["reason"] for r in read_rejects(out)}
    assert set(got) == {4, 5, 6, 7, 8}
    assert got[4].startswith("not valid JSON")
    assert got[5] == "score 12 is outside [0, max_score=10]"
    assert got[6] == "score 'n/a' is not a number"
    assert got[7].startswith("nothing to score")
    assert got[8] == "record is a list, not an object"
    splits = read_split_files(out)
    examples = [e for s in splits.values() for e in s]
    assert len(examples) == 55 == manifest["counts"]["written"]
    for e in examples:
        got = parse_answer("rubric", e.answer["content"])
        assert (got["score"], got["max_score"]) == (e.label["score"], e.label["max_score"])
        assert (
            "What is the rank?" in e.messages[1]["content"]
            and "Maximum score: 10" in e.messages[1]["content"]
        )
        assert "school.example" not in e.to_json() and "sub-" not in e.id
    odd = next(e for e in examples if e.meta["source_line"] == 2)
    assert "Per-question scores: Q1: 1, Q2: 1." in odd.answer["content"]
    # A student's submissions stay in one split.
    student_of = {i + 1: f"student{i % 7}" for i in range(60)}
    where = {}
    for s, exs in splits.items():
        for e in exs:
            where.setdefault(student_of[e.meta["source_line"]], set()).add(s)
    assert all(len(v) == 1 for v in where.values())


def test_json_list_numbers_records(tmp_path):
    p = tmp_path / "r.json"
    p.write_text(json.dumps([_record(1), "x", _record(2, max_score=0)]), encoding="utf-8")
    manifest, out = prepare(tmp_path, "data_prep=rubric", f"input={p}", "answer_format=json")
    assert {r["line"]: r["reason"] for r in read_rejects(out)} == {
        2: "record is a str, not an object",
        3: "max_score is 0; expected a positive number",
    }
    assert manifest["counts"]["written"] == 1


def test_recode_of_group_merges_submitters_before_splits(tmp_path):
    # Each of 20 submitters writes as "s<k>" and "s<k>-alt": recoded to one before grouping, so all of a
    # submitter's records share a split (without the recode, some land in two). One score band: one stratum.
    student = {i: f"s{i % 20}" + ("-alt" if i % 40 >= 20 else "") for i in range(80)}
    lines = [json.dumps(_record(i, id=f"sub-{i}", student=student[i], score=7)) for i in range(80)]
    p = tmp_path / "r.jsonl"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    aliases = ", ".join(f"s{k}-alt: s{k}" for k in range(20))
    manifest, out = prepare(
        tmp_path, "data_prep=rubric", f"input={p}", f"++data_prep.recode.group={{{aliases}}}"
    )
    where = {}
    for split, exs in read_split_files(out).items():
        for e in exs:
            where.setdefault(student[e.meta["source_line"] - 1].removesuffix("-alt"), set()).add(split)
    assert manifest["counts"]["written"] == 80 and len(where) == 20
    assert all(len(v) == 1 for v in where.values())
    assert len(set().union(*where.values())) == 3


def test_recode_of_numbers_and_other_tasks_options_refused(tmp_path):
    p = tmp_path / "r.jsonl"
    p.write_text(json.dumps(_record(1)) + "\n", encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        prepare(
            tmp_path,
            "data_prep=rubric",
            f"input={p}",
            "++data_prep.recode.score={A: '10'}",
            "++data_prep.recode.rubric_alignment={x: y}",
            "data_prep.languages=[en]",
            "data_prep.unescape_newlines=true",
        )
    msg = str(e.value)
    assert "data_prep.recode.score does not apply to task rubric: scores are JSON numbers" in msg
    assert "data_prep.recode.rubric_alignment does not apply to task rubric: it is a list" in msg
    assert "data_prep.languages does not apply to task rubric" in msg
    assert "data_prep.unescape_newlines does not apply to task rubric" in msg
    assert not (tmp_path / "out").exists()
