"""Two-stage batch inference with a fine-tuned gpt-oss: population-level, then personalised.

Stage 1 answers each example's prompt as trained (system + profile). Stage 2 continues that conversation:
the stage-1 answer stays in context and a user turn adds the individual's history (tenure so far, project
completion rate, manager feedback, engagement score, ...), asking for an updated prediction. The stage-2 prompt
is the one data_prep trains on (`data_prep.stage2`): its history turn is taken verbatim from the person's
stage-2 line in ``input`` (data_prep writes one after each stage-1 line of a source with history), else built
from ``meta.history`` or the ``history`` file. Both stages run by default; examples without a history get
stage 1 only, and stage-2 lines are never predicted as inputs of their own. The output JSONL
(``data_prep.predictions.Prediction``) keeps both stages: the raw generated text (harmony final channel included)
and the parsed answer.

Backends: the exported Hugging Face model through transformers (CPU or GPU), or an OpenAI-compatible endpoint
(vLLM or NIM serving the exported model) through the ``openai`` client: ``endpoint_client.concurrency`` requests
in flight, each retried with exponential backoff, every answer appended to ``out`` as it comes. A rerun with the
same ``out`` asks only for the answers not yet there (``resume=false`` starts afresh), so a failure loses at
most the requests in flight. The API key comes only from the environment variable that
``endpoint_client.api_key_env`` names; plain ``http://`` is refused for any host but localhost unless
``endpoint_client.allow_insecure_http=true``.

Examples:
    python -m recipes.predict model_dir=work/runs/<run>/hf input=work/data/builtin/test.jsonl out=work/pred.jsonl
    python -m recipes.predict endpoint=http://127.0.0.1:8000/v1 served_model=gpt-oss-20b-hr \\
        input=work/data/hr/test.jsonl history=work/data/hr/history.jsonl out=work/pred.jsonl
    NIM_KEY=... python -m recipes.predict endpoint=https://nim.example.com/v1 endpoint_client.api_key_env=NIM_KEY \\
        endpoint_client.concurrency=32 input=work/data/hr/test.jsonl out=work/pred.jsonl
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig

from data_prep.answers import AnswerParseError, parse_answer
from data_prep.harmony import DEFAULT_DATE, DEFAULT_EFFORT, generation_prompt
from data_prep.predictions import Prediction, PredictionsAppender, write_predictions
from data_prep.schema import ChatExample
from data_prep.stage2 import history_turn, is_stage2, person_id, stage2_messages
from recipes.harmony_text import NoFinalChannel, final_text

# numexpr (through pandas) reports its thread count at INFO, which Hydra's console handler would print.
logging.getLogger("numexpr").setLevel(logging.WARNING)

# A generator maps conversations (lists of messages ending with a user turn) to raw generated texts.
Generator = Callable[[list[list[dict]]], list[str]]

FINAL_HEADER = "<|channel|>final<|message|>"
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")


@dataclass
class EndpointClientConf:
    timeout_s: float = 120.0  # seconds per attempt; a slower answer counts as failed and is retried
    max_retries: int = 5  # retries per request (429, 5xx, timeouts, dropped connections); backoff 0.5 s doubling to 8 s, or the server's Retry-After
    concurrency: int = 8  # requests in flight at once; more only helps while the server batches them
    api_key_env: str = "OPENAI_API_KEY"  # environment variable holding the API key (unset: no key sent); never the key itself
    allow_insecure_http: bool = (
        False  # true: allow plain http:// to a host other than localhost (key and prompts in clear)
    )


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
    endpoint_client: EndpointClientConf = field(default_factory=EndpointClientConf)
    resume: bool = True  # endpoint backend: keep the answers already in out and ask only the rest; false: start out afresh


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
    if cfg.endpoint:
        c = cfg.endpoint_client
        problems += endpoint_problems(cfg.endpoint, c.api_key_env, c.allow_insecure_http)
        if c.timeout_s <= 0:
            problems.append(f"endpoint_client.timeout_s={c.timeout_s}: give a positive number of seconds")
        if c.max_retries < 0:
            problems.append(f"endpoint_client.max_retries={c.max_retries}: give 0 or more")
        if c.concurrency < 1:
            problems.append(f"endpoint_client.concurrency={c.concurrency}: give 1 or more requests in flight")
    if problems:
        raise PredictError("cannot predict:\n  - " + "\n  - ".join(problems))


def endpoint_problems(url: str, api_key_env: str, allow_insecure_http: bool = False) -> list[str]:
    """What is wrong with an endpoint base URL and key variable; checked before any request is sent.

    The messages never repeat the key variable's value or the URL's credentials: either may be a secret.
    """
    problems = []
    parts = urlsplit(url)
    if parts.username or parts.password:
        problems.append(
            f"endpoint= carries credentials in the URL: remove them and export the key in ${api_key_env}"
            if _is_env_name(api_key_env)
            else "endpoint= carries credentials in the URL: remove them and export the key in a variable"
        )
    elif parts.scheme not in ("http", "https") or not parts.hostname:
        problems.append(f"endpoint={url}: give an http(s) base URL, e.g. http://127.0.0.1:8000/v1")
    elif parts.scheme == "http" and not _is_local(parts.hostname) and not allow_insecure_http:
        problems.append(
            f"endpoint={url}: plain http to {parts.hostname} would send the API key and the prompts in clear; "
            "use https://, or endpoint_client.allow_insecure_http=true on a network you trust"
        )
    if not _is_env_name(api_key_env):
        problems.append(
            "endpoint_client.api_key_env must name an environment variable (e.g. OPENAI_API_KEY), not hold the "
            "key itself: export the key in a variable and give its name"
        )
    return problems


def _is_env_name(name) -> bool:
    return isinstance(name, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) is not None


def _is_local(host: str) -> bool:
    if host in LOCAL_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def stage1_messages(ex: ChatExample) -> list[dict]:
    msgs = ex.messages
    return [dict(m) for m in (msgs[:-1] if msgs[-1]["role"] == "assistant" else msgs)]


def stage2_prompt(ex: ChatExample, stage1_final: str, turn: str) -> list[dict]:
    """The stage-2 conversation around the model's own stage-1 answer, built as data_prep builds the training
    conversations (`data_prep.stage2.stage2_messages`); ``turn`` is the history turn."""
    return stage2_messages(stage1_messages(ex), stage1_final, turn)


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


def history_turns(path: str | Path | None, lines: Iterable[ChatExample]) -> dict[str, str]:
    """The stage-2 user turn of every person that has a history, by stage-1 id.

    From the ``history`` file when given (JSONL ``{"id": ..., "history": {...}}``, rendered by
    `data_prep.stage2.history_turn`); else from the input: the history turn of a person's stage-2 line (verbatim,
    so the prompt is the training prompt), or ``meta.history`` of the stage-1 line.
    """
    lines = list(lines)
    if path is not None:
        out = {}
        with Path(path).open(encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    d = json.loads(line)
                    out[str(d["id"])] = history_turn(dict(d["history"]))
        return out
    out = {ex.id: history_turn(ex.meta["history"]) for ex in lines if ex.meta.get("history")}
    for ex in lines:
        if is_stage2(ex) and len(ex.messages) >= 2 and ex.messages[-2]["role"] == "user":
            out[person_id(ex)] = ex.messages[-2]["content"]
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
    histories: dict[str, str],
    model_name: str,
    stages=(1, 2),
    batch_size: int = 8,
    progress: bool = True,
) -> list[Prediction]:
    """Both stages for every example, batched; returns the prediction lines in input order.

    ``histories`` maps an example's id to its history turn (`history_turns`); an example without one gets
    stage 1 only.

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
            raw2 = generate([stage2_prompt(ex, _final_or_none(r), histories[ex.id]) for ex, r in todo])
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
        import compat  # noqa: F401  (the version gate, and upstream's start-up warnings filtered, before torch)

        # isort: split
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        # transformers 4.57.3+ takes any local folder whose config.json it wrote for a Mistral one and warns of an
        # "incorrect regex pattern" for every tokenizer over 100,000 tokens (tokenization_utils_base.py:2466-2497),
        # the real gpt-oss one included; gpt-oss is not Mistral, so no fix applies, which is said explicitly.
        self.tok = AutoTokenizer.from_pretrained(str(model_dir), fix_mistral_regex=False)
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


class EndpointReplyError(Exception):
    """An endpoint reply without an answer (no choices); counted as a failed request."""


class RequestsStopped(BaseException):
    """Raised in a request's thread once `EndpointGenerator.stop` was called. A `BaseException`, like
    `KeyboardInterrupt`: the ``openai`` client retries every `Exception`, and a stopped run must not retry."""


class EndpointGenerator:
    """An OpenAI-compatible chat-completions endpoint (vLLM, NIM) through the ``openai`` client: the server
    renders harmony itself and returns the final channel as the message content.

    The client retries 408/409/429/5xx replies, timeouts and dropped connections ``max_retries`` times with
    exponential backoff (or the server's Retry-After); redirects are not followed, so the key goes to the
    configured host only. After `stop`, no request is sent or retried.

    Args:
        base_url: The endpoint's base URL, e.g. ``http://127.0.0.1:8000/v1``; plain http only to localhost
            unless ``allow_insecure_http``.
        model: The served model's name.
        max_new_tokens: Generation budget per answer.
        timeout_s: Seconds per attempt.
        max_retries: Retries per request after the first attempt.
        concurrency: Requests in flight at once (`__call__` and `predict_endpoint`).
        api_key_env: The environment variable holding the API key; unset or empty: no key is sent.
        allow_insecure_http: Allow plain http to a non-local host.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        max_new_tokens=256,
        timeout_s=120.0,
        max_retries=5,
        concurrency=8,
        api_key_env="OPENAI_API_KEY",
        allow_insecure_http=False,
    ):
        problems = endpoint_problems(base_url, api_key_env, allow_insecure_http)
        if problems:
            raise PredictError("cannot use the endpoint:\n  - " + "\n  - ".join(problems))
        import openai

        self.model, self.max_new_tokens, self.concurrency = model, max_new_tokens, concurrency
        self._stopped = threading.Event()

        def refuse_when_stopped(request) -> None:  # httpx runs it before each attempt, retries included
            if self._stopped.is_set():
                raise RequestsStopped(f"{request.method} {request.url.path}: the run was stopped")

        self._client = openai.OpenAI(
            base_url=base_url.rstrip("/"),
            # An empty key sends no Authorization header; never None, or the client reads OPENAI_API_KEY itself.
            api_key=os.environ.get(api_key_env, ""),
            timeout=timeout_s,
            max_retries=max_retries,
            http_client=openai.DefaultHttpxClient(
                follow_redirects=False, event_hooks={"request": [refuse_when_stopped]}
            ),
        )

    def stop(self) -> None:
        """No attempt or retry starts after this: a request in flight ends with its current attempt (the
        server's reply, or ``timeout_s``), and one waiting to retry raises `RequestsStopped` when its backoff
        step ends. Final."""
        self._stopped.set()

    def complete(self, messages: list[dict]) -> str:
        """One conversation's answer, as harmony text (final channel); raises ``openai.APIError`` or
        `EndpointReplyError` once the retries are spent."""
        reply = self._client.chat.completions.create(
            model=self.model,
            messages=[{"role": m["role"], "content": m["content"]} for m in messages],
            max_tokens=self.max_new_tokens,
            temperature=0.0,
        )
        if not reply.choices:
            raise EndpointReplyError("the reply holds no choices")
        return FINAL_HEADER + (reply.choices[0].message.content or "") + "<|return|>"

    def __call__(self, conversations: list[list[dict]]) -> list[str]:
        """The answers in order; a failed request or an interrupt stops the rest (`stop`) and raises."""
        pool = ThreadPoolExecutor(max(1, min(self.concurrency, len(conversations))))
        try:
            return list(pool.map(self.complete, conversations))
        except BaseException:
            self.stop()
            raise
        finally:
            pool.shutdown(wait=False, cancel_futures=True)


def predict_endpoint(
    examples: list[ChatExample],
    gen: EndpointGenerator,
    histories: dict[str, str],
    model_name: str,
    out: PredictionsAppender,
    stages=(1, 2),
    progress: bool = True,
) -> list[str]:
    """Both stages for every example with ``gen.concurrency`` requests in flight; each answer is appended to
    ``out`` as it arrives and the answers already in ``out.answered`` are not asked again (a stored stage-1
    answer feeds its stage 2). A request that still fails after its retries is reported, not fatal: the rest
    go on, and a rerun asks for what is missing.

    Returns:
        One line per failed request (``<id> stage <n>: <why>``); empty when every answer arrived.

    Examples:
        python -m recipes.predict endpoint=http://127.0.0.1:8000/v1 input=<chat jsonl> out=<predictions jsonl>
    """
    import openai
    from tqdm import tqdm

    done = out.answered
    failures: list[str] = []
    pending: dict = {}  # future -> (example, stage)
    pool = ThreadPoolExecutor(gen.concurrency)

    def wants_stage2(ex: ChatExample) -> bool:
        return 2 in stages and ex.id in histories and (ex.id, 2) not in done

    def after_stage1(ex: ChatExample, raw1: str) -> None:
        final = _final_or_none(raw1)
        if wants_stage2(ex) and final is not None:
            msgs = stage2_prompt(ex, final, histories[ex.id])
            pending[pool.submit(gen.complete, msgs)] = (ex, 2)
        elif wants_stage2(ex):
            bar.total -= 1  # no final answer at stage 1: nothing to update
            bar.refresh()

    todo1 = [ex for ex in examples if (1 in stages and (ex.id, 1) not in done) or wants_stage2(ex)]
    bar = tqdm(
        total=sum(1 in stages and (ex.id, 1) not in done for ex in examples)
        + sum(map(wants_stage2, examples)),
        desc="predict",
        unit="answer",
        disable=not progress,
    )
    try:
        for ex in todo1:
            if (ex.id, 1) in done:
                after_stage1(ex, done[(ex.id, 1)].raw or "")
            else:
                pending[pool.submit(gen.complete, stage1_messages(ex))] = (ex, 1)
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                ex, stage = pending.pop(fut)
                try:
                    raw = fut.result()
                except (openai.APIError, EndpointReplyError) as e:
                    failures.append(f"{ex.id} stage {stage}: {type(e).__name__}: {e}")
                    continue
                if stage in stages:
                    out.append(Prediction(ex.id, ex.task, model_name, stage, raw, _parse(ex.task, raw)))
                    bar.update()
                if stage == 1:
                    after_stage1(ex, raw)
    except BaseException:
        # An interrupt or a bug: queued requests are dropped and none in flight is retried, so each thread
        # ends with its current attempt and its answer is not written (a rerun asks for it again).
        gen.stop()
        raise
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        bar.close()
    return failures


def run(cfg) -> Path:
    """Predict for a config (see `PredictConf`) and write the predictions JSONL; returns its path."""
    validate(cfg)
    lines_in = read_examples(cfg.input)
    # A person's stage-2 line (data_prep writes one after each stage-1 line) gives the history turn; the
    # examples predicted are the stage-1 lines.
    examples = [ex for ex in lines_in if not is_stage2(ex)][: cfg.limit]
    histories = history_turns(cfg.history, lines_in)
    if cfg.model_dir:
        generate = TransformersGenerator(
            cfg.model_dir, cfg.max_new_tokens, cfg.device, cfg.date, cfg.reasoning_effort
        )
        name = cfg.name or Path(cfg.model_dir).name
        lines = predict(examples, generate, histories, name, tuple(cfg.stages), cfg.batch_size)
        write_predictions(cfg.out, lines)
        kept = 0
    else:
        c = cfg.endpoint_client
        gen = EndpointGenerator(
            cfg.endpoint,
            cfg.served_model,
            cfg.max_new_tokens,
            timeout_s=c.timeout_s,
            max_retries=c.max_retries,
            concurrency=c.concurrency,
            api_key_env=c.api_key_env,
            allow_insecure_http=c.allow_insecure_http,
        )
        name = cfg.name or cfg.served_model
        try:
            out = PredictionsAppender(cfg.out, fresh=not cfg.resume)
        except ValueError as e:
            raise PredictError(
                f"{e}\nfix or remove those lines, or start out afresh (resume=false)"
            ) from None
        with out:
            others = sorted({p.model for p in out.answered.values()} - {name})
            if others:
                raise PredictError(
                    f"out={cfg.out} holds answers of {others}, not of {name!r}: give another out=, or "
                    "resume=false to start it afresh"
                )
            kept = len(out.answered)
            failures = predict_endpoint(examples, gen, histories, name, out, tuple(cfg.stages))
            lines = list(out.answered.values())
        if failures:
            shown = "\n  - ".join(failures[:10]) + (
                f"\n  - ... {len(failures) - 10} more" if len(failures) > 10 else ""
            )
            raise PredictError(
                f"{len(failures)} requests failed after {c.max_retries} retries each; {len(lines)} answers are "
                f"in {cfg.out}. Rerun the same command to ask only for the missing ones:\n  - {shown}"
            )
    s1 = sum(p.stage == 1 for p in lines)
    s2 = sum(p.stage == 2 for p in lines)
    parsed = sum(p.parsed is not None for p in lines)
    resumed = f" ({kept} kept from an earlier run)" if kept else ""
    print(f"wrote {cfg.out}: {s1} stage-1 and {s2} stage-2 answers{resumed}, {parsed} of {len(lines)} parsed")
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
