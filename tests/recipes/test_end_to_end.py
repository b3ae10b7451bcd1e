"""data_prep (built-in) -> fine-tune (the default: tiny, full SFT, 300 steps) -> predict -> evaluate, on CPU:
what `make finetune` then `make predict` do.

The built-in task's label follows from the profile and, for 1 person in 3, from the manager feedback in the
individual history (`data_prep.builtin`). One training run (both stages' conversations) shows two things: the
model learns (stage-1 held-out accuracy well above the majority class; a pipeline that only runs would sit near
it), and the personalised stage 2 adds to it measurably (stage-2 accuracy above stage 1 on the same people, the
paired 95% interval of the difference above zero).
"""

from __future__ import annotations

import json

from omegaconf import OmegaConf

from data_prep.builtin import attrition_rule, profile_rule
from recipes.finetune import compose, run_finetune


def test_tiny_model_learns_both_stages_of_the_builtin_task(tmp_path, tiny_hf, tiny_nemo):
    from recipes import evaluate, predict

    cfg = compose(
        [
            f"work_dir={tmp_path}",
            f"model.hf_path={tiny_hf}",
            f"model.nemo_path={tiny_nemo}",
            "export.verify=false",
        ]
    )
    summary = run_finetune(cfg)
    test_file = f"{cfg.data.dataset_root}/test.jsonl"
    pred_file = tmp_path / "predictions.jsonl"
    predict.run(
        OmegaConf.merge(
            OmegaConf.structured(predict.PredictConf),
            # As make predict: both stages (the default), the history from the test file's stage-2 lines.
            {
                "model_dir": summary["hf_export"],
                "input": test_file,
                "out": str(pred_file),
                "max_new_tokens": 8,
            },
        )
    )
    ev_cfg = OmegaConf.merge(
        OmegaConf.structured(evaluate.EvaluateConfig),
        {"predictions": str(pred_file), "references": test_file, "out_dir": str(tmp_path / "eval")},
    )
    paths = evaluate.run(ev_cfg)
    report = json.loads(paths["report"].read_text())
    assert report["counts"]["scored"] == report["counts"]["references"] == 64
    assert report["stages_used"] == {"2": 64}
    people = [json.loads(line) for line in open(test_file) if "/stage2" not in json.loads(line)["id"]]
    labels = [p["label"]["attrition"] for p in people]
    majority = max(sum(labels), len(labels) - sum(labels)) / len(labels)  # 35 of 64 = 0.547
    # The best any model can do from the profile alone: the profile rule, right for 53 of 64 = 0.828.
    assert abs(majority - 35 / 64) < 1e-9
    comparison = report["stage_comparison"]["tasks"]["builtin"]
    assert comparison["people"] == 64
    accuracy = comparison["groups"]["attrition_risk"]["metrics"]["accuracy"]
    stage1, stage2, (low, high) = accuracy["stage1"], accuracy["stage2"], accuracy["ci"]
    # Observed with the default seed (two runs, the same figures): stage 1 0.703 (45 of 64), stage 2 0.812 (52 of
    # 64), difference +0.109 (paired 95% CI +0.047 to +0.188); stage 2 changed 7 answers, all 7 to right; majority
    # 0.547. The bounds leave room for a few answers either way.
    assert stage1 >= majority + 0.1, (stage1, majority)
    assert stage2 > stage1 and stage2 > majority, (stage1, stage2)
    assert low > 0, (stage1, stage2, low, high)
    print(report["stage_comparison"]["summary"])  # shown with pytest -rP
    assert "Stage 2 helped" in report["stage_comparison"]["summary"]
    assert attrition_rule(5, "Meets", 3, "strong") is False and profile_rule(5, "Meets", 3) is True
