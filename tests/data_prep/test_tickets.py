"""Tickets: the real cut-off rows rejected by line, label set recorded, multilingual, PII scrubbed."""

from __future__ import annotations

import pandas as pd
from dp_helpers import prepare, read_rejects, read_split_files, shared, to_csv_bytes

from data_prep.answers import parse_answer


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
