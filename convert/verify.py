"""Prove a conversion: compare the logits of a NeMo checkpoint with those of a Hugging Face one.

Both models run in fp32 on the same probe prompts (rendered through the checkpoint's own chat template and
long enough to cross the sliding window). Reports max |diff| and top-1 agreement of the logits, the cosine of
every layer's output, the config fields that conversions get wrong (sliding window, YaRN) and the orientation
of every expert matrix. The other side may be a NeMo checkpoint or an HF folder (an export).

Examples:
    python -m convert.verify --hf work/models/gpt-oss-tiny-hf --nemo work/models/gpt-oss-tiny-nemo
    python -m convert.verify --hf work/models/gpt-oss-tiny-hf --other work/models/gpt-oss-tiny-exported-hf
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from convert.gpt_oss import ConversionError

# Verify an import or export by default up to this size: the tiny model takes seconds, 20b would take minutes.
MAX_PARAMS = 100_000_000
# fp32 logits of a faithful conversion agree to ~1e-6 (measured 5.4e-7 on the tiny model).
TOLERANCE = 1e-4

PROBES = [
    [{"role": "user", "content": "Employee hired 2019-03-01 in Engineering, rated Exceeds. Attrition risk?"}],
    [
        {"role": "system", "content": "You are an HR analytics expert."},
        {"role": "user", "content": "Predict tenure for a Sales manager in Europe with two promotions."},
        {"role": "assistant", "content": "Expected tenure: 4.2 years"},
    ],
]


@dataclass
class Comparison:
    max_abs_diff: float
    top1_agreement: float
    logit_scale: float  # max |logit| of the reference, to read max_abs_diff against
    tokens: int


def probe_ids(tokenizer_dir: str | Path, max_len: int = 96) -> torch.Tensor:
    """Token ids of the probe prompts, ``[len(PROBES), T]`` (truncated to a common length)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    seqs = [
        tok.apply_chat_template(
            p, tokenize=True, strftime_now=lambda fmt: "2025-06-01", reasoning_effort="low"
        )
        for p in PROBES
    ]
    n = min(max_len, *(len(s) for s in seqs))
    return torch.tensor([s[:n] for s in seqs], dtype=torch.long)


def load_hf(hf_dir: str | Path):
    from transformers import GptOssForCausalLM

    # An MXFP4 checkpoint is dequantised to bf16 by transformers on a host without a GPU, whatever
    # torch_dtype says; .float() makes the comparison fp32 on both sides (every MXFP4 value is exact).
    model = GptOssForCausalLM.from_pretrained(
        str(hf_dir), torch_dtype=torch.float32, attn_implementation="eager"
    ).float()
    return model.eval()


def _record(layers, hidden: list) -> list:
    def hook(_module, _args, output):
        hidden.append((output[0] if isinstance(output, tuple) else output).detach().float())

    return [layer.register_forward_hook(hook) for layer in layers]


@torch.no_grad()
def hf_logits(hf_dir: str | Path, input_ids: torch.Tensor, hidden: list | None = None) -> torch.Tensor:
    """fp32 logits ``[B, T, V]`` of an HF folder; with ``hidden``, each layer's output ``[B, T, H]`` is appended."""
    model = load_hf(hf_dir)
    handles = _record(model.model.layers, hidden) if hidden is not None else []
    try:
        return model(input_ids=input_ids).logits.float()
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def nemo_logits(nemo_dir: str | Path, input_ids: torch.Tensor, hidden: list | None = None, state=None):
    """fp32 logits of a NeMo checkpoint (a LoRA checkpoint: its base plus the adapters, as trained); ``hidden``
    as in `hf_logits`; ``state`` (a dict) receives the model's weights in HF names and layout (for the expert
    orientation check), LoRA deltas merged."""
    from nemo.lightning import teardown

    from convert.checkpoint import GptOssHFExporter, TrainedTensors, restore_lora
    from convert.gpt_oss import McoreNames, mcore_to_hf

    if (Path(nemo_dir) / "weights" / "adapter_metadata.json").exists():
        model, trainer, _ = restore_lora(Path(nemo_dir))
    else:
        model, trainer = GptOssHFExporter(str(nemo_dir)).load()
    handles = _record(model.module.decoder.layers, hidden) if hidden is not None else []
    try:
        if state is not None:
            trained = TrainedTensors(nemo_dir)
            state.update(mcore_to_hf(trained, trained.config, McoreNames([])))
        logits = forward(model, input_ids)
    finally:
        for h in handles:
            h.remove()
        teardown(trainer, model)
    if hidden is not None:
        hidden[:] = [h.transpose(0, 1) for h in hidden]  # megatron-core is [T, B, H]
    return logits


@torch.no_grad()
def forward(model, input_ids: torch.Tensor) -> torch.Tensor:
    """Logits ``[B, T, V]`` of a NeMo GPT model (a LightningModule around megatron-core) in eval mode."""
    module = model.module
    module.eval()
    input_ids = input_ids.to(next(module.parameters()).device)  # a model trained on a GPU stays there
    position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0).expand_as(input_ids)
    logits = module(input_ids=input_ids, position_ids=position_ids, attention_mask=None)
    vocab = model.config.vocab_size
    return logits[..., :vocab].float().cpu()


def probe_callback(input_ids: torch.Tensor):
    """A Lightning callback that keeps the trained model's logits on ``input_ids`` when training ends.

    NeMo tears the parallel state down after ``fit``, so the logits of the model exactly as trained (LoRA
    adapters unmerged) are taken inside ``on_train_end``; read them from ``callback.logits``.
    """
    from lightning.pytorch import Callback

    class ProbeLogits(Callback):
        logits: torch.Tensor | None = None

        def on_train_end(self, trainer, pl_module):
            was_training = pl_module.training
            self.logits = forward(pl_module, input_ids)
            pl_module.train(was_training)

    return ProbeLogits()


def compare(test: torch.Tensor, reference: torch.Tensor) -> Comparison:
    if test.shape != reference.shape:
        raise ValueError(f"logit shapes differ: {tuple(test.shape)} vs {tuple(reference.shape)}")
    return Comparison(
        max_abs_diff=(test - reference).abs().max().item(),
        top1_agreement=(test.argmax(-1) == reference.argmax(-1)).float().mean().item(),
        logit_scale=reference.abs().max().item(),
        tokens=reference.shape[0] * reference.shape[1],
    )


def layer_cosines(test: list[torch.Tensor], reference: list[torch.Tensor]) -> list[float]:
    """Per layer, the smallest cosine similarity over tokens between two models' layer outputs."""
    if len(test) != len(reference):
        raise ValueError(f"{len(test)} layers vs {len(reference)} layers")
    cos = torch.nn.functional.cosine_similarity
    return [cos(a.double(), b.double(), dim=-1).min().item() for a, b in zip(test, reference, strict=False)]


@dataclass
class Check:
    field: str
    expected: str
    actual: str
    ok: bool


def _check(field, expected, actual) -> Check:
    return Check(field, repr(expected), repr(actual), expected == actual)


def config_checks(hf_dir: str | Path, other: str | Path) -> list[Check]:
    """The config fields that conversions get wrong, ``other`` (NeMo checkpoint or HF folder) against ``hf_dir``.

    Against NeMo: the sliding window (HF W keys -> megatron-core ``(W - 1, 0)``), which layers use it, and
    every YaRN field including the attention scale (``yarn_mscale``/``yarn_mscale_all_dim``). Against an HF
    folder: ``sliding_window``, ``layer_types`` and ``rope_scaling``.
    """
    from convert.gpt_oss import load_hf_config, nemo_config_kwargs

    hf = load_hf_config(hf_dir)
    if is_nemo_checkpoint(other):
        from nemo.lightning import io

        nemo = io.load_context(str(other), subpath="model.config")
        want = nemo_config_kwargs(hf)
        fields = ["window_size", "window_attn_skip_freq", "num_moe_experts", "moe_ffn_hidden_size"]
        fields += sorted(k for k in want if k.startswith("yarn_"))
        return [_check(f, _plain(want[f]), _plain(getattr(nemo, f))) for f in fields]
    theirs = load_hf_config(other)
    fields = ["sliding_window", "layer_types", "rope_scaling", "intermediate_size", "hidden_size"]
    return [_check(f, hf.get(f), theirs.get(f)) for f in fields]


def _plain(v):
    return list(v) if isinstance(v, (tuple, list)) else v


def expert_checks(reference, state: dict, num_layers: int) -> list[Check]:
    """Expert matrices of ``state`` (HF names and layout) equal to the reference's, bit for bit, per layer.

    The decisive orientation check: gpt-oss-20b's ``down_proj`` is square (2880 x 2880), so a transposed
    expert passes every shape check and only shows in the values.
    """
    checks = []
    for i in range(num_layers):
        for name in ("gate_up_proj", "down_proj"):
            key = f"model.layers.{i}.mlp.experts.{name}"
            ref, got = reference[key].float(), state[key].float()
            same = ref.shape == got.shape and torch.equal(ref, got)
            transposed = ref.shape == got.transpose(-1, -2).shape and torch.equal(ref, got.transpose(-1, -2))
            actual = "same layout" if same else "transposed" if transposed else "different values"
            checks.append(Check(f"{key} orientation", "same layout", actual, same))
    return checks


def is_nemo_checkpoint(path: str | Path) -> bool:
    path = Path(path)
    return (path / "context").is_dir() and (path / "weights").is_dir()


@dataclass
class Report:
    logits: Comparison
    layer_cosine: list[float]
    checks: list[Check]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def failed(self, tolerance: float) -> list[str]:
        """What fails at logit tolerance ``tolerance`` (empty when everything passes)."""
        bad = [f"{c.field}: expected {c.expected}, got {c.actual}" for c in self.checks if not c.ok]
        if self.logits.max_abs_diff > tolerance:
            bad.append(f"logits differ by {self.logits.max_abs_diff:.3g} > {tolerance:g}")
        return bad

    def summary(self) -> str:
        c = self.logits
        lines = [
            f"logits: max |diff| {c.max_abs_diff:.2e} (logit scale {c.logit_scale:.2f}), "
            f"top-1 agreement {c.top1_agreement:.1%} over {c.tokens} tokens",
            "layer output cosine (min over tokens): " + " ".join(f"{x:.7f}" for x in self.layer_cosine),
        ]
        lines += [f"{'ok ' if k.ok else 'BAD'} {k.field}: {k.actual}" for k in self.checks]
        return "\n".join(lines)


def verify(hf_dir: str | Path, other: str | Path) -> Report:
    """Compare ``other`` (a NeMo checkpoint or an HF folder, e.g. an export) with the HF folder ``hf_dir``.

    Both run in fp32 on the probe prompts: logits (max |diff|, top-1 agreement), each layer's output (cosine),
    the error-prone config fields, and the orientation of every expert matrix.

    Examples:
        python -m convert.verify --hf work/models/gpt-oss-tiny-hf --nemo work/models/gpt-oss-tiny-nemo
        python -m convert.verify --hf work/models/gpt-oss-tiny-hf --other /tmp/exported-hf
    """
    from convert.gpt_oss import HFTensors, load_hf_config

    ids = probe_ids(hf_dir)
    ref_hidden, hidden, state = [], [], {}
    reference = hf_logits(hf_dir, ids, ref_hidden)
    if is_nemo_checkpoint(other):
        test = nemo_logits(other, ids, hidden, state)
    else:
        test = hf_logits(other, ids, hidden)
        state = HFTensors(other, torch.float32)
    n = load_hf_config(hf_dir)["num_hidden_layers"]
    checks = config_checks(hf_dir, other) + expert_checks(HFTensors(hf_dir, torch.float32), state, n)
    return Report(compare(test, reference), layer_cosines(hidden, ref_hidden), checks)


def enforce(report, title: str, failure: str, strict: bool = True, tolerance: float = TOLERANCE) -> None:
    """Print ``report`` (a `Report` or any report with ``summary()`` and ``failed(tolerance)``) under ``title``;
    raise `ConversionError` starting with ``failure`` when something fails and ``strict``."""
    print(f"verify {title}:\n{report.summary()}")
    failed = report.failed(tolerance)
    if failed and strict:
        raise ConversionError(f"{failure}:\n  " + "\n  ".join(failed))


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Compare a NeMo or exported gpt-oss with a Hugging Face one."
    )
    parser.add_argument("--hf", required=True, help="reference Hugging Face folder")
    parser.add_argument("--nemo", help="NeMo checkpoint to check")
    parser.add_argument("--other", help="or: a Hugging Face folder to check (e.g. an export)")
    parser.add_argument(
        "--tolerance", type=float, default=TOLERANCE, help="max |diff| of fp32 logits accepted"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args()
    if bool(args.nemo) == bool(args.other):
        parser.error("give exactly one of --nemo and --other")
    report = verify(args.hf, args.nemo or args.other)
    print(json.dumps(asdict(report), indent=2) if args.json else report.summary())
    failed = report.failed(args.tolerance)
    if failed:
        raise SystemExit("verification failed:\n  " + "\n  ".join(failed))


if __name__ == "__main__":
    main()
