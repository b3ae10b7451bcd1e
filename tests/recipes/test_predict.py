"""Two-stage inference: stage 2 sees the stage-1 answer and the history, and differs where the history
warrants; the endpoint backend speaks the OpenAI chat-completions protocol; one real run on the tiny model."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

from data_prep.builtin import generate
from recipes.predict import (
    EndpointGenerator,
    TransformersGenerator,
    predict,
    stage2_messages,
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
    return generate(0)["test"][:n]


def test_stage2_differs_where_history_warrants():
    examples = _examples()
    histories = {
        examples[0].id: {"tenure_years": 3.5, "engagement_score": 1.5, "manager_feedback": "disengaged"},
        examples[1].id: {"tenure_years": 6.0, "engagement_score": 4.5, "manager_feedback": "strong"},
    }
    lines = predict(examples, rule_generator, histories, "rule", batch_size=4, progress=False)
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
    msgs = stage2_messages(ex, LOW, {"engagement_score": 2, "project_completion_rate": "60%"})
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
    histories = {ex.id: {"engagement_score": 1, "tenure_years": 2} for ex in examples[:2]}
    gen = TransformersGenerator(tiny_hf, max_new_tokens=6, device="cpu")
    lines = predict(examples, gen, histories, "tiny", batch_size=2, progress=False)
    assert [(p.id, p.stage) for p in lines if p.stage == 2] == [(ex.id, 2) for ex in examples[:2]]
    assert all(p.raw.startswith("<|channel|>final<|message|>") for p in lines)
    # Greedy decoding is deterministic: the same inputs give the same texts. (Across batch sizes the
    # untrained model's near-tied logits may flip within ~1e-5 of padding noise, so the batching is kept.)
    again = predict(examples, gen, histories, "tiny", batch_size=2, progress=False)
    assert [p.raw for p in again] == [p.raw for p in lines]
