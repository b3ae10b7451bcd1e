"""A task added from outside the package: one module (plugins/toy_task.py) + one YAML (plugins/conf/...).

The toy task is loaded with ``task_modules=[toy_task]`` and its source mapping found through Hydra's search
path, then run through data_prep, the evaluator and the baselines exactly as the shipped tasks are.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from data_prep.config import SALT_ENV, ConfigError, validate
from data_prep.predictions import Prediction, write_predictions
from data_prep.prepare import run as prepare
from data_prep.schema import read_jsonl
from recipes import baselines, evaluate

REPO = Path(__file__).resolve().parents[2]
PLUGINS = Path(__file__).resolve().parent / "plugins"
WORDS = [f"{'abcdefghij'[: 1 + i % 10]}{'xyz'[: i % 3]}{i}" for i in range(40)]


def _compose(name: str, *overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(name, overrides=[f"hydra.searchpath=[file://{PLUGINS / 'conf'}]", *overrides])


@pytest.fixture
def plugin_path(monkeypatch):
    monkeypatch.syspath_prepend(str(PLUGINS))


def _words_csv(tmp_path: Path) -> Path:
    # 40 distinct words, one repeated (a duplicate) and one empty (rejected): 42 records.
    rows = ["Word,Note", *(f"{w},n" for w in WORDS), f"{WORDS[5]},again", ",empty"]
    path = tmp_path / "words.csv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def test_unknown_task_and_module_name_the_setting(tmp_path, plugin_path):
    csv = _words_csv(tmp_path)
    cfg = _compose("data_prep", "data_prep=toy", f"input={csv}", "data_prep.task=weather")
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert "unknown task 'weather'" in str(e.value) and "task_modules=[<module>]" in str(e.value)
    assert "hr, " in str(e.value)  # the known tasks are listed
    cfg = _compose("data_prep", "data_prep=toy", f"input={csv}", "task_modules=[no_such_task_module]")
    with pytest.raises(ConfigError, match="task_modules: cannot import 'no_such_task_module'"):
        validate(cfg)


def test_toy_task_through_prepare_evaluate_and_baselines(tmp_path, plugin_path, monkeypatch):
    data = tmp_path / "data"
    monkeypatch.setenv(SALT_ENV, "x")
    cfg = _compose(
        "data_prep",
        "data_prep=toy",
        f"input={_words_csv(tmp_path)}",
        f"out_dir={data}",
        "task_modules=[toy_task]",
        "answer_format=json",
        "splits.train=0.5",
        "splits.validation=0",
        "splits.test=0.5",
    )
    manifest = prepare(cfg, log_fn=lambda _: None)
    c = manifest["counts"]
    assert (c["records"], c["written"], c["rejected"]) == (42, 40, 2)
    assert sum(c["by_split"].values()) == 40
    rejects = [json.loads(x) for x in (data / "rejects.jsonl").read_text().splitlines()]
    assert sorted(r["reason"] for r in rejects)[1] == "word is empty"
    test = list(read_jsonl(data / "test.jsonl"))
    train = list(read_jsonl(data / "train.jsonl"))
    assert test and all(ex.task == "toy" for ex in test)
    assert json.loads(test[0].messages[-1]["content"]) == {"letters": test[0].label["letters"]}

    # Known predictions: every third off by 2 letters, one answer unreadable, the last one missing.
    preds = []
    for i, ex in enumerate(test[:-1]):
        n = ex.label["letters"] + (2 if i % 3 == 0 else 0)
        raw = "Letters: many" if i == 1 else f"Letters: {n}"
        preds.append(Prediction(ex.id, "toy", "m", 1, raw))
    write_predictions(tmp_path / "p.jsonl", preds)
    scored = [i for i in range(len(test) - 1) if i != 1]
    ecfg = _compose(
        "evaluate",
        f"predictions={tmp_path / 'p.jsonl'}",
        f"references={data / 'test.jsonl'}",
        f"out_dir={tmp_path / 'eval'}",
        "task_modules=[toy_task]",
        "bootstrap.samples=0",
    )
    report = json.loads(evaluate.run(ecfg)["report"].read_text(encoding="utf-8"))
    counts = report["counts"]
    assert (counts["scored"], counts["parse_failures"], counts["missing"]) == (len(scored), 1, 1)
    assert (
        counts["scored"] + counts["parse_failures"] + counts["missing"] == counts["references"] == len(test)
    )
    m = report["tasks"]["toy"]["letters"]["metrics"]
    off = sum(1 for i in scored if i % 3 == 0)
    assert m["n"] == len(scored)
    assert m["exact"] == pytest.approx(1 - off / len(scored))
    assert m["mae"] == pytest.approx(2 * off / len(scored))

    bcfg = _compose(
        "baselines",
        f"data_dir={data}",
        f"out_dir={tmp_path / 'bl'}",
        "task_modules=[toy_task]",
        "bootstrap_samples=0",
        "plots=false",
    )
    paths = baselines.run(bcfg)
    lines = [json.loads(x) for x in paths["train_median"].read_text(encoding="utf-8").splitlines()]
    median = int(np.median([ex.label["letters"] for ex in train]))
    assert {json.loads(x["raw"])["letters"] for x in lines} == {median}
    assert len(lines) == len(test)
    rep = json.loads((tmp_path / "bl" / "eval" / "train_median" / "report.json").read_text(encoding="utf-8"))
    assert rep["counts"]["scored"] == len(test)
    want = np.mean([abs(ex.label["letters"] - median) for ex in test])
    assert rep["tasks"]["toy"]["letters"]["metrics"]["mae"] == pytest.approx(want)
    assert "## toy: letters" in paths["summary"].read_text(encoding="utf-8")
