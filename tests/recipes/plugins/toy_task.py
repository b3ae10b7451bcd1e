"""A toy task registered from outside the package: how many letters a word has.

Source: a CSV with a ``word`` column (``data_prep.columns.word``); a row whose word is empty is rejected.
Answer format: prose ``Letters: 5``; JSON ``{"letters": 5}``. Metric group ``letters``: exact match and MAE
(scikit-learn). Baseline ``train_median``: the median letter count of the training split.

Examples:
    PYTHONPATH=tests/recipes/plugins python -m data_prep data_prep=toy input=words.csv task_modules=[toy_task] hydra.searchpath=[file://tests/recipes/plugins/conf]
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, mean_absolute_error

from data_prep.answers import AnswerParseError, as_float, render_answer
from data_prep.dataset import ExampleFrame, SourceRejects, input_files
from data_prep.metrics import make_group
from data_prep.table import InputError, Reject, read_table
from data_prep.tasks import Task, register


class Source:
    """The reader ``python -m data_prep`` runs for the toy task."""

    @staticmethod
    def input_paths(cfg) -> list[str]:
        return input_files(cfg.input, (".csv",))

    @staticmethod
    def system_prompt(ex, cfg) -> str:
        return cfg.data_prep.system_prompt

    @staticmethod
    def build(cfg):
        column = cfg.data_prep.columns.word
        parts, rejects, n_records = [], [], 0
        for path in Source.input_paths(cfg):
            t = read_table(path)
            if column not in t.frame.columns:
                raise InputError(f"{path}: no column {column!r}; fix data_prep.columns.word=<column>")
            n_records += t.n_records
            found = SourceRejects(Path(path).name, list(t.rejects))
            rejects.append(found)
            words = t.frame[column].str.strip()
            for line in t.line[(words == "").to_numpy()]:
                found.rejects.append(Reject(int(line), "word is empty"))
            keep = (words != "").to_numpy()
            parts.append(pd.DataFrame({"word": words[keep], "source": Path(path).name, "line": t.line[keep]}))
        df = pd.concat(parts, ignore_index=True)
        frame = pd.DataFrame(
            {
                "id": "toy-" + df["word"],
                "user": "How many letters has the word " + df["word"] + "?",
                "source": df["source"],
                "line": df["line"],
                "group": df["word"],
                "stratum": (df["word"].str.len() % 2).astype(str),  # odd or even
            }
        )
        label = {"letters": df["word"].str.len().astype(object)}
        meta = {"source": df["source"], "source_line": df["line"]}
        return ExampleFrame(frame, label, meta), rejects, n_records, {}

    @staticmethod
    def answers(ex, cfg):
        text = [render_answer("toy", {"letters": n}, cfg.answer_format) for n in ex.label["letters"]]
        return {"assistant": pd.Series(text, index=ex.frame.index, dtype=object)}, {}


class ToyTask(Task):
    name = "toy"
    fields = ("word",)
    required = ("word",)
    source = Source
    baselines = ("train_median",)

    def normalise(self, answer: dict) -> dict:
        if "letters" not in answer:
            raise AnswerParseError("toy answer has no letters")
        return {"letters": int(as_float(answer["letters"], "letters", lo=0.0))}

    def render_prose(self, answer: dict) -> str:
        return f"Letters: {answer['letters']}"

    def parse_prose(self, text: str) -> dict:
        m = re.search(r"letters\s*:\s*(\d+)", text, re.I)
        if m is None:
            raise AnswerParseError("toy prose answer has no 'Letters: <n>' line")
        return {"letters": m.group(1)}

    def groups(self, scored: list, cfg) -> list:
        rows = [r for r in scored if r[0].label.get("letters") is not None]

        def headline(d):
            return {"exact": accuracy_score(d["y"], d["p"]), "mae": mean_absolute_error(d["y"], d["p"])}

        g = make_group(
            self.name,
            "letters",
            rows,
            {"y": [ex.label["letters"] for ex, _ in rows], "p": [a["letters"] for _, a in rows]},
            lambda d: {"n": len(d["y"]), **headline(d)},
            headline,
        )
        return [] if g is None else [g]

    def baseline_answers(self, model: str, train: list, test: list, cfg) -> list[dict]:
        median = int(np.median([ex.label["letters"] for ex in train]))
        return [{"letters": median} for _ in test]


register(ToyTask())
