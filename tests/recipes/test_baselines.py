"""Baselines: they learn a learnable rule, their predictions go through the evaluator, and on the real IBM HR
data their attrition figures are well above the trivial all-leave classifier."""

from __future__ import annotations

import json
import random

import pytest

from data_prep.schema import ChatExample, read_jsonl, write_jsonl
from data_prep.tasks.hr import profile_features
from recipes import baselines
from recipes.baselines import BaselinesError

SATISFACTION = ("Low", "Medium", "High", "Very High")


def _hr_example(rng: random.Random, i: int, split: str) -> tuple[ChatExample, dict]:
    overtime = rng.choice(("Yes", "No"))
    satisfaction = rng.choice(SATISFACTION)
    level = rng.randint(1, 5)
    hidden = rng.randint(0, 1)  # a column of the source file that the profile does not show
    left = overtime == "Yes" and satisfaction == "Low"
    user = (
        "Employee Profile:\n"
        f"- Department: {rng.choice(('Sales', 'R&D'))}\n"
        f"- Overtime: {overtime}\n"
        f"- Job Satisfaction: {satisfaction}\n"
        f"- Job Level: {level}\n"
        f"- Hire Date: 20{rng.randint(10, 20)}-0{rng.randint(1, 9)}-15\n\n"
        "Predict: 1) Expected tenure, 2) Time to next promotion, 3) Attrition risk"
    )
    ex = ChatExample(
        id=f"{split}-{i}",
        task="hr",
        messages=[{"role": "user", "content": user}, {"role": "assistant", "content": "-"}],
        # Leavers' tenure is observed (1 year per job level); stayers' is a lower bound.
        label={
            "tenure_years": float(level),
            "tenure_censored": not left,
            "promotion_years": None,
            "promotion_censored": True,
            "attrition": bool(hidden) if split.startswith("csv") else left,
        },
        meta={"department": "x", "source_line": i + 2},
    )
    return ex, {"Overtime": overtime, "Hidden": hidden, "JobSatisfaction": satisfaction}


def _write_hr(tmp_path, prefix="", n_train=240, n_test=120):
    rng = random.Random(0)
    rows = {}
    for split, n in (("train", n_train), ("test", n_test)):
        made = [_hr_example(rng, i + (0 if split == "train" else n_train), prefix + split) for i in range(n)]
        write_jsonl(tmp_path / f"{split}.jsonl", [ex for ex, _ in made])
        rows.update({ex.meta["source_line"]: r for ex, r in made})
    return rows


@pytest.fixture
def cfg_for(compose):
    """conf/baselines.yaml on a data folder, writing under it, without intervals or plots."""

    def make(tmp_path, *overrides):
        return compose(
            "baselines",
            [
                f"data_dir={tmp_path}",
                f"out_dir={tmp_path / 'out'}",
                "bootstrap_samples=0",
                "plots=false",
                *overrides,
            ],
        )

    return make


def _report(tmp_path, model):
    return json.loads((tmp_path / "out" / "eval" / model / "report.json").read_text(encoding="utf-8"))


def test_profile_features_are_typed():
    ex = ChatExample(
        "a",
        "hr",
        [
            {
                "role": "user",
                "content": "Employee Profile:\n- Age: 41\n- Income: 5,993\n- Hire Date: 2020-01-01\n- Dept: R&D\n- Empty: ",
            },
            {"role": "assistant", "content": "-"},
        ],
    )
    # 2020-01-01 is day 1 of 2020: 2020 + 0 / 366.
    assert profile_features(ex) == {"Age": 41.0, "Income": 5993.0, "Hire Date": 2020.0, "Dept": "R&D"}


def test_hr_baselines_learn_a_learnable_rule(tmp_path, cfg_for):
    _write_hr(tmp_path)
    paths = baselines.run(cfg_for(tmp_path))
    assert set(paths) == {"logistic_regression", "gradient_boosting", "summary"}
    for model in ("logistic_regression", "gradient_boosting"):
        lines = [json.loads(x) for x in paths[model].read_text(encoding="utf-8").splitlines()]
        assert len(lines) == 120 and {x["model"] for x in lines} == {f"baseline/{model}"}
        assert {x["stage"] for x in lines} == {1}
        rep = _report(tmp_path, model)
        # Every answer the baseline writes parses: nothing missing, nothing failed.
        assert (rep["counts"]["scored"], rep["counts"]["parse_failures"], rep["counts"]["missing"]) == (
            120,
            0,
            0,
        )
        att = rep["tasks"]["hr"]["attrition"]["metrics"]
        # "Overtime and low satisfaction" is an AND of two one-hot features: both models get it (nearly) right.
        assert att["f1"] >= 0.9, (model, att)
        # Tenure = job level for leavers: the regressor, fit on uncensored labels only, recovers it.
        assert rep["tasks"]["hr"]["tenure"]["metrics"]["uncensored"]["mae"] < 0.5
        # No promotion was ever observed in training: every answer says "not expected".
        assert all(json.loads(x["raw"])["time_to_promotion_years"] is None for x in lines)
    assert "| logistic_regression |" in paths["summary"].read_text(encoding="utf-8")


def test_source_csv_features_come_from_the_source_record(tmp_path, cfg_for):
    rows = _write_hr(tmp_path, prefix="csv-")
    csv = tmp_path / "source.csv"
    header = "Overtime,Hidden,JobSatisfaction,EmployeeNumber\n"
    body = "".join(
        f"{r['Overtime']},{r['Hidden']},{r['JobSatisfaction']},{line}\n" for line, r in sorted(rows.items())
    )
    csv.write_text(header + body, encoding="utf-8")
    # The label is the CSV's Hidden column, which the profile does not show.
    baselines.run(cfg_for(tmp_path, "hr.models=[logistic_regression]"))
    blind = _report(tmp_path, "logistic_regression")["tasks"]["hr"]["attrition"]["metrics"]
    baselines.run(cfg_for(tmp_path, "hr.models=[logistic_regression]", f"hr.source_csv={csv}"))
    seeing = _report(tmp_path, "logistic_regression")["tasks"]["hr"]["attrition"]["metrics"]
    assert seeing["accuracy"] == 1.0
    assert blind["accuracy"] < 0.8

    csv.write_text(header + body.splitlines()[0] + "\n", encoding="utf-8")
    with pytest.raises(BaselinesError, match="meta.source_line"):
        baselines.run(cfg_for(tmp_path, f"hr.source_csv={csv}"))


def test_ticket_baseline_learns_keywords(tmp_path, cfg_for):
    rng = random.Random(1)
    words = {
        "Billing and Payments": ["invoice", "refund", "charged"],
        "IT Support": ["password", "login", "vpn"],
        "Technical Support": ["crash", "error", "freeze"],
    }
    filler = "please help me today thanks the a with my".split()
    for split, n in (("train", 150), ("test", 60)):
        exs = []
        for i in range(n):
            queue = rng.choice(sorted(words))
            urgent = rng.random() < 0.5
            text = " ".join(
                rng.sample(filler, 4) + [rng.choice(words[queue])] + (["urgent"] if urgent else [])
            )
            exs.append(
                ChatExample(
                    f"{split}-{i}",
                    "tickets",
                    [
                        {"role": "user", "content": f"Subject: issue\nBody: {text}"},
                        {"role": "assistant", "content": "-"},
                    ],
                    label={"queue": queue, "priority": "high" if urgent else "low"},
                    meta={"language": rng.choice(("en", "de"))},
                )
            )
        write_jsonl(tmp_path / f"{split}.jsonl", exs)
    baselines.run(cfg_for(tmp_path))
    rep = _report(tmp_path, "tfidf_logistic_regression")
    assert rep["counts"]["scored"] == 60
    assert rep["tasks"]["tickets"]["queue"]["metrics"]["accuracy"] >= 0.9
    assert rep["tasks"]["tickets"]["priority"]["metrics"]["accuracy"] >= 0.9
    assert {r["value"] for r in rep["tasks"]["tickets"]["queue"]["slices"]["language"]} == {"en", "de"}


def test_validate_lists_every_problem(tmp_path, cfg_for):
    cfg = cfg_for(tmp_path, "hr.models=[svm]", "hr.risk_bands=[0.6,0.2]", "hr.class_weight=heavy")
    with pytest.raises(BaselinesError) as e:
        baselines.validate(cfg)
    text = str(e.value)
    for needle in (
        "train.jsonl does not exist",
        "python -m data_prep",
        "['svm']",
        "risk_bands",
        "class_weight",
    ):
        assert needle in text


def prepare_ibm(compose, mapping: str, ibm_csv, data) -> None:
    """The documented split of the IBM file: data_prep's seeded stratified split, 80% train / 20% test, seed 0."""
    from data_prep.prepare import run as prepare

    prepare(
        compose(
            "data_prep",
            [
                f"data_prep={mapping}",
                f"input={ibm_csv}",
                f"out_dir={data}",
                "splits.train=0.8",
                "splits.validation=0.0",
                "splits.test=0.2",
                "seed=0",
                "pii.mode=drop",
                "answer_format=json",
                "progress=false",
            ],
        ),
        log_fn=lambda _: None,
    )


def test_ibm_attrition_baselines_beat_the_trivial_classifier(tmp_path, ibm_csv, compose):
    data = tmp_path / "ibm"
    # The documented split: data_prep's seeded stratified split, 80% train / 20% test, seed 0.
    prepare_ibm(compose, "hr_ibm_attrition", ibm_csv, data)
    test = list(read_jsonl(data / "test.jsonl"))
    n, pos = len(test), sum(ex.label["attrition"] for ex in test)
    assert (n, pos) == (294, 47)  # 1,470 x 0.2; 237 leavers x 0.2, stratified
    # Calling everyone a leaver: precision 47/294, recall 1 -> F1 = 2 * 47 / (294 + 47) = 0.276.
    trivial_f1 = 2 * pos / (n + pos)
    base_rate = pos / n

    for route, overrides, margin in (
        ("profile", [], 0.05),
        ("all_columns", [f"hr.source_csv={ibm_csv}"], 0.05),
    ):
        out = tmp_path / route
        cfg = compose(
            "baselines",
            [f"data_dir={data}", f"out_dir={out}", "bootstrap_samples=0", "plots=false", *overrides],
        )
        baselines.run(cfg)
        for model in ("logistic_regression", "gradient_boosting"):
            rep = json.loads((out / "eval" / model / "report.json").read_text(encoding="utf-8"))
            assert rep["counts"]["scored"] == n
            m = rep["tasks"]["hr"]["attrition"]["metrics"]
            print(
                route, model, {k: round(m[k], 3) for k in ("precision", "recall", "f1", "roc_auc", "pr_auc")}
            )
            assert m["f1"] > trivial_f1 + margin, (route, model, m["f1"], trivial_f1)
            assert m["precision"] > 2 * base_rate, (route, model, m["precision"])
            assert m["roc_auc"] > 0.7, (route, model, m["roc_auc"])
    # With every column, logistic regression is the strongest: F1 about twice the trivial one.
    rep = json.loads((tmp_path / "all_columns" / "eval" / "logistic_regression" / "report.json").read_text())
    assert rep["tasks"]["hr"]["attrition"]["metrics"]["f1"] > trivial_f1 + 0.2


def _write_hr_with_history(tmp_path, n_train=240, n_test=120):
    """Stage-1 lines show the profile without overtime and satisfaction; each person's stage-2 line (as data_prep
    writes it) adds them as history. The label is "overtime and low satisfaction": only stage 2 can see it."""
    from data_prep.stage2 import history_turn, stage2_id, stage2_messages

    rng = random.Random(0)
    for split, n in (("train", n_train), ("test", n_test)):
        lines = []
        for i in range(n):
            ex, row = _hr_example(rng, i, split)
            profile = "\n".join(
                line
                for line in ex.messages[0]["content"].splitlines()
                if "Overtime" not in line and "Satisf" not in line
            )
            prompt = [{"role": "user", "content": profile}]
            answer = {"role": "assistant", "content": "-"}
            turn = history_turn({"Overtime": row["Overtime"], "Job Satisfaction": row["JobSatisfaction"]})
            lines.append(ChatExample(ex.id, "hr", [*prompt, answer], ex.label, ex.meta))
            lines.append(
                ChatExample(
                    stage2_id(ex.id),
                    "hr",
                    [*stage2_messages(prompt, "-", turn), answer],
                    ex.label,
                    {**ex.meta, "stage": 2},
                )
            )
        write_jsonl(tmp_path / f"{split}.jsonl", lines)


def test_baselines_report_profile_and_history_as_stage_1_and_stage_2(tmp_path, cfg_for):
    _write_hr_with_history(tmp_path)
    paths = baselines.run(cfg_for(tmp_path, "hr.models=[logistic_regression]", "bootstrap_samples=200"))
    lines = [json.loads(x) for x in paths["logistic_regression"].read_text(encoding="utf-8").splitlines()]
    # Both stages for every test person, under the person's (stage-1) id.
    assert sorted((x["id"], x["stage"]) for x in lines) == sorted(
        (f"test-{i}", s) for i in range(120) for s in (1, 2)
    )
    rep = _report(tmp_path, "logistic_regression")
    assert rep["counts"]["references"] == rep["counts"]["scored"] == 120
    f1 = rep["stage_comparison"]["tasks"]["hr"]["groups"]["attrition"]["metrics"]["f1"]
    # The profile cannot see the rule (no leaver is called); the history gives it away.
    assert f1["stage1"] < 0.3 and f1["stage2"] >= 0.9 and f1["ci"][0] > 0.5, f1
    assert rep["stage_comparison"]["summary"].startswith("Stage 2 helped")
    summary = paths["summary"].read_text(encoding="utf-8")
    for row in ("| logistic_regression stage 1 (profile) |", "| logistic_regression stage 2 (+ history) |"):
        assert row in summary
    assert "| logistic_regression stage 2 - stage 1 |" in summary and "Stage 2 helped" in summary


def test_ibm_history_mapping_stage_2_beats_stage_1(tmp_path, ibm_csv, compose):
    """The README's stage 1 / stage 2 table: the four history columns (satisfactions, involvement, overtime) lift
    logistic regression's leaver F1 from 0.21 to 0.47 on the same 294 test employees."""

    data = tmp_path / "ibm_history"
    prepare_ibm(compose, "hr_ibm_attrition_history", ibm_csv, data)
    out = tmp_path / "out"
    cfg = compose(
        "baselines",
        [
            f"data_dir={data}",
            f"out_dir={out}",
            "hr.models=[logistic_regression]",
            "bootstrap_samples=200",
            "plots=false",
        ],
    )
    baselines.run(cfg)
    rep = json.loads((out / "eval" / "logistic_regression" / "report.json").read_text(encoding="utf-8"))
    assert rep["counts"]["references"] == rep["counts"]["scored"] == 294
    m = rep["stage_comparison"]["tasks"]["hr"]["groups"]["attrition"]["metrics"]
    print({k: (round(v["stage1"], 3), round(v["stage2"], 3), v["ci"]) for k, v in m.items()})
    assert (round(m["f1"]["stage1"], 3), round(m["f1"]["stage2"], 3)) == (0.214, 0.466)
    assert m["f1"]["ci"][0] > 0 and m["roc_auc"]["ci"][0] > 0
    assert rep["stage_comparison"]["summary"].startswith("Stage 2 helped")
