"""data_prep (built-in) -> fine-tune (the default: tiny, full SFT, 300 steps) -> predict -> evaluate, on CPU:
what `make finetune` then `make predict` do.

The built-in task's label follows from the profile by a fixed rule, so a model that learns shows it as
held-out accuracy well above the majority class; a pipeline that only runs would sit near it.
"""

from __future__ import annotations

import json

from omegaconf import OmegaConf

from recipes.finetune import compose, run_finetune


def test_tiny_model_learns_the_builtin_task(tmp_path, tiny_hf, tiny_nemo):
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
            {
                "model_dir": summary["hf_export"],
                "input": test_file,
                "out": str(pred_file),
                "stages": [1],  # as make predict: the built-in task trains stage 1 only
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
    accuracy = report["tasks"]["builtin"]["attrition_risk"]["metrics"]["accuracy"]
    labels = [json.loads(line)["label"]["attrition"] for line in open(test_file)]
    majority = max(sum(labels), len(labels) - sum(labels)) / len(labels)  # 0.59 on the built-in test split
    # Observed with the default seed: 0.875 held-out accuracy against 0.59 for the majority class (seeds 1 and
    # 2: 0.95). The quickstart promises the majority class + 0.2.
    assert accuracy >= majority + 0.2, (accuracy, majority)
