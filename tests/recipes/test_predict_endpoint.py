"""The endpoint backend of `recipes.predict` against a flaky local chat-completions server: every answer
arrives despite HTTP 500/429 and dropped connections; a run stopped midway and rerun asks only for what is
missing; the API key reaches the server and nowhere else; plain http to a non-local host is refused before
any request. All traffic goes to 127.0.0.1 (a server on a port it binds itself)."""

from __future__ import annotations

import json
import logging
import random
import socket
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from data_prep.builtin import generate
from data_prep.predictions import PredictionsAppender
from data_prep.schema import write_jsonl
from data_prep.stage2 import is_stage2
from recipes.predict import (
    EndpointGenerator,
    PredictError,
    RequestsStopped,
    endpoint_problems,
    run,
    stage1_messages,
    validate,
)

SECRET = "sk-test-5f0c1d9e-never-written"
KEY_ENV = "PREDICT_TEST_API_KEY"
SEED = 16
N_EXAMPLES = 10


class FlakyServer:
    """A minimal chat-completions server. The fate of each request is a function of (seed, id, stage, attempt):
    fail with 500 or 429, drop the connection, or answer; the fourth attempt always answers, so a client with 3
    retries or more gets every answer. ``healthy_after`` answers, it fails every request with 500 (a server
    gone bad), until ``healthy_after`` is set back to None."""

    def __init__(self, examples, fail_rate=0.45):
        self.ids = {stage1_messages(ex)[-1]["content"]: ex.id for ex in examples}
        assert len(self.ids) == len(examples)  # the server can tell each example by its prompt
        self.fail_rate = fail_rate
        self.healthy_after: int | None = None
        self.lock = threading.Lock()
        self.attempts: Counter = Counter()  # (id, stage) -> requests received
        self.answers: Counter = Counter()  # (id, stage) -> 200 replies sent
        self.outcomes: Counter = Counter()
        self.keys: set = set()
        self.in_flight = self.max_in_flight = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    server.handle(self, body)
                finally:
                    with server.lock:
                        server.in_flight -= 1

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @staticmethod
    def answer(key) -> str:
        return f"Answer for {key[0]} at stage {key[1]}"

    def handle(self, h, body):
        msgs = body["messages"]
        stage = 2 if msgs[-1]["content"].startswith("Individual history:") else 1
        key = (self.ids[msgs[-1 if stage == 1 else -3]["content"]], stage)
        with self.lock:  # the fate and the count of answers decided together: healthy_after is exact
            attempt = self.attempts[key]
            self.attempts[key] += 1
            self.keys.add(h.headers.get("Authorization"))
            broken = self.healthy_after is not None and sum(self.answers.values()) >= self.healthy_after
            draw = random.Random(f"{SEED}:{key}:{attempt}").random()
            fails = broken or (attempt < 3 and draw < self.fail_rate)
            kind = (
                "broken"
                if broken
                else ("500", "429", "drop")[int(draw / self.fail_rate * 3)]
                if fails
                else "ok"
            )
            self.outcomes[kind] += 1
            if not fails:
                self.answers[key] += 1
        if kind == "drop":
            h.close_connection = True  # closed without a reply
            return
        if fails:
            # retry-after-ms keeps the client's backoff short in the test
            return self.reply(
                h, 429 if kind == "429" else 500, {"error": {"message": kind}}, {"retry-after-ms": "5"}
            )
        assert body["model"] == "tiny" and body["temperature"] == 0.0
        message = {"role": "assistant", "content": self.answer(key)}
        self.reply(
            h, 200, {"id": "x", "object": "chat.completion", "choices": [{"index": 0, "message": message}]}
        )

    @staticmethod
    def reply(h, status, obj, headers=()):
        data = json.dumps(obj).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        for k, v in dict(headers).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def examples():
    out = [ex for ex in generate(0)["test"] if not is_stage2(ex)][:N_EXAMPLES]  # stage-1 lines only
    for ex in out[::3]:
        ex.meta.pop("history", None)  # no history: stage 1 only
    return out


@pytest.fixture
def setup(tmp_path, examples, compose, monkeypatch):
    """The input file, the key in the environment and a config factory for a server URL."""
    monkeypatch.setenv(KEY_ENV, SECRET)
    inp = tmp_path / "input.jsonl"
    write_jsonl(inp, examples)
    out = tmp_path / "out" / "predictions.jsonl"

    def cfg(url, *extra):
        return compose(
            "predict",
            [
                f"input={inp}",
                f"out={out}",
                f"endpoint={url}",
                "served_model=tiny",
                "endpoint_client.timeout_s=10",
                "endpoint_client.max_retries=4",
                "endpoint_client.concurrency=4",
                f"endpoint_client.api_key_env={KEY_ENV}",
                *extra,
            ],
        )

    return cfg, out


def expected_keys(examples):
    return {(ex.id, 1) for ex in examples} | {(ex.id, 2) for ex in examples if ex.meta.get("history")}


def file_keys(out):
    lines = [json.loads(t) for t in out.read_text(encoding="utf-8").splitlines()]
    keys = [(d["id"], d["stage"]) for d in lines]
    assert len(keys) == len(set(keys)), "an answer written twice"
    return set(keys), lines


def assert_no_secret(tmp_path, capfd, caplog):
    captured = capfd.readouterr()
    assert SECRET not in captured.out and SECRET not in captured.err
    assert SECRET not in caplog.text
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_every_answer_arrives_through_failures(setup, examples, tmp_path, capfd, caplog):
    caplog.set_level(logging.DEBUG)  # the openai and httpx debug logs too: the key must not be in them
    cfg, out = setup
    want = expected_keys(examples)
    assert 0 < len(want - {(ex.id, 1) for ex in examples}) < len(examples)  # some examples have no stage 2
    with FlakyServer(examples) as server:
        run(cfg(server.url))
    keys, lines = file_keys(out)
    assert keys == want
    for d in lines:
        assert d["model"] == "tiny"
        assert d["raw"] == f"<|channel|>final<|message|>{FlakyServer.answer((d['id'], d['stage']))}<|return|>"
    # every kind of failure happened, each answer was sent once, and the bound on requests in flight held
    assert all(server.outcomes[k] > 0 for k in ("500", "429", "drop")), server.outcomes
    assert set(server.answers.values()) == {1} and set(server.answers) == want
    assert server.max_in_flight <= 4
    assert server.keys == {f"Bearer {SECRET}"}  # the key reaches the local server, as a header only
    assert_no_secret(tmp_path, capfd, caplog)


def test_server_gone_bad_then_rerun_asks_only_for_missing(setup, examples, tmp_path, capfd, caplog):
    caplog.set_level(logging.DEBUG)
    cfg, out = setup
    want = expected_keys(examples)
    with FlakyServer(examples, fail_rate=0.0) as server:
        server.healthy_after = 7
        with pytest.raises(PredictError, match="Rerun the same command") as err:
            run(cfg(server.url, "endpoint_client.max_retries=1"))
        first, _ = file_keys(out)
        assert len(first) == 7 and first < want  # the answers sent before it broke were kept
        assert f"{len(first)} answers are in" in str(err.value)
        before = server.attempts.copy()
        server.healthy_after = None
        run(cfg(server.url))
        asked_again = {k for k in server.attempts if server.attempts[k] > before[k]}
    assert not asked_again & first, "answered ids were asked again"
    assert asked_again == want - first
    keys, _ = file_keys(out)
    assert keys == want
    assert all(server.answers[k] == 1 for k in want)
    assert "7 kept from an earlier run" in capfd.readouterr().out
    assert_no_secret(tmp_path, capfd, caplog)


def test_interrupted_run_resumes(setup, examples, tmp_path, monkeypatch, capfd, caplog):
    cfg, out = setup
    want = expected_keys(examples)
    real_append = PredictionsAppender.append
    written = []
    arrived_before_interrupt = []

    def append_then_interrupt(self, prediction):
        real_append(self, prediction)
        written.append(prediction)
        if len(written) == 5:
            with server.lock:  # from now on every request fails: a request still alive would be retried
                server.healthy_after = 0
                arrived_before_interrupt.append(sum(server.attempts.values()))
            raise KeyboardInterrupt  # Ctrl-C in the main thread, right after the fifth answer was written

    threads_before = set(threading.enumerate())
    with FlakyServer(examples) as server:
        monkeypatch.setattr(PredictionsAppender, "append", append_then_interrupt)
        with pytest.raises(KeyboardInterrupt):
            run(cfg(server.url))
        monkeypatch.setattr(PredictionsAppender, "append", real_append)
        # The interrupted run's request threads end at once, and each request in flight at the interrupt
        # reaches the server at most once more: nothing is retried or sent after a Ctrl-C.
        for t in set(threading.enumerate()) - threads_before:
            if not t.name.startswith("ThreadPoolExecutor"):
                continue  # the server's own threads, tqdm's monitor
            t.join(timeout=60)
            assert not t.is_alive(), f"{t.name} still runs after the interrupt"
        late = sum(server.attempts.values()) - arrived_before_interrupt[0]
        assert late <= 4, f"{late} requests reached the server after the interrupt (4 were in flight at most)"
        server.healthy_after = None
        first, _ = file_keys(out)
        assert first == {(p.id, p.stage) for p in written} and len(first) == 5
        with out.open("a", encoding="utf-8") as f:
            f.write('{"id": "cut-short", "ta')  # a line the kill cut in half: dropped on resume
        before = server.attempts.copy()
        run(cfg(server.url))
        asked_again = {k for k in server.attempts if server.attempts[k] > before[k]}
    assert not asked_again & first
    keys, _ = file_keys(out)
    assert keys == want
    assert_no_secret(tmp_path, capfd, caplog)


def test_a_failed_batch_stops_the_generator_and_nothing_is_sent_after(examples, monkeypatch):
    import openai

    monkeypatch.setenv(KEY_ENV, SECRET)
    with FlakyServer(examples, fail_rate=0.0) as server:
        gen = EndpointGenerator(server.url, "tiny", max_retries=2, api_key_env=KEY_ENV)
        server.healthy_after = 0  # every request fails with 500
        with pytest.raises(openai.InternalServerError):
            gen([stage1_messages(examples[0])])
        assert sum(server.attempts.values()) == 3  # the first attempt and its 2 retries
        server.healthy_after = None
        with pytest.raises(RequestsStopped):
            gen([stage1_messages(examples[1])])
        assert sum(server.attempts.values()) == 3  # stopped: refused before any request


def test_resume_refuses_another_models_file_and_fresh_starts_over(setup, examples, tmp_path):
    cfg, out = setup
    with FlakyServer(examples, fail_rate=0.0) as server:
        run(cfg(server.url))
        n = len(server.attempts)
        with pytest.raises(PredictError, match="resume=false"):
            run(cfg(server.url, "name=other-model"))
        assert sum(server.attempts.values()) == n  # refused before any request
        run(cfg(server.url, "resume=false"))
        assert set(server.answers.values()) == {2}  # every answer asked again
    keys, _ = file_keys(out)
    assert keys == expected_keys(examples)


def test_plain_http_to_remote_host_is_refused_before_any_request(setup, monkeypatch):
    cfg, _ = setup
    contacted = []

    def no_network(*args, **kwargs):
        contacted.append(args)
        raise OSError("the test forbids network access")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    url = "http://example.invalid:1/v1"
    with pytest.raises(PredictError, match="allow_insecure_http=true") as err:
        run(cfg(url))
    assert SECRET not in str(err.value)
    with pytest.raises(PredictError, match="plain http to example.invalid"):
        EndpointGenerator(url, "tiny", api_key_env=KEY_ENV)
    assert (
        contacted == []
    )  # nothing else in this process has a request alive (see test_interrupted_run_resumes)
    # allowed explicitly, over https, or to the local host
    validate(cfg(url, "endpoint_client.allow_insecure_http=true"))
    for ok in ("https://example.invalid/v1", "http://localhost:8000/v1", "http://[::1]:8000/v1"):
        assert endpoint_problems(ok, KEY_ENV) == []
    assert contacted == []


def test_key_is_never_a_config_value(setup):
    cfg, _ = setup
    with pytest.raises(PredictError, match="must name an environment variable") as err:
        validate(cfg("http://127.0.0.1:1/v1", f"endpoint_client.api_key_env={SECRET}"))
    assert SECRET not in str(err.value)
    with pytest.raises(PredictError, match="credentials in the URL") as err:
        validate(cfg(f"https://user:{SECRET}@127.0.0.1:1/v1"))
    assert SECRET not in str(err.value)
