"""The evaluator's stage 1 / stage 2 comparison, pinned on hand-made predictions with the arithmetic written out."""

from __future__ import annotations

import json

import numpy as np
from omegaconf import OmegaConf

from data_prep.predictions import Prediction, write_predictions
from data_prep.schema import ChatExample, write_jsonl
from recipes import evaluate

# Five people of the built-in task (True: high risk), two departments.
PEOPLE = {"p1": (True, "A"), "p2": (True, "A"), "p3": (False, "B"), "p4": (False, "B"), "p5": (True, "B")}
STAGE1 = {"p1": "High", "p2": "Low", "p3": "High", "p4": "Low", "p5": "Low"}  # right: p1, p4 -> 2/5
STAGE2 = {"p1": "High", "p2": "High", "p3": "Low", "p4": "High", "p5": "Low"}  # right: p1, p2, p3 -> 3/5


def _write(tmp_path, stage1=STAGE1, stage2=STAGE2):
    refs = []
    for pid, (high, dept) in PEOPLE.items():
        prompt = [{"role": "system", "content": "s"}, {"role": "user", "content": f"profile of {pid}"}]
        answer = {"role": "assistant", "content": f"Attrition risk: {'High' if high else 'Low'}"}
        meta = {"department": dept}
        refs.append(ChatExample(pid, "builtin", [*prompt, answer], {"attrition": high}, meta))
        # data_prep's stage-2 line of the same person: not a reference of its own.
        history = [
            {"role": "assistant", "content": "Attrition risk: Low"},
            {"role": "user", "content": "history"},
        ]
        refs.append(
            ChatExample(
                f"{pid}/stage2",
                "builtin",
                [*prompt, *history, answer],
                {"attrition": high},
                {**meta, "stage": 2},
            )
        )
    write_jsonl(tmp_path / "refs.jsonl", refs)
    preds = [Prediction(pid, "builtin", "m", 1, f"Attrition risk: {a}") for pid, a in stage1.items()]
    preds += [Prediction(pid, "builtin", "m", 2, f"Attrition risk: {a}") for pid, a in stage2.items()]
    write_predictions(tmp_path / "preds.jsonl", preds)


def _report(tmp_path, samples=200, seed=0):
    cfg = OmegaConf.merge(
        OmegaConf.structured(evaluate.EvaluateConfig),
        {
            "predictions": str(tmp_path / "preds.jsonl"),
            "references": str(tmp_path / "refs.jsonl"),
            "out_dir": str(tmp_path / "eval"),
            "plots": False,
            "slices": ["department"],
            "bootstrap": {"samples": samples, "seed": seed, "slice_samples": samples},
        },
    )
    paths = evaluate.run(cfg)
    return json.loads(paths["report"].read_text()), paths["summary"].read_text()


def test_stage_comparison_by_hand(tmp_path):
    _write(tmp_path)
    report, summary = _report(tmp_path)
    # Stage-2 reference lines are the same people: five references, each scored at the latest stage (2).
    assert report["counts"]["references"] == 5 and report["stages_used"] == {"2": 5}
    task = report["stage_comparison"]["tasks"]["builtin"]
    assert task["people"] == 5 and task["answers_changed"] == 3  # p2, p3, p4
    g = task["groups"]["attrition_risk"]
    acc = g["metrics"]["accuracy"]
    assert acc["stage1"] == 2 / 5 and acc["stage2"] == 3 / 5
    assert abs(acc["difference"] - 1 / 5) < 1e-12
    # Macro F1, stage 1: high P 1/2 R 1/3 F1 0.4, low P 1/3 R 1/2 F1 0.4 -> 0.4; stage 2: high P 2/3 R 2/3 F1 2/3,
    # low P 1/2 R 1/2 F1 1/2 -> 7/12.
    f1 = g["metrics"]["macro_f1"]
    assert abs(f1["stage1"] - 0.4) < 1e-12 and abs(f1["stage2"] - 7 / 12) < 1e-12
    # Changed: p2 (wrong -> right), p3 (wrong -> right), p4 (right -> wrong).
    assert g["decisions"] == {"changed": 3, "to_right": 2, "to_wrong": 1, "wrong_to_wrong": 0}
    # The paired bootstrap resamples people, the same ones at both stages: accuracy's difference on a resample
    # is the mean of the per-person differences d = right2 - right1 = [0, +1, +1, -1, 0] over it.
    d = np.array([0, 1, 1, -1, 0])
    rng = np.random.default_rng(0)  # bootstrap.seed 0, the first (only) group
    diffs = [d[rng.integers(0, 5, 5)].mean() for _ in range(200)]
    assert acc["ci"] == [float(np.quantile(diffs, 0.025)), float(np.quantile(diffs, 0.975))]
    assert acc["ci"][0] < 0 < acc["ci"][1]
    # Slices: department A (p1, p2) 1/2 -> 2/2, +0.5; B (p3, p4, p5) 1/3 -> 1/3, 0.
    a, b = g["slices"]["department"][1], g["slices"]["department"][0]
    assert (b["value"], b["n"], a["value"], a["n"]) == ("B", 3, "A", 2)
    assert a["metrics"]["accuracy"]["stage1"] == 0.5 and a["metrics"]["accuracy"]["stage2"] == 1.0
    assert a["metrics"]["accuracy"]["difference"] == 0.5
    assert b["metrics"]["accuracy"]["difference"] == 0.0
    sentence = report["stage_comparison"]["summary"]
    assert sentence.startswith("Stage 2 made no measurable difference")
    assert (
        "accuracy 0.400 -> 0.600 (+0.200" in sentence
        and "3 of 5 answers changed: 2 to right, 1 to wrong" in sentence
    )
    assert sentence in summary and "## Stage 2 (personalised) against stage 1 (profile)" in summary


def test_verdicts_follow_the_interval(tmp_path):
    # Stage 2 right for everyone, stage 1 for no one: every resample's difference is +1.
    _write(
        tmp_path,
        stage1={p: ("Low" if h else "High") for p, (h, _) in PEOPLE.items()},
        stage2={p: ("High" if h else "Low") for p, (h, _) in PEOPLE.items()},
    )
    report, _ = _report(tmp_path)
    acc = report["stage_comparison"]["tasks"]["builtin"]["groups"]["attrition_risk"]["metrics"]["accuracy"]
    assert (acc["stage1"], acc["stage2"], acc["ci"]) == (0.0, 1.0, [1.0, 1.0])
    assert report["stage_comparison"]["summary"].startswith("Stage 2 helped")
    # The reverse hurts.
    _write(
        tmp_path,
        stage1={p: ("High" if h else "Low") for p, (h, _) in PEOPLE.items()},
        stage2={p: ("Low" if h else "High") for p, (h, _) in PEOPLE.items()},
    )
    report, _ = _report(tmp_path)
    assert report["stage_comparison"]["summary"].startswith("Stage 2 hurt")


def test_only_people_with_both_stages_parsed_are_compared(tmp_path):
    stage2 = {**STAGE2, "p5": "Medium-ish"}  # not a built-in answer: a parse failure at stage 2
    del stage2["p4"]  # no stage 2 for p4
    _write(tmp_path, stage2=stage2)
    report, _ = _report(tmp_path, samples=0)
    task = report["stage_comparison"]["tasks"]["builtin"]
    assert task["people"] == 3  # p1, p2, p3
    acc = task["groups"]["attrition_risk"]["metrics"]["accuracy"]
    assert (acc["stage1"], acc["stage2"], acc["ci"]) == (
        1 / 3,
        1.0,
        None,
    )  # p1 right at stage 1; all at stage 2
    assert "without intervals" in report["stage_comparison"]["summary"]


def test_no_comparison_with_one_stage(tmp_path):
    _write(tmp_path)
    lines = [json.loads(x) for x in (tmp_path / "preds.jsonl").read_text().splitlines()]
    (tmp_path / "preds.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines if x["stage"] == 1))
    report, summary = _report(tmp_path, samples=0)
    assert "stage_comparison" not in report and "Stage 2" not in summary
