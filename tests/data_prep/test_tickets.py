"""Tickets: the real cut-off rows rejected by line, label set recorded, multilingual, PII scrubbed."""

from __future__ import annotations

import pandas as pd
import pytest
from dp_helpers import prepare, read_rejects, read_split_files, shared, to_csv_bytes

from data_prep.answers import parse_answer
from data_prep.config import ConfigError


def test_real_ticket_files(tmp_path):
    folder = shared("tickets")
    manifest, out = prepare(tmp_path, "data_prep=tickets", f"input={folder}", "answer_format=json")
    rejects = {(r["source"], r["line"]): r["reason"] for r in read_rejects(out)}
    assert rejects[("dataset-tickets-multi-lang3-4k.TRUNCATED.csv", 21568)].startswith("truncated record")
    assert rejects[("aa_dataset-tickets-multi-lang-5-2-50-version.TRUNCATED.csv", 1874)].startswith(
        "truncated"
    )
    c = manifest["counts"]
    assert c["records"] == 1168 + 1873 and c["written"] + c["rejected"] == c["records"]
    queues = manifest["labels"]["queue"]
    assert len(queues) == 10 and "Technical Support" in queues
    assert manifest["labels"]["priority"] == ["high", "low", "medium"]
    examples = [e for s in read_split_files(out).values() for e in s]
    assert {e.meta["language"] for e in examples} == {"en", "de", "es", "pt", "fr"}
    for e in examples:
        got = parse_answer("tickets", e.answer["content"])
        assert got == {"queue": e.label["queue"], "priority": e.label["priority"]}
        assert "Technical Support" in e.messages[0]["content"]
    assert not any("\\n" in e.messages[1]["content"] for e in examples)
    # Every queue with at least 10 tickets is in the test split (stratified by queue).
    test_queues = {e.label["queue"] for e in read_split_files(out)["test"]}
    big = [q for q, n in pd.Series([e.label["queue"] for e in examples]).value_counts().items() if n >= 10]
    assert set(big) <= test_queues


def test_generated_tickets_rules(tmp_path):
    df = pd.DataFrame(
        {
            "subject": ["Login", "", "", "Hola", "Refund"],
            "body": ["Mail me at jo.doe@example.com", "Printer broken", "", "No funciona", "Where is it?"],
            "queue": ["IT Support", "IT Support", "IT Support", "", "Billing and Payments"],
            "priority": ["High", "", "low", "low", "medium"],
            "language": ["en", "en", "en", "es", "en"],
        }
    )
    p = tmp_path / "t.csv"
    p.write_bytes(to_csv_bytes(df))
    manifest, out = prepare(
        tmp_path, "data_prep=tickets", f"input={p}", "splits.train=1", "splits.test=0", "splits.validation=0"
    )
    by_line = {e.meta["source_line"]: e for e in read_split_files(out)["train"]}
    assert sorted(by_line) == [2, 3, 6]
    assert "<email>" in by_line[2].messages[1]["content"] and "example.com" not in by_line[2].to_json()
    assert by_line[2].label == {"queue": "IT Support", "priority": "high"}
    assert by_line[3].label["priority"] is None and by_line[3].answer["content"] == "Queue: IT Support"
    assert {r["line"]: r["reason"] for r in read_rejects(out)} == {
        4: "subject and body are both empty",
        5: "queue is empty",
    }


def _tickets_csv(tmp_path):
    df = pd.DataFrame(
        {
            "subject": ["Login", "Refund", "Invoice", "Hola"],
            "body": ["Cannot log in", "Where is it?", "Wrong amount", "No funciona"],
            "queue": ["IT Support", " Billing and Payments ", "Billing and Payments", "IT Support"],
            "priority": ["1", "2", "High", "2"],
            "language": ["English", "en", "en", "es"],
        }
    )
    p = tmp_path / "t.csv"
    p.write_bytes(to_csv_bytes(df))
    return p


def test_recode_changes_the_label_answer_and_label_set(tmp_path):
    p = _tickets_csv(tmp_path)
    manifest, out = prepare(
        tmp_path,
        "data_prep=tickets",
        f"input={p}",
        "splits.train=1",
        "splits.test=0",
        "splits.validation=0",
        "++data_prep.recode.queue={Billing and Payments: Billing}",
        "++data_prep.recode.priority.1=Urgent",
        "++data_prep.recode.language={English: en}",
        "data_prep.languages=[en]",
    )
    by_line = {e.meta["source_line"]: e for e in read_split_files(out)["train"]}
    # Recoded after stripping, before lower-casing and before the languages filter (English -> en is kept).
    assert sorted(by_line) == [2, 3, 4]
    assert by_line[2].label == {"queue": "IT Support", "priority": "urgent"}
    assert by_line[2].meta["language"] == "en"
    assert by_line[3].label == {"queue": "Billing", "priority": "2"}
    assert by_line[3].answer["content"] == "Queue: Billing\nPriority: 2"
    assert by_line[4].answer["content"] == "Queue: Billing\nPriority: high"
    assert manifest["labels"]["queue"] == ["Billing", "IT Support"]
    assert "Billing and Payments" not in by_line[3].messages[0]["content"]
    assert {r["line"]: r["reason"] for r in read_rejects(out)} == {
        5: "language not in data_prep.languages ['en']"
    }


def test_options_that_do_not_apply_to_tickets_are_refused(tmp_path):
    p = _tickets_csv(tmp_path)
    with pytest.raises(ConfigError) as e:
        prepare(
            tmp_path,
            "data_prep=tickets",
            f"input={p}",
            "data_prep.true_values=[escalated]",
            "++data_prep.date_formats.created=%d/%m/%Y",
            "data_prep.score_bands=4",
            "++data_prep.recode.id={a: b}",
            "++data_prep.recode.Queue={x: y}",
        )
    msg = str(e.value)
    for option in ("true_values", "date_formats", "score_bands"):
        assert f"data_prep.{option} does not apply to task tickets" in msg
    assert "data_prep.recode.id does not apply to task tickets: ticket ids are hashes" in msg
    assert "data_prep.recode.Queue names no mapped field" in msg
    assert "cohort" not in msg.split("data_prep.recode")[0]  # an option left at its default is not reported
    assert not (tmp_path / "out").exists()
