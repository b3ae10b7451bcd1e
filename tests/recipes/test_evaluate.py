"""The evaluator: every metric against values worked out by hand on tests/recipes/fixtures, bad lines counted.

The fixture (references.jsonl: 8 HR, 5 ticket and 4 rubric examples; predictions.jsonl: 23 lines) is laid out
so each number below can be checked with pencil and paper. Scored examples and their predictions:

    HR    id    attrition  p     tenure (label, censored, pred)   promotion (label, censored, pred)   department
          hr-1  True      0.85   2.0  no   2.5                    1.0   no   1.5                        Engineering
          hr-2  False     0.42   4.0  yes  3.0                    2.0   yes  none                       Engineering
          hr-3  True      0.45   1.0  no   2.0                    (no label)                            Sales
          hr-7  False     0.65   5.0  yes  6.0                    3.0   yes  2.0                        Sales
          hr-8  False     0.15   3.0  no   3.0                    0.5   no   none                       Sales
    hr-1 has a stage-1 line (p 0.30) and a stage-2 line (p 0.85); "latest" takes stage 2.

    tickets id   queue (label -> pred)                      priority (label -> pred)   language
            t-1  Technical Support -> Technical Support     high -> high               en
            t-2  Billing and Payments -> Billing and Pay.   low -> medium              de
            t-3  Billing and Payments -> billing and pay.   medium -> medium           en
            t-5  IT Support -> Technical Support            (no label)                 de

    rubric  r-1 7/10 -> 7/10;  r-2 3/10 -> 3/5 (= 6/10);  r-3 4/10 -> 5/10
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hydra.errors import ConfigCompositionException
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError

from data_prep import metrics
from data_prep.predictions import Prediction, read_predictions, write_predictions
from recipes import evaluate
from recipes.evaluate import EvaluateConfig, EvaluateError, build
from recipes.harmony_text import NoFinalChannel, final_text

approx = pytest.approx


@pytest.fixture
def report(fixture_eval):
    return build(fixture_eval()).report


# ---------------------------------------------------------------------------------------------- counting


def test_every_reference_is_scored_failed_or_missing(report):
    c = report["counts"]
    # 23 lines = 17 joinable + 4 malformed (line 9 bad JSON, line 16 no id, line 20 stage 3, line 22 a list)
    # + ... the 17 joinable include a duplicate t-1 (line 11) and the extra id ghost-1.
    assert c["prediction_lines"] == 23
    assert c["malformed_lines"] == 4
    assert report["malformed_lines"]["by_kind"] == {"bad_json": 1, "missing_field": 1, "wrong_type": 2}
    assert [m["line"] for m in report["malformed_lines"]["examples"]] == [9, 16, 20, 22]
    assert c["duplicate_lines"] == 1 and report["duplicate_lines"] == [11]
    assert c["extra"] == 1 and report["extra_ids"] == ["ghost-1"]
    # 17 references = 12 scored (5 hr + 4 tickets + 3 rubric) + 4 parse failures + 1 missing (hr-5: its line is bad JSON).
    assert (c["references"], c["scored"], c["parse_failures"], c["missing"]) == (17, 12, 4, 1)
    assert c["scored"] + c["parse_failures"] + c["missing"] + c["unsupported"] == c["references"]
    assert report["missing_ids"] == ["hr-5"]
    assert report["per_task_counts"]["hr"] == {
        "references": 8,
        "scored": 5,
        "parse_failures": 2,
        "missing": 1,
        "unsupported": 0,
    }
    by_id = {f["id"]: f["kind"] for f in report["parse_failures"]["examples"]}
    assert by_id == {
        "hr-4": "empty_final_channel",
        "hr-6": "unparseable_answer",
        "t-4": "wrong_type",
        "r-4": "no_final_channel",
    }
    # 16 chosen lines join a reference: hr-1 at stage 2, the other 15 at stage 1.
    assert report["stages_used"] == {"1": 15, "2": 1}


# ---------------------------------------------------------------------------------------------- HR


def test_attrition_metrics_by_hand(report):
    m = report["tasks"]["hr"]["attrition"]["metrics"]
    # y = [T, F, T, F, F], p = [0.85, 0.42, 0.45, 0.65, 0.15]; p >= 0.5 -> [T, F, F, T, F]
    # tp = hr-1, fp = hr-7, fn = hr-3, tn = hr-2, hr-8
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (1, 1, 1, 2)
    assert m["precision"] == approx(1 / 2)  # 1 / (1 + 1)
    assert m["recall"] == approx(1 / 2)  # 1 / (1 + 1)
    assert m["f1"] == approx(1 / 2)  # 2 * 0.5 * 0.5 / (0.5 + 0.5)
    assert m["accuracy"] == approx(3 / 5)
    # Stayers as the class: predicted stayers hr-2, hr-3, hr-8 (2 right), true stayers hr-2, hr-7, hr-8 (2 found):
    # P = R = F1 = 2/3. Macro = (1/2 + 2/3) / 2; weighted by support (2 leavers, 3 stayers) = (2/2 + 3 * 2/3) / 5.
    assert m["f1_macro"] == approx(7 / 12)
    assert m["f1_weighted"] == approx(3 / 5)
    # ROC-AUC: pairs (leaver, stayer) ranked right: 0.85 beats 0.42, 0.65, 0.15 (3); 0.45 beats 0.42, 0.15 (2)
    # -> 5 of 2 x 3 = 6 pairs.
    assert m["roc_auc"] == approx(5 / 6)
    # PR-AUC (average precision): ranked 0.85 T, 0.65 F, 0.45 T, 0.42 F, 0.15 F;
    # recall steps 0 -> 0.5 at precision 1/1 and 0.5 -> 1 at precision 2/3: 0.5 * 1 + 0.5 * 2/3 = 5/6.
    assert m["pr_auc"] == approx(5 / 6)
    # Brier: (0.15^2 + 0.42^2 + 0.55^2 + 0.65^2 + 0.15^2) / 5 = (0.0225 + 0.1764 + 0.3025 + 0.4225 + 0.0225) / 5
    assert m["brier"] == approx(0.9464 / 5)
    # Ten uniform bins: 0.15 -> [0.1, 0.2), 0.42 and 0.45 -> [0.4, 0.5), 0.65 -> [0.6, 0.7), 0.85 -> [0.8, 0.9).
    cal = m["calibration"]
    assert cal["count"] == [1, 2, 1, 1]
    assert cal["mean_predicted"] == approx([0.15, (0.42 + 0.45) / 2, 0.65, 0.85])
    assert cal["fraction_positive"] == approx(
        [0.0, 1 / 2, 0.0, 1.0]
    )  # hr-8 F; hr-2 F + hr-3 T; hr-7 F; hr-1 T


def test_tenure_and_promotion_by_hand(report):
    tenure = report["tasks"]["hr"]["tenure"]["metrics"]
    # Uncensored: hr-1 |2.5-2| = 0.5, hr-3 |2-1| = 1, hr-8 |3-3| = 0.
    assert tenure["uncensored"]["n"] == 3
    assert tenure["uncensored"]["mae"] == approx(1.5 / 3)
    assert tenure["uncensored"]["rmse"] == approx(math.sqrt((0.25 + 1 + 0) / 3))
    # Censored: hr-2 predicts 3.0 below its bound 4.0 (a known error); hr-7 predicts 6.0 above 5.0.
    # No prediction here is an "at least" answer (a lower bound), so none is set apart from the point estimates.
    assert tenure["censored"] == {
        "n": 2,
        "below_bound": 1,
        "below_bound_share": approx(1 / 2),
        "predicted_at_least": 0,
    }
    assert (tenure["uncensored"]["predicted_at_least"], tenure["uncensored"]["at_least_above_label"]) == (
        0,
        0,
    )

    promo = report["tasks"]["hr"]["promotion"]["metrics"]
    # Uncensored: hr-1 |1.5-1| = 0.5; hr-8 predicts "not expected": counted, not averaged. hr-3 has no label.
    assert promo["uncensored"] == {
        "n": 2,
        "predicted_none": 1,
        "mae": approx(0.5),
        "rmse": approx(0.5),
        "predicted_at_least": 0,
        "at_least_above_label": 0,
    }
    # Censored: hr-2 "not expected" is never below; hr-7 predicts 2.0 below its bound 3.0.
    assert promo["censored"] == {
        "n": 2,
        "below_bound": 1,
        "below_bound_share": approx(1 / 2),
        "predicted_at_least": 0,
    }


def test_department_slices_by_hand(report):
    rows = {r["value"]: r for r in report["tasks"]["hr"]["attrition"]["slices"]["department"]}
    assert [r["value"] for r in report["tasks"]["hr"]["attrition"]["slices"]["department"]] == [
        "Sales",
        "Engineering",
    ]
    # Engineering: hr-1 (T, 0.85) and hr-2 (F, 0.42): both right.
    eng = rows["Engineering"]
    assert (eng["n"], eng["precision"], eng["recall"], eng["f1"], eng["roc_auc"]) == (2, 1.0, 1.0, 1.0, 1.0)
    assert eng["brier"] == approx((0.15**2 + 0.42**2) / 2)
    # Sales: hr-3 (T, 0.45) missed, hr-7 (F, 0.65) false alarm, hr-8 (F, 0.15): tp = 0.
    sales = rows["Sales"]
    assert (sales["n"], sales["precision"], sales["recall"], sales["f1"]) == (3, 0.0, 0.0, 0.0)
    assert sales["roc_auc"] == approx(1 / 2)  # 0.45 beats 0.15, loses to 0.65
    assert sales["brier"] == approx((0.55**2 + 0.65**2 + 0.15**2) / 3)


def test_risk_or_probability_decides_who_is_a_predicted_leaver(tmp_path, fixture_eval):
    # data_prep's answers state the cohort's rate as the probability and the call as the risk level:
    # hr-1 (left) "high" at 0.26, hr-2 (stayed) "low" at 0.26, hr-3 (left) "medium" at 0.60.
    def answer(risk, p):
        return json.dumps(
            {
                "tenure_years": 1,
                "time_to_promotion_years": None,
                "attrition_risk": risk,
                "attrition_probability": p,
            }
        )

    rows = [("hr-1", "high", 0.26), ("hr-2", "low", 0.26), ("hr-3", "medium", 0.6)]
    path = _lines(
        tmp_path, [{"id": i, "task": "hr", "model": "m", "stage": 1, "raw": answer(r, p)} for i, r, p in rows]
    )
    by_risk = build(fixture_eval(f"predictions={path}")).report["tasks"]["hr"]["attrition"]
    # Risk: predicted leavers {hr-1}; true leavers {hr-1, hr-3} -> P = 1/1, R = 1/2.
    assert by_risk["decision"] == "attrition_risk == high"
    m = by_risk["metrics"]
    assert (m["tp"], m["fp"], m["fn"], m["tn"], m["precision"], m["recall"]) == (1, 0, 1, 1, 1.0, 0.5)
    assert m["threshold"] is None
    by_p = build(fixture_eval(f"predictions={path}", "attrition_decision=probability")).report["tasks"]["hr"]
    # Probability >= 0.5: predicted leavers {hr-3} -> P = 1/1, R = 1/2, but a different leaver found.
    m = by_p["attrition"]["metrics"]
    assert (m["tp"], m["fp"], m["fn"], m["tn"], m["threshold"]) == (1, 0, 1, 1, 0.5)
    assert by_p["attrition"]["decision"] == "attrition_probability >= 0.5"
    # The ranking metrics use the probability either way: leavers at 0.26 and 0.6, stayer at 0.26 -> (0.5 + 1) / 2.
    assert by_risk["metrics"]["roc_auc"] == by_p["attrition"]["metrics"]["roc_auc"] == approx(3 / 4)


def test_stage_one_and_stage_two(fixture_eval):
    one = build(fixture_eval("stage=1")).report
    m = one["tasks"]["hr"]["attrition"]["metrics"]
    # hr-1 at stage 1 says 0.30: p = [0.30, 0.42, 0.45, 0.65, 0.15] -> only hr-7 predicted to leave (wrongly).
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (0, 1, 2, 2)
    assert (m["precision"], m["recall"], m["f1"]) == (0.0, 0.0, 0.0)
    # Pairs ranked right: 0.30 beats 0.15 (1); 0.45 beats 0.42, 0.15 (2) -> 3 of 6.
    assert m["roc_auc"] == approx(1 / 2)
    two = build(fixture_eval("stage=2")).report
    # Only hr-1 has a stage-2 line: 1 scored, the other 16 references are missing at that stage.
    assert (two["counts"]["scored"], two["counts"]["missing"]) == (1, 16)


# ---------------------------------------------------------------------------------------------- tickets, rubric


def test_ticket_metrics_by_hand(report):
    q = report["tasks"]["tickets"]["queue"]["metrics"]
    # y = [TS, BP, BP, IT], pred = [TS, BP, BP (lower-case, matched), TS]: 3 of 4 right.
    assert q["accuracy"] == approx(3 / 4)
    # Per class over the reference queues: BP F1 = 1 (2 tp); IT F1 = 0 (missed); TS P = 1/2, R = 1, F1 = 2/3.
    assert q["macro_f1"] == approx((1 + 0 + 2 / 3) / 3)
    assert q["confusion"]["labels"] == ["Billing and Payments", "IT Support", "Technical Support"]
    assert q["confusion"]["matrix"] == [[2, 0, 0], [0, 0, 1], [0, 0, 1]]
    p = report["tasks"]["tickets"]["priority"]["metrics"]
    # (high, high), (low, medium), (medium, medium): 2 of 3; high F1 1, low 0, medium P 1/2 R 1 -> 2/3.
    assert p["accuracy"] == approx(2 / 3)
    assert p["macro_f1"] == approx((1 + 0 + 2 / 3) / 3)
    assert p["confusion"]["matrix"] == [[1, 0, 0], [0, 0, 1], [0, 0, 1]]
    lang = {r["value"]: r for r in report["tasks"]["tickets"]["queue"]["slices"]["language"]}
    # de: t-2 right, t-5 wrong -> accuracy 1/2; macro-F1 over {BP, IT} = (1 + 0) / 2. en: t-1, t-3 right.
    assert (lang["de"]["n"], lang["de"]["accuracy"], lang["de"]["macro_f1"]) == (2, approx(0.5), approx(0.5))
    assert (lang["en"]["n"], lang["en"]["accuracy"], lang["en"]["macro_f1"]) == (2, 1.0, 1.0)


def test_rubric_metrics_by_hand(report):
    m = report["tasks"]["rubric"]["score"]["metrics"]
    # r-2 says 3/5 = 6/10 on the reference's scale: only r-1 is exact.
    assert m["exact_match"] == approx(1 / 3)
    # |0.7-0.7| + |0.3-0.6| + |0.4-0.5| = 0.4 over 3.
    assert m["mae_normalised"] == approx(0.4 / 3)
    # QWK on points 3..7 (weights (i-j)^2 between label positions 0..4): true [7, 3, 4], pred [7, 6, 5].
    # Observed weight: (7,7) 0 + (3,6) 9 + (4,5) 1 = 10.
    # Expected: each of true {3,4,7} x pred {5,6,7} has 1/3: (4+9+16 + 1+4+9 + 4+1+0) / 3 = 16.
    assert m["qwk"] == approx(1 - 10 / 16)


# ---------------------------------------------------------------------------------------------- bad input


def _lines(tmp_path, rows):
    path = tmp_path / "p.jsonl"
    path.write_text(
        "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n", encoding="utf-8"
    )
    return path


def test_failure_kinds_for_joinable_lines(tmp_path, fixture_eval):
    base = {"task": "tickets", "model": "m", "stage": 1}
    path = _lines(
        tmp_path,
        [
            {**base, "id": "t-1"},  # neither raw nor parsed
            {**base, "id": "t-2", "raw": None, "parsed": ["IT Support"]},  # parsed of the wrong type
            {**base, "id": "t-3", "task": "rubric", "raw": "Queue: IT Support"},  # task mismatch
            {**base, "id": "t-4", "model": 7, "raw": "Queue: IT Support"},  # model of the wrong type
            {**base, "id": "t-5", "raw": None, "parsed": {"queue": "IT Support"}},  # fine: parsed only
        ],
    )
    rep = build(fixture_eval(f"predictions={path}")).report
    kinds = {f["id"]: f["kind"] for f in rep["parse_failures"]["examples"]}
    assert kinds == {"t-1": "missing_field", "t-2": "wrong_type", "t-3": "task_mismatch", "t-4": "wrong_type"}
    assert rep["counts"]["scored"] == 1
    assert rep["tasks"]["tickets"]["queue"]["metrics"]["accuracy"] == 1.0  # t-5: IT Support -> IT Support


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)
prediction_like = st.fixed_dictionaries(
    {},
    optional={
        "id": st.sampled_from(["hr-1", "t-1", "r-1", "nobody"]) | json_values,
        "stage": st.sampled_from([1, 2, 3, "1", True]) | json_values,
        "task": st.sampled_from(["hr", "tickets", "rubric"]) | json_values,
        "model": st.just("m") | json_values,
        "raw": st.sampled_from(["", "<|channel|>final<|message|><|return|>", "Queue: X", "{", "Score: 3/2"])
        | st.text(max_size=40)
        | json_values,
        "parsed": json_values,
    },
)
garbage_line = st.one_of(
    prediction_like.map(json.dumps),
    json_values.map(json.dumps),
    st.text(max_size=40).filter(lambda s: "\n" not in s),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(garbage_line, max_size=12))
def test_garbage_never_crashes_and_counts_add_up(tmp_path, fixture_eval, lines):
    path = tmp_path / "garbage.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    try:
        rep = build(fixture_eval(f"predictions={path}")).report
    except EvaluateError as e:
        # The only refusal: several model names in one file, with the override that picks one.
        assert "model=" in str(e)
        return
    c = rep["counts"]
    n_lines = sum(1 for line in path.read_text(encoding="utf-8").split("\n") if line.strip())
    assert c["prediction_lines"] == n_lines
    assert c["scored"] + c["parse_failures"] + c["missing"] + c["unsupported"] == c["references"] == 17


def test_several_models_need_a_choice(tmp_path, fixture_eval):
    path = _lines(
        tmp_path,
        [
            {"id": "t-1", "task": "tickets", "model": "a", "stage": 1, "raw": "Queue: Technical Support"},
            {"id": "t-1", "task": "tickets", "model": "b", "stage": 1, "raw": "Queue: IT Support"},
        ],
    )
    with pytest.raises(EvaluateError, match=r"model=a"):
        build(fixture_eval(f"predictions={path}"))
    rep = build(fixture_eval(f"predictions={path}", "model=b")).report
    assert rep["counts"]["other_model_lines"] == 1
    assert rep["tasks"]["tickets"]["queue"]["metrics"]["accuracy"] == 0.0


def test_validate_lists_every_problem(tmp_path, fixture_eval):
    cfg = fixture_eval(
        f"predictions={tmp_path / 'nope.jsonl'}", "stage=3", "calibration_bins=0", "bootstrap.confidence=1.5"
    )
    with pytest.raises(EvaluateError) as e:
        evaluate.validate(cfg)
    text = str(e.value)
    for needle in (
        "nope.jsonl does not exist",
        "stage='3'",
        "calibration_bins=0",
        "bootstrap.confidence=1.5",
    ):
        assert needle in text


def test_config_rejects_unknown_keys(compose):
    with pytest.raises((ConfigCompositionException, ConfigKeyError)):
        compose("evaluate", ["predictions=p", "references=r", "bootstrapp.samples=3"])


# ---------------------------------------------------------------------------------------------- pieces


@pytest.mark.parametrize(
    ("raw", "final"),
    [
        ("Queue: IT Support", "Queue: IT Support"),
        ("<|channel|>final<|message|> Score: 7/10 <|return|>", "Score: 7/10"),
        ('<|channel|>final <|constrain|>json<|message|>{"queue": "A"}<|end|>', '{"queue": "A"}'),
        (
            "<|start|>assistant<|channel|>analysis<|message|>hmm<|end|>"
            "<|start|>assistant<|channel|>final<|message|>first<|end|>"
            "<|start|>assistant<|channel|>final<|message|>second",
            "second",
        ),
        ("analysisThe profile shows...assistantfinalQueue: Billing", "Queue: Billing"),
        ("<|channel|>final<|message|>   <|return|>", ""),
    ],
)
def test_final_text(raw, final):
    assert final_text(raw) == final


def test_final_text_without_final_channel():
    with pytest.raises(NoFinalChannel, match=r"\['analysis'\].*max_new_tokens"):
        final_text("<|channel|>analysis<|message|>still thinking")


def test_predictions_round_trip(tmp_path):
    preds = [
        Prediction("a", "tickets", "m", 1, "Queue: X"),
        Prediction("a", "tickets", "m", 2, None, {"queue": "Y", "priority": None}),
    ]
    path = tmp_path / "out" / "p.jsonl"
    assert write_predictions(path, preds) == 2
    ok, bad = read_predictions(path)
    assert bad == []
    assert [(p.id, p.stage, p.raw, p.parsed, p.problem) for p in ok] == [
        ("a", 1, "Queue: X", None, None),
        ("a", 2, None, {"queue": "Y", "priority": None}, None),
    ]


def test_bootstrap_is_seeded_and_brackets_the_estimate(fixture_eval):
    a = build(fixture_eval("bootstrap.samples=100", "bootstrap.seed=3")).report["tasks"]
    b = build(fixture_eval("bootstrap.samples=100", "bootstrap.seed=3")).report["tasks"]
    c = build(fixture_eval("bootstrap.samples=100", "bootstrap.seed=4")).report["tasks"]
    assert a["hr"]["attrition"]["ci"] == b["hr"]["attrition"]["ci"]
    assert a["hr"]["attrition"]["ci"] != c["hr"]["attrition"]["ci"]
    for task in a.values():
        for entry in task.values():
            for k, ci in entry["ci"].items():
                v = entry["headline"][k]
                if ci is not None and v is not None:
                    assert ci[0] - 1e-12 <= v <= ci[1] + 1e-12, (k, v, ci)
    # Promotion MAE rests on one example (hr-1, error 0.5): every resample gives 0.5.
    assert a["hr"]["promotion"]["ci"]["mae"] == approx([0.5, 0.5])


def test_run_writes_report_summary_and_plots(fixture_eval, tmp_path):
    cfg = fixture_eval("plots=true", "bootstrap.samples=50")
    paths = evaluate.run(cfg)
    assert set(paths) == {
        "report",
        "summary",
        "calibration_hr",
        "confusion_tickets_queue",
        "confusion_tickets_priority",
    }
    for name in ("calibration_hr", "confusion_tickets_queue"):
        assert paths[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads(paths["report"].read_text(encoding="utf-8"))
    assert report["counts"]["scored"] == 12
    summary = paths["summary"].read_text(encoding="utf-8")
    assert "| 17 | 12 | 4 | 1 | 0 | 1 | 4 | 1 |" in summary
    assert "| f1 | 0.500 [" in summary


def test_metric_functions_take_plain_lists():
    cfg = OmegaConf.structured(EvaluateConfig(predictions="p", references="r"))
    assert cfg.stage == "latest" and cfg.bootstrap.samples == 1000
    # One class only: the ranking metrics are undefined and say so (None), the rest still compute.
    m = metrics.attrition_metrics([False, False], [0.1, 0.7])
    assert (m["roc_auc"], m["pr_auc"], m["precision"], m["fp"]) == (None, None, 0.0, 1)
    assert m["brier"] == approx((0.01 + 0.49) / 2)
    d = metrics.duration_metrics([1.0], [True], [np.nan])
    assert d == {
        "uncensored": {"n": 0, "predicted_none": 0, "mae": None, "rmse": None},
        "censored": {"n": 1, "below_bound": 0, "below_bound_share": 0.0},
    }


def test_fixtures_are_valid_chat_jsonl(fixtures_dir):
    from data_prep.schema import read_jsonl

    assert len(list(read_jsonl(fixtures_dir / "references.jsonl"))) == 17


def _tree(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_rerun_replaces_the_output_folder_whole(fixture_eval, tmp_path):
    evaluate.run(fixture_eval("plots=true"))
    out = tmp_path / "eval"
    assert "calibration_hr.png" in _tree(out)
    (out / "confusion_retired_task_queue.png").write_bytes(b"\x89PNG stale")  # a plot no current task draws
    paths = evaluate.run(fixture_eval("plots=false"))
    assert set(_tree(out)) == {"report.json", "summary.md"}  # the stale plot and the earlier ones are gone
    assert paths == {"report": out / "report.json", "summary": out / "summary.md"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval"]  # no .partial or .old left behind


def test_a_failure_midway_leaves_the_previous_folder_byte_identical(fixture_eval, tmp_path, monkeypatch):
    evaluate.run(fixture_eval("plots=true"))
    out = tmp_path / "eval"
    before = _tree(out)

    def fail_after_one_plot(report, groups, folder):
        (folder / "calibration_hr.png").write_bytes(b"half a plot")
        raise OSError("disk full")

    monkeypatch.setattr(evaluate, "write_plots", fail_after_one_plot)
    with pytest.raises(OSError, match="disk full"):
        evaluate.run(fixture_eval("plots=true", "bootstrap.samples=20"))  # a different report
    assert _tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval"]


def test_a_folder_holding_more_than_an_evaluation_is_refused_not_replaced(fixture_eval, tmp_path):
    out = tmp_path / "eval"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(
        EvaluateError, match=r"holds more than an evaluation \(notes.txt\).*out_dir=<new folder>"
    ):
        evaluate.run(fixture_eval())
    assert _tree(out) == {"notes.txt": b"mine"}
