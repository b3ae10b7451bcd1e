"""Stage-2 (personalised) conversations: one after each person's stage-1 line, in the person's split, the
history only in the stage-2 turn, reasons from the training split, every data_prep invariant kept."""

from __future__ import annotations

import json
import re
from collections import Counter

import numpy as np
import pytest
from dp_helpers import compose_cfg, hr_rows, prepare, read_rejects, read_split_files, to_csv_bytes

from data_prep.answers import parse_answer
from data_prep.builtin import SPLITS, attrition_rule, generate, profile_rule
from data_prep.config import ConfigError, validate
from data_prep.inspect import LabelLeakError
from data_prep.stage2 import history_turn, is_stage2, person_id

HISTORY = "++data_prep.history={engagement: Engagement, overtime: Overtime}"


def history_csv(tmp_path, n=400, seed=0):
    """hr_rows with two history columns; overtime raises the chance of leaving (it carries signal)."""
    df = hr_rows(n, seed)
    rng = np.random.default_rng(seed + 1)
    left = df["attrition"] == "True"
    df["overtime"] = np.where(rng.random(n) < np.where(left, 0.7, 0.2), "Yes", "No")
    df["engagement"] = rng.choice(["Low", "Medium", "High"], n)
    path = tmp_path / "hr.csv"
    path.write_bytes(to_csv_bytes(df))
    return path, df


@pytest.mark.parametrize(("fmt", "pii"), [("prose", "hash"), ("json", "drop")])
def test_each_person_gets_both_conversations_in_one_split(tmp_path, fmt, pii):
    path, df = history_csv(tmp_path)
    manifest, out = prepare(
        tmp_path, "data_prep=hr_generic", f"input={path}", HISTORY, f"answer_format={fmt}", f"pii.mode={pii}"
    )
    files = read_split_files(out)
    c = manifest["counts"]
    # People: every record written once or rejected; the stage-2 lines come on top, one per person written.
    assert c["records"] == len(df) == c["written"] + c["rejected"] == c["written"] + len(read_rejects(out))
    assert c["stage2_by_split"] == c["by_split"]
    for split, lines in files.items():
        assert manifest["outputs"][f"{split}.jsonl"]["examples"] == len(lines) == 2 * c["by_split"][split]
        stage1, stage2 = lines[0::2], lines[1::2]
        assert not any(map(is_stage2, stage1)) and all(map(is_stage2, stage2))
        for s1, s2 in zip(stage1, stage2, strict=True):
            assert person_id(s2) == s1.id and s2.id == s1.id + "/stage2"
            assert s2.label == s1.label and s2.meta == {**s1.meta, "stage": 2}
            assert [m["role"] for m in s2.messages] == ["system", "user", "assistant", "user", "assistant"]
            assert s2.messages[:2] == s1.messages[:2]  # the same profile prompt
            # The history: only in the stage-2 turn, rendered by the one function prediction uses too.
            row = df.iloc[s1.meta["source_line"] - 2]
            turn = history_turn({"Engagement": row["engagement"], "Overtime": row["overtime"]})
            assert s2.messages[3]["content"] == turn
            assert (
                "Overtime" not in s1.messages[1]["content"] and "Engagement" not in s1.messages[1]["content"]
            )
            a1, a2 = parse_answer("hr", s1.answer["content"]), parse_answer("hr", s2.answer["content"])
            # The same label-bearing answer; the personalised reasons add the history.
            for key in ("tenure_years", "tenure_censored", "time_to_promotion_years", "attrition_risk"):
                assert a1[key] == a2[key], key
            assert a2["reasons"]["attrition"].startswith(a1["reasons"]["attrition"])
            assert f"Overtime {row['overtime']}: " in a2["reasons"]["attrition"]
            # The earlier turn is the population answer: the cohort's, never the person's (stated) outcome.
            earlier = parse_answer("hr", s2.messages[2]["content"])
            assert earlier["attrition_probability"] == a1["attrition_probability"]
            assert earlier["reasons"] == a1["reasons"]


def test_history_rates_come_from_the_training_split_only(tmp_path):
    path, df = history_csv(tmp_path)
    manifest, out = prepare(tmp_path, "data_prep=hr_generic", f"input={path}", HISTORY)
    files = read_split_files(out)
    train = files["train"][0::2]
    counted = Counter()
    for ex in train:
        value = df.iloc[ex.meta["source_line"] - 2]["overtime"]
        counted[(value, "n")] += 1
        counted[(value, "left")] += bool(ex.label["attrition"])
    for value in ("Yes", "No"):
        n, k = counted[(value, "n")], counted[(value, "left")]
        assert manifest["history_rates"]["overtime"][value] == {"n": n, "left": k}
        cited = f"Overtime {value}: {k} of {n} left in training ({round(100 * k / n)}%)."
        people = [
            s2
            for lines in files.values()
            for s2 in lines[1::2]
            if f"- Overtime: {value}\n" in s2.messages[3]["content"]
        ]
        assert people and all(cited in s2.answer["content"] for s2 in people)


def test_stage2_lines_are_deterministic_whatever_the_row_order(tmp_path):
    path, df = history_csv(tmp_path)
    _, out1 = prepare(tmp_path / "a", "data_prep=hr_generic", f"input={path}", HISTORY)
    shuffled = tmp_path / "shuffled.csv"
    shuffled.write_bytes(to_csv_bytes(df.sample(frac=1.0, random_state=3)))
    _, out2 = prepare(tmp_path / "b", "data_prep=hr_generic", f"input={shuffled}", HISTORY)

    def by_id(out):
        return {
            ex.id: (ex.messages[2:], ex.label)
            for lines in read_split_files(out).values()
            for ex in lines
            if is_stage2(ex)
        }

    first = by_id(out1)
    assert len(first) == len(df) and first == by_id(out2)


def test_without_history_nothing_changes(tmp_path, hr_csv):
    manifest, out = prepare(tmp_path, "data_prep=hr_generic", f"input={hr_csv}")
    lines = [ex for s in read_split_files(out).values() for ex in s]
    assert not any(map(is_stage2, lines)) and "stage2_by_split" not in manifest["counts"]
    assert len(lines) == manifest["counts"]["written"]


def test_history_mapping_is_checked():
    cfg = compose_cfg(
        "data_prep=hr_generic",
        "input=x.csv",
        "out_dir=o",
        "++data_prep.profile={overtime: Overtime}",
        "++data_prep.history={overtime: Overtime, attrition: Left, employee_id: Id}",
    )
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    text = str(e.value)
    assert "data_prep.history and data_prep.profile both show ['overtime']" in text
    assert "data_prep.history shows personal column(s) ['employee_id']" in text
    assert "data_prep.history shows ['attrition'], the column(s) the labels come from" in text
    # An option the task's source does not read is refused by name.
    tickets = compose_cfg("data_prep=tickets", "input=x", "out_dir=o", "++data_prep.history={a: A}")
    with pytest.raises(ConfigError, match="data_prep.history does not apply to task tickets"):
        validate(tickets)


def test_the_leak_guard_covers_the_history(tmp_path):
    path, df = history_csv(tmp_path)
    df["status"] = np.where(df["attrition"] == "True", "gone", "here")
    path.write_bytes(to_csv_bytes(df))
    with pytest.raises(LabelLeakError, match="'status'"):
        prepare(tmp_path, "data_prep=hr_generic", f"input={path}", "++data_prep.history={status: Status}")


def test_ibm_history_mapping_on_the_real_file(tmp_path):
    from dp_helpers import shared

    csv = shared("hr/ibm_hr_attrition.csv")
    manifest, out = prepare(tmp_path, "data_prep=hr_ibm_attrition_history", f"input={csv}")
    files = read_split_files(out)
    assert manifest["counts"]["written"] == 1470 and manifest["counts"]["rejected"] == 0
    assert sum(len(v) for v in files.values()) == 2 * 1470
    s1, s2 = files["test"][0], files["test"][1]
    assert "- Overtime: " in s2.messages[3]["content"] and "Overtime" not in s1.messages[1]["content"]


# ---------------------------------------------------------------------------------------------- built-in task


def test_builtin_history_carries_signal_in_every_split():
    data = generate(0)
    for split, n in SPLITS.items():
        lines = data[split]
        stage1, stage2 = lines[0::2], lines[1::2]
        assert len(stage1) == len(stage2) == n
        profile_right = 0
        for s1, s2 in zip(stage1, stage2, strict=True):
            assert person_id(s2) == s1.id and s2.label == s1.label and s1.meta["history"]
            assert s2.messages[3]["content"] == history_turn(s1.meta["history"])
            ysp, perf, eng = _facts(s1)
            high = attrition_rule(ysp, perf, eng, s1.meta["history"]["manager_feedback"])
            assert s1.label["attrition"] == high
            # The earlier turn is the population answer, from the profile alone.
            assert (
                s2.messages[2]["content"]
                == f"Attrition risk: {'High' if profile_rule(ysp, perf, eng) else 'Low'}"
            )
            profile_right += profile_rule(ysp, perf, eng) == high
        # The profile alone cannot be right for everyone: the history decides some labels in every split.
        assert profile_right < n
    test = data["test"][0::2]
    right = sum(profile_rule(*_facts(ex)) == ex.label["attrition"] for ex in test)
    highs = sum(ex.label["attrition"] for ex in test)
    # The figures the end-to-end test relies on: majority 35 of 64, profile rule 53 of 64.
    assert (max(highs, 64 - highs), right) == (35, 53)


def _facts(ex):
    facts = re.findall(r": (\w+)", ex.messages[1]["content"])[2:5]
    return int(facts[1]), facts[0], int(facts[2])


def test_builtin_data_is_deterministic():
    assert [e.to_json() for e in generate(0)["train"]] == [e.to_json() for e in generate(0)["train"]]
    assert json.loads(generate(1)["test"][0].to_json())["id"] == "builtin-test-0000"


def test_builtin_folder_of_an_earlier_version_is_not_current(tmp_path):
    """The recipe rewrites the built-in data when the folder differs from what this version generates (a
    folder written before stage 2 existed held stage-1 lines only)."""
    from data_prep.builtin import is_current, write

    assert not is_current(tmp_path)
    paths = write(tmp_path)
    assert is_current(tmp_path)
    stage1_only = [line for line in paths["train"].read_text().splitlines() if "/stage2" not in line]
    paths["train"].write_text("\n".join(stage1_only) + "\n")
    assert not is_current(tmp_path)
    assert not is_current(tmp_path, seed=1) and is_current(write(tmp_path)["train"].parent)
