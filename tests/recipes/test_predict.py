"""Two-stage inference: stage 2 sees the stage-1 answer and the history, and differs where the history
warrants; the endpoint backend speaks the OpenAI chat-completions protocol; one real run on the tiny model."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

from data_prep.builtin import generate
from data_prep.schema import write_jsonl
from data_prep.stage2 import history_turn, is_stage2, person_id
from recipes.predict import (
    EndpointGenerator,
    TransformersGenerator,
    history_turns,
    predict,
    stage1_messages,
    stage2_prompt,
)

HIGH, LOW = "Attrition risk: High", "Attrition risk: Low"


def rule_generator(conversations):
    """Deterministic stand-in for a model: stage 1 answers from the profile's engagement, stage 2 raises the
    risk when the history reports low engagement and otherwise repeats its stage-1 answer."""
    out = []
    for messages in conversations:
        last = messages[-1]["content"]
        if last.startswith("Individual history:"):
            engagement = float(re.search(r"Engagement score: ([\d.]+)", last).group(1))
            answer = HIGH if engagement <= 2 else messages[-2]["content"]
        else:
            answer = HIGH if "Engagement (1-5): 1" in last else LOW
        out.append(f"<|channel|>final<|message|>{answer}<|return|>")
    return out


def _examples(n=6):
    """The first ``n`` people's stage-1 lines of the built-in test split."""
    return [ex for ex in generate(0)["test"] if not is_stage2(ex)][:n]


def _turns(histories: dict) -> dict:
    return {k: history_turn(h) for k, h in histories.items()}


def test_stage2_differs_where_history_warrants():
    examples = _examples()
    histories = {
        examples[0].id: {"tenure_years": 3.5, "engagement_score": 1.5, "manager_feedback": "disengaged"},
        examples[1].id: {"tenure_years": 6.0, "engagement_score": 4.5, "manager_feedback": "strong"},
    }
    lines = predict(examples, rule_generator, _turns(histories), "rule", batch_size=4, progress=False)
    stage1 = {p.id: p.raw for p in lines if p.stage == 1}
    stage2 = {p.id: p.raw for p in lines if p.stage == 2}
    assert set(stage1) == {ex.id for ex in examples}
    assert set(stage2) == set(histories)  # no history, no stage 2
    assert HIGH in stage2[examples[0].id]
    if LOW in stage1[examples[0].id]:
        assert stage2[examples[0].id] != stage1[examples[0].id]
    assert stage2[examples[1].id] == stage1[examples[1].id]  # history gives no reason to change


def test_stage2_conversation_carries_stage1_and_history(tiny_hf):
    from transformers import AutoTokenizer

    from data_prep.harmony import generation_prompt

    ex = _examples(1)[0]
    msgs = stage2_prompt(ex, LOW, history_turn({"engagement_score": 2, "project_completion_rate": "60%"}))
    assert [m["role"] for m in msgs][-3:] == ["user", "assistant", "user"]
    prompt = generation_prompt(msgs, AutoTokenizer.from_pretrained(tiny_hf))
    # The earlier answer is an ended final message (<|end|>), the history a new user turn.
    assert f"<|start|>assistant<|channel|>final<|message|>{LOW}<|end|>" in prompt
    assert "Project completion rate: 60%" in prompt
    assert prompt.endswith("<|start|>assistant<|channel|>final<|message|>")


def test_endpoint_generator_against_local_server():
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append(body)
            reply = {
                "choices": [{"message": {"role": "assistant", "content": f"echo {len(body['messages'])}"}}]
            }
            data = json.dumps(reply).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        gen = EndpointGenerator(
            f"http://127.0.0.1:{server.server_port}/v1", "tiny", max_new_tokens=7, timeout_s=10
        )
        out = gen(
            [
                [{"role": "user", "content": "a"}],
                [{"role": "system", "content": "s"}, {"role": "user", "content": "b"}],
            ]
        )
    finally:
        server.shutdown()
    assert out == [
        "<|channel|>final<|message|>echo 1<|return|>",
        "<|channel|>final<|message|>echo 2<|return|>",
    ]
    assert seen[0]["model"] == "tiny" and seen[0]["max_tokens"] == 7 and seen[0]["temperature"] == 0.0


def test_real_run_on_tiny_model(tiny_hf):
    examples = _examples(3)
    histories = _turns({ex.id: {"engagement_score": 1, "tenure_years": 2} for ex in examples[:2]})
    gen = TransformersGenerator(tiny_hf, max_new_tokens=6, device="cpu")
    lines = predict(examples, gen, histories, "tiny", batch_size=2, progress=False)
    assert [(p.id, p.stage) for p in lines if p.stage == 2] == [(ex.id, 2) for ex in examples[:2]]
    assert all(p.raw.startswith("<|channel|>final<|message|>") for p in lines)
    # Greedy decoding is deterministic: the same inputs give the same texts. (Across batch sizes the
    # untrained model's near-tied logits may flip within ~1e-5 of padding noise, so the batching is kept.)
    again = predict(examples, gen, histories, "tiny", batch_size=2, progress=False)
    assert [p.raw for p in again] == [p.raw for p in lines]


def test_stage2_prompt_is_the_training_prompt(tmp_path):
    """Given the stage-1 answer the training conversation holds, prediction builds exactly the prompt of the
    person's stage-2 training line, from the data file alone (its stage-2 line) or from meta.history."""
    lines = generate(0)["test"][:8]
    path = tmp_path / "test.jsonl"
    write_jsonl(path, lines)
    from recipes.predict import read_examples

    read = read_examples(path)
    turns = history_turns(None, read)
    by_id = {ex.id: ex for ex in read}
    stage2_lines = [ex for ex in read if is_stage2(ex)]
    assert len(stage2_lines) == 4 and set(turns) == {person_id(ex) for ex in stage2_lines}
    for s2 in stage2_lines:
        s1 = by_id[person_id(s2)]
        assert stage2_prompt(s1, s2.messages[2]["content"], turns[s1.id]) == s2.prompt_messages
        assert stage1_messages(s1) == s2.prompt_messages[:2]
        # meta.history renders the same turn as the stage-2 line holds.
        assert history_turn(s1.meta["history"]) == s2.messages[-2]["content"]


def test_run_predicts_people_not_stage2_lines(tmp_path, monkeypatch):
    """A data_prep test file (stage-1 and stage-2 lines): one stage-1 and one stage-2 answer per person."""
    from omegaconf import OmegaConf

    from data_prep.predictions import read_predictions
    from recipes import predict as predict_mod

    path = tmp_path / "test.jsonl"
    write_jsonl(path, generate(0)["test"][:6])
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    monkeypatch.setattr(predict_mod, "TransformersGenerator", lambda *a, **k: rule_generator)
    cfg = OmegaConf.merge(
        OmegaConf.structured(predict_mod.PredictConf),
        {"model_dir": str(tmp_path / "model"), "input": str(path), "out": str(tmp_path / "p.jsonl")},
    )
    predict_mod.run(cfg)
    lines, malformed = read_predictions(tmp_path / "p.jsonl")
    assert not malformed
    people = [f"builtin-test-{i:04d}" for i in range(3)]
    assert sorted((p.id, p.stage) for p in lines) == sorted((i, s) for i in people for s in (1, 2))
