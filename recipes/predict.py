"""Two-stage batch inference with a fine-tuned gpt-oss: population-level, then personalised.

Stage 1 answers each example's prompt as trained (system + profile). Stage 2 continues that conversation:
the stage-1 answer stays in context and a user turn adds the individual's history (tenure so far, project
completion rate, manager feedback, engagement score, ...), asking for an updated prediction. Examples without
a history get stage 1 only. The output JSONL (``data_prep.predictions.Prediction``) keeps both stages: the raw
generated text (harmony final channel included) and the parsed answer.

Backends: the exported Hugging Face model through transformers (CPU or GPU), or an OpenAI-compatible endpoint
(vLLM or NIM serving the exported model).

Examples:
    python -m recipes.predict model_dir=work/runs/<run>/hf input=work/data/builtin/test.jsonl out=work/pred.jsonl
    python -m recipes.predict endpoint=http://127.0.0.1:8000/v1 served_model=gpt-oss-20b-hr \\
        input=work/data/hr/test.jsonl history=work/data/hr/history.jsonl out=work/pred.jsonl
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig

from data_prep.answers import AnswerParseError, parse_answer
from data_prep.harmony import DEFAULT_DATE, DEFAULT_EFFORT, generation_prompt
from data_prep.predictions import Prediction, write_predictions
from data_prep.schema import ChatExample
from recipes.harmony_text import NoFinalChannel, final_text

# A generator maps conversations (lists of messages ending with a user turn) to raw generated texts.
Generator = Callable[[list[list[dict]]], list[str]]

HISTORY_LABELS = {
    "tenure_years": "Tenure so far (years)",
    "project_completion_rate": "Project completion rate",
    "manager_feedback": "Manager feedback",
    "engagement_score": "Engagement score",
    "last_promotion_years_ago": "Years since last promotion",
    "recent_rating": "Most recent rating",
}


@dataclass
class PredictConf:
    input: str = MISSING  # chat JSONL (data_prep output); the last assistant turn, if any, is ignored
    out: str = MISSING  # predictions JSONL to write
    model_dir: str | None = None  # exported Hugging Face folder (transformers backend)
    endpoint: str | None = None  # OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1
    served_model: str = "gpt-oss"  # model name the endpoint serves
    history: str | None = None  # JSONL {"id": ..., "history": {...}}; else meta["history"] of each example
    stages: list[int] = field(default_factory=lambda: [1, 2])
    name: str | None = None  # recorded as the predictions' model; defaults to the model folder or served name
    max_new_tokens: int = 256
    batch_size: int = 8
    limit: int | None = None  # only the first N examples
    date: str = DEFAULT_DATE
    reasoning_effort: str = DEFAULT_EFFORT
    device: str | None = None  # cuda | cpu; default: cuda when available


ConfigStore.instance().store(name="predict_schema", node=PredictConf)


class PredictError(ValueError):
    """A prediction run that cannot start; the message names the fix."""


def validate(cfg) -> None:
    problems = []
    if bool(cfg.model_dir) == bool(cfg.endpoint):
        problems.append(
            "give exactly one of model_dir=<exported HF folder> or endpoint=<OpenAI-compatible URL>"
        )
    if cfg.model_dir and not (Path(cfg.model_dir) / "config.json").exists():
        problems.append(
            f"model_dir={cfg.model_dir} has no config.json: export one first (python -m convert.export_hf)"
        )
    if not Path(cfg.input).exists():
        problems.append(f"input={cfg.input} does not exist: prepare data first (python -m data_prep ...)")
    if cfg.history and not Path(cfg.history).exists():
        problems.append(f"history={cfg.history} does not exist")
    if not set(cfg.stages) <= {1, 2} or not cfg.stages:
        problems.append(f"stages={list(cfg.stages)}: use [1], [2] or [1, 2]")
    if problems:
        raise PredictError("cannot predict:\n  - " + "\n  - ".join(problems))


def history_text(history: dict) -> str:
    """The stage-2 user turn: the individual's history, one line per field, and the request to update."""
    lines = [f"- {HISTORY_LABELS.get(k, k.replace('_', ' ').capitalize())}: {v}" for k, v in history.items()]
    return (
        "Individual history:\n"
        + "\n".join(lines)
        + "\n\nTaking this individual's history into account, update the prediction. Answer in the same format."
    )


def stage1_messages(ex: ChatExample) -> list[dict]:
    msgs = ex.messages
    return [dict(m) for m in (msgs[:-1] if msgs[-1]["role"] == "assistant" else msgs)]


def stage2_messages(ex: ChatExample, stage1_final: str, history: dict) -> list[dict]:
    return [
        *stage1_messages(ex),
        {"role": "assistant", "content": stage1_final},
        {"role": "user", "content": history_text(history)},
    ]


def read_examples(path: str | Path) -> list[ChatExample]:
    """Examples whose last message may be a reference answer (dropped) or the user's turn."""
    out = []
    with Path(path).open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            d = json.loads(line)
            if d.get("messages") and d["messages"][-1].get("role") != "assistant":
                d["messages"] = [*d["messages"], {"role": "assistant", "content": "(to predict)"}]
            try:
                out.append(ChatExample.from_dict(d))
            except ValueError as e:
                raise PredictError(f"{path}:{lineno}: {e}") from e
    return out


def read_histories(path: str | Path | None, examples: Iterable[ChatExample]) -> dict[str, dict]:
    if path is None:
        return {ex.id: ex.meta["history"] for ex in examples if ex.meta.get("history")}
    out = {}
    with Path(path).open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                d = json.loads(line)
                out[str(d["id"])] = dict(d["history"])
    return out


def _final_or_none(raw: str) -> str | None:
    try:
        text = final_text(raw)
    except NoFinalChannel:
        return None
    return text.strip() or None


def _parse(task: str, raw: str) -> dict | None:
    """The answer parsed, or None when there is none, it does not parse or the task is unknown."""
    text = _final_or_none(raw)
    if text is None:
        return None
    try:
        return parse_answer(task, text)
    except AnswerParseError:
        return None


def predict(
    examples: list[ChatExample],
    generate: Generator,
    histories: dict[str, dict],
    model_name: str,
    stages=(1, 2),
    batch_size: int = 8,
    progress: bool = True,
) -> list[Prediction]:
    """Both stages for every example, batched; returns the prediction lines in input order.

    Examples:
        python -m recipes.predict model_dir=<hf folder> input=<chat jsonl> out=<predictions jsonl>
    """
    from tqdm import tqdm

    lines: list[Prediction] = []
    bar = tqdm(total=len(examples) * len(stages), desc="predict", unit="answer", disable=not progress)
    for start in range(0, len(examples), batch_size):
        batch = examples[start : start + batch_size]
        raw1 = generate([stage1_messages(ex) for ex in batch])
        bar.update(len(batch) if 1 in stages else 0)
        if 1 in stages:
            lines += [
                Prediction(ex.id, ex.task, model_name, 1, r, _parse(ex.task, r))
                for ex, r in zip(batch, raw1, strict=False)
            ]
        if 2 not in stages:
            continue
        todo = [
            (ex, r)
            for ex, r in zip(batch, raw1, strict=False)
            if ex.id in histories and _final_or_none(r) is not None
        ]
        if todo:
            raw2 = generate([stage2_messages(ex, _final_or_none(r), histories[ex.id]) for ex, r in todo])
            lines += [
                Prediction(ex.id, ex.task, model_name, 2, r, _parse(ex.task, r))
                for (ex, _), r in zip(todo, raw2, strict=False)
            ]
        bar.update(len(batch))
    bar.close()
    return lines


class TransformersGenerator:
    """Greedy generation with the exported model; each prompt ends with the final-channel header, as trained.

    Args:
        model_dir: Exported Hugging Face folder.
        max_new_tokens: Generation budget per answer.
        device: ``cuda`` or ``cpu`` (default: cuda when available).
    """

    def __init__(self, model_dir, max_new_tokens=256, device=None, date=DEFAULT_DATE, effort=DEFAULT_EFFORT):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tok = AutoTokenizer.from_pretrained(str(model_dir))
        self.tok.padding_side = "left"
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype).to(self.device).eval()
        self.max_new_tokens = max_new_tokens
        self.date, self.effort = date, effort
        stops = ("<|return|>", "<|end|>", "<|call|>")
        self.stop_ids = [self.tok.convert_tokens_to_ids(t) for t in stops if t in self.tok.get_vocab()]

    def __call__(self, conversations: list[list[dict]]) -> list[str]:
        import torch

        prompts = [generation_prompt(m, self.tok, self.date, self.effort) for m in conversations]
        enc = self.tok(
            prompts, return_tensors="pt", padding=True, add_special_tokens=False, return_token_type_ids=False
        ).to(self.device)
        with torch.no_grad():
            out = self.model.generate(
                **enc,
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                eos_token_id=self.stop_ids,
                pad_token_id=self.tok.pad_token_id,
            )
        new = out[:, enc["input_ids"].shape[1] :]
        header = "<|channel|>final<|message|>"
        return [header + self.tok.decode(row, skip_special_tokens=False) for row in new]


class EndpointGenerator:
    """An OpenAI-compatible chat-completions endpoint (vLLM, NIM): the server renders harmony itself and
    returns the final channel as the message content."""

    def __init__(
        self, base_url: str, model: str, max_new_tokens=256, timeout_s=120, api_key: str | None = None
    ):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.max_new_tokens, self.timeout_s, self.api_key = (
            model,
            max_new_tokens,
            timeout_s,
            api_key,
        )

    def __call__(self, conversations: list[list[dict]]) -> list[str]:
        out = []
        for messages in conversations:
            body = {
                "model": self.model,
                "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
                "max_tokens": self.max_new_tokens,
                "temperature": 0.0,
            }
            headers = {"Content-Type": "application/json"}
            if self.api_key:
                headers["Authorization"] = f"Bearer {self.api_key}"
            req = urllib.request.Request(self.url, json.dumps(body).encode(), headers)
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                reply = json.load(resp)
            content = reply["choices"][0]["message"].get("content") or ""
            out.append("<|channel|>final<|message|>" + content + "<|return|>")
        return out


def run(cfg) -> Path:
    """Predict for a config (see `PredictConf`) and write the predictions JSONL; returns its path."""
    import os

    validate(cfg)
    examples = read_examples(cfg.input)[: cfg.limit]
    histories = read_histories(cfg.history, examples)
    if cfg.model_dir:
        generate = TransformersGenerator(
            cfg.model_dir, cfg.max_new_tokens, cfg.device, cfg.date, cfg.reasoning_effort
        )
        name = cfg.name or Path(cfg.model_dir).name
    else:
        generate = EndpointGenerator(
            cfg.endpoint, cfg.served_model, cfg.max_new_tokens, api_key=os.environ.get("OPENAI_API_KEY")
        )
        name = cfg.name or cfg.served_model
    lines = predict(examples, generate, histories, name, tuple(cfg.stages), cfg.batch_size)
    write_predictions(cfg.out, lines)
    s1 = sum(p.stage == 1 for p in lines)
    s2 = sum(p.stage == 2 for p in lines)
    parsed = sum(p.parsed is not None for p in lines)
    print(f"wrote {cfg.out}: {s1} stage-1 and {s2} stage-2 answers, {parsed} of {len(lines)} parsed")
    return Path(cfg.out)


@hydra.main(config_path="../conf", config_name="predict", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        out = run(cfg)
    except PredictError as e:
        raise SystemExit(str(e)) from None
    print(f"next: python -m recipes.evaluate predictions={out} references={cfg.input}")


if __name__ == "__main__":
    main()
