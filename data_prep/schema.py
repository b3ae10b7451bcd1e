"""The one chat-JSONL schema every data source writes and every recipe reads.

One line per example::

    {"id": "hr-3f2a...", "task": "hr",
     "messages": [{"role": "system", "content": "..."},
                  {"role": "user", "content": "..."},
                  {"role": "assistant", "content": "...", "thinking": "... (optional)"}],
     "label": {...},   # ground truth for the evaluator, task specific
     "meta": {...}}    # slice fields (department, region, language, ...) and provenance

The last message is the assistant's answer in the harmony *final* channel; an optional ``thinking``
field holds its *analysis* channel. Everything before it is the prompt.

Examples:
    python -c "from data_prep.schema import read_jsonl; print(next(read_jsonl('work/data/builtin/train.jsonl')))"
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROLES = ("system", "developer", "user", "assistant")


class SchemaError(ValueError):
    """An example that does not follow the chat schema."""


@dataclass
class ChatExample:
    """One training or evaluation example.

    Attributes:
        id: Stable identifier, unique within a dataset; never a raw personal identifier.
        task: Source task name, for example ``"hr"``, ``"tickets"``, ``"rubric"`` or ``"builtin"``.
        messages: Harmony roles in order; the last one is the assistant's final answer.
        label: Ground truth used by the evaluator.
        meta: Slice fields and provenance (for example ``{"source_line": 12}``).
    """

    id: str
    task: str
    messages: list[dict]
    label: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = validate_messages(self.messages)
        if problems:
            raise SchemaError(f"example {self.id!r}: " + "; ".join(problems))

    @property
    def prompt_messages(self) -> list[dict]:
        return self.messages[:-1]

    @property
    def answer(self) -> dict:
        return self.messages[-1]

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, sort_keys=False)

    @classmethod
    def from_dict(cls, d: dict) -> ChatExample:
        missing = [k for k in ("id", "task", "messages") if k not in d]
        if missing:
            raise SchemaError(f"missing field(s) {', '.join(missing)}")
        return cls(
            id=str(d["id"]),
            task=str(d["task"]),
            messages=list(d["messages"]),
            label=dict(d.get("label") or {}),
            meta=dict(d.get("meta") or {}),
        )


def validate_messages(messages: list[dict]) -> list[str]:
    """Every problem with a message list, as readable strings (empty when valid)."""
    problems = []
    if not isinstance(messages, list) or not messages:
        return ["messages must be a non-empty list"]
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            problems.append(f"message {i} is not an object")
            continue
        if m.get("role") not in ROLES:
            problems.append(f"message {i} has role {m.get('role')!r}; expected one of {ROLES}")
        if not isinstance(m.get("content"), str) or not m["content"].strip():
            problems.append(f"message {i} has empty or non-string content")
        if "thinking" in m and m["role"] != "assistant":
            problems.append(f"message {i}: only assistant messages carry 'thinking'")
    if isinstance(messages[-1], dict) and messages[-1].get("role") != "assistant":
        problems.append("the last message must be the assistant's answer")
    if not any(isinstance(m, dict) and m.get("role") == "user" for m in messages):
        problems.append("no user message")
    return problems


def write_jsonl(path: str | Path, examples: Iterable[ChatExample]) -> int:
    """Write examples (or any records with ``to_json()``, e.g. predictions) atomically: a temporary file
    renamed into place. Returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    n = 0
    with tmp.open("w", encoding="utf-8") as f:
        for ex in examples:
            f.write(ex.to_json() + "\n")
            n += 1
    tmp.replace(path)
    return n


def read_jsonl(path: str | Path) -> Iterator[ChatExample]:
    """Read examples; a malformed line raises `SchemaError` naming the file and line number."""
    with Path(path).open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield ChatExample.from_dict(json.loads(line))
            except (json.JSONDecodeError, SchemaError, TypeError) as e:
                raise SchemaError(f"{path}:{lineno}: {e}") from e
