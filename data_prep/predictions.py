"""The predictions JSONL: one model's answer per example and stage, as ``recipes.predict`` and
``recipes.baselines`` write it and ``recipes.evaluate`` reads it (next to `data_prep.schema`, the references'
format).

A line is `Prediction` (``id``, ``task``, ``model``, ``stage``, ``raw``, ``parsed``). `read_predictions` never
fails on a bad line: a line that cannot be joined to a reference (not JSON, no ``id`` or ``stage``) is a
`MalformedLine`; one that can, but whose other fields are unusable, is a `PredictionLine` carrying its
``problem`` (a kind among `FAILURE_KINDS`), and `read_answer` gives the normalised answer or why there is none.

Examples:
    python -c "from data_prep.predictions import Prediction, write_predictions; write_predictions('work/p.jsonl', [Prediction('a', 'tickets', 'm', 1, 'Queue: IT Support')])"
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from data_prep.schema import write_jsonl

STAGES = (1, 2)
FAILURE_KINDS = (
    "missing_field",
    "wrong_type",
    "task_mismatch",
    "no_final_channel",
    "empty_final_channel",
    "unparseable_answer",
)


@dataclass
class Prediction:
    """One line of a predictions JSONL: one model's answer for one example at one stage.

    Attributes:
        id: The reference example's ``id``.
        task: The reference example's task (``hr``, ``tickets``, ``rubric``).
        model: Who answered, for example ``gpt-oss-20b-lora`` or ``baseline/logistic_regression``.
        stage: 1 for the population-level prediction, 2 for the personalised one.
        raw: The generated text; may hold harmony tokens (the evaluator reads the final channel). A baseline
            writes its JSON answer here.
        parsed: The producer's own parse of ``raw`` (optional). The evaluator re-parses ``raw`` whenever it
            is present and uses ``parsed`` only when ``raw`` is absent.
    """

    id: str
    task: str
    model: str
    stage: int
    raw: str | None
    parsed: dict | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)


def write_predictions(path: str | Path, predictions: Iterable[Prediction]) -> int:
    """Write predictions JSONL atomically (a temporary file renamed into place).

    Args:
        path: Output file; its folder is created.
        predictions: The lines to write, in order.

    Returns:
        The number of lines written.

    Examples:
        python -c "from data_prep.predictions import Prediction, write_predictions; write_predictions('work/p.jsonl', [Prediction('a', 'tickets', 'm', 1, 'Queue: IT Support')])"
    """
    return write_jsonl(path, predictions)


@dataclass
class PredictionLine:
    """A prediction line that has a usable ``id`` and ``stage``; ``problem`` is set when the rest is not."""

    line: int
    id: str
    stage: int
    task: str | None
    model: str | None
    raw: str | None
    parsed: dict | None
    problem: tuple[str, str] | None = None  # (kind, reason), kind one of FAILURE_KINDS


@dataclass
class MalformedLine:
    """A prediction line that cannot be joined to a reference (no JSON object, no valid id or stage)."""

    line: int
    kind: str  # bad_json, wrong_type, missing_field
    reason: str


def read_predictions(path: str | Path) -> tuple[list[PredictionLine], list[MalformedLine]]:
    """Read a predictions JSONL without ever failing on a bad line.

    Returns:
        The joinable lines (some carrying a problem that makes them a parse failure) and the malformed ones;
        together they account for every non-blank line of the file.

    Examples:
        python -c "from data_prep.predictions import read_predictions; ok, bad = read_predictions('work/predict/predictions.jsonl'); print(len(ok), bad[:3])"
    """
    ok, bad = [], []
    with Path(path).open(encoding="utf-8", errors="replace") as f:
        for lineno, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                bad.append(MalformedLine(lineno, "bad_json", f"not JSON: {e}"))
                continue
            if not isinstance(obj, dict):
                bad.append(MalformedLine(lineno, "wrong_type", f"a JSON {type(obj).__name__}, not an object"))
                continue
            pid, stage = obj.get("id"), obj.get("stage")
            if pid is None or stage is None:
                missing = [k for k in ("id", "stage") if obj.get(k) is None]
                bad.append(MalformedLine(lineno, "missing_field", f"no {' or '.join(missing)}"))
                continue
            if not isinstance(pid, str) or not pid:
                bad.append(MalformedLine(lineno, "wrong_type", f"id is {pid!r}; expected a non-empty string"))
                continue
            if isinstance(stage, bool) or stage not in STAGES:
                bad.append(MalformedLine(lineno, "wrong_type", f"stage is {stage!r}; expected 1 or 2"))
                continue
            ok.append(_prediction_line(lineno, pid, int(stage), obj))
    return ok, bad


def _prediction_line(lineno: int, pid: str, stage: int, obj: dict) -> PredictionLine:
    task, model, raw, parsed = obj.get("task"), obj.get("model"), obj.get("raw"), obj.get("parsed")
    p = PredictionLine(lineno, pid, stage, None, None, None, None)
    for name, value in (("task", task), ("model", model)):
        if value is None:
            p.problem = ("missing_field", f"no {name}")
        elif not isinstance(value, str):
            p.problem = ("wrong_type", f"{name} is {value!r}; expected a string")
    if raw is not None and not isinstance(raw, str):
        p.problem = (
            "wrong_type",
            f"raw is of type {type(raw).__name__}; expected the generated text as a string",
        )
    elif parsed is not None and not isinstance(parsed, dict):
        p.problem = ("wrong_type", f"parsed is of type {type(parsed).__name__}; expected an object or null")
    elif raw is None and parsed is None:
        p.problem = ("missing_field", "neither raw nor parsed")
    p.task = task if isinstance(task, str) else None
    p.model = model if isinstance(model, str) else None
    p.raw = raw if isinstance(raw, str) else None
    p.parsed = parsed if isinstance(parsed, dict) else None
    return p


class PredictionsAppender:
    """Append prediction lines to a JSONL file one at a time, each flushed as it is written, so a run that is
    killed keeps every answer it wrote and a rerun can skip them (resume). The lines are `Prediction.to_json`,
    the same format `write_predictions` writes.

    Opening an existing file reads its lines into ``answered`` (keyed by ``(id, stage)``); a last line cut
    short (a run killed while writing it) is removed, as its answer is lost anyway. Any other unreadable line
    raises `ValueError` naming the line: a line is never dropped or asked again silently.

    Args:
        path: The predictions JSONL; its folder is created.
        fresh: Start the file empty instead of resuming it.

    Examples:
        python -c "from data_prep.predictions import Prediction, PredictionsAppender; a = PredictionsAppender('work/p.jsonl'); a.append(Prediction('a', 'tickets', 'm', 1, 'Queue: IT Support')); a.close()"
    """

    def __init__(self, path: str | Path, fresh: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.answered: dict[tuple[str, int], Prediction] = {}
        if self.path.exists() and not fresh:
            self._drop_cut_line()
            self.answered = _answered(self.path)
        self._f = self.path.open("w" if fresh else "a", encoding="utf-8")

    def _drop_cut_line(self) -> None:
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            with self.path.open("r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)

    def append(self, prediction: Prediction) -> None:
        """Write one line and flush it to the operating system."""
        self._f.write(prediction.to_json() + "\n")
        self._f.flush()
        self.answered[(prediction.id, prediction.stage)] = prediction

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> PredictionsAppender:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _answered(path: Path) -> dict[tuple[str, int], Prediction]:
    ok, bad = read_predictions(path)
    problems = [f"{path}:{b.line}: {b.reason}" for b in bad]
    problems += [f"{path}:{p.line}: {p.problem[1]}" for p in ok if p.problem]
    if problems:
        raise ValueError("cannot resume from unreadable lines:\n  - " + "\n  - ".join(problems))
    return {(p.id, p.stage): Prediction(p.id, p.task, p.model, p.stage, p.raw, p.parsed) for p in ok}
