"""Export the LoRA adapters of a NeMo gpt-oss checkpoint as a Hugging Face PEFT adapter.

Writes ``adapter_model.safetensors`` and ``adapter_config.json``, which
``peft.PeftModel.from_pretrained(GptOssForCausalLM.from_pretrained(base), folder)`` loads. Only the adapter
tensors are read from the checkpoint (its ``torch_dist`` files hold them apart from the optimizer state; the
base weights live in another checkpoint and are never touched), so the export holds only the adapters in
memory, whatever the model size.

What maps exactly, and how:

- ``linear_qkv``: NeMo's adapter is ``linear_in`` A ``[r, hidden]`` and ``linear_out`` B ``[q+k+v, r]``, whose rows
  follow megatron-core's fused QKV (per query group: its q heads, then its k head, then its v head). Every one of
  ``q_proj``, ``k_proj``, ``v_proj`` gets the same A, and B's rows are split exactly as the base QKV weight is
  (`convert.gpt_oss.split_qkv`). Then ``B_q A x`` is the q rows of ``B A x``, and so on.
- ``linear_proj`` -> ``o_proj``, A and B unchanged.
- NeMo scales the adapter output by ``alpha / dim`` (``ParallelLinearAdapter.forward``); PEFT by
  ``lora_alpha / r``, so ``r = dim`` and ``lora_alpha = alpha``. NeMo's dropout in position ``pre`` is PEFT's
  ``lora_dropout``; either is off at inference.

Refused before anything is written, each with the fix (the merged export): adapters on the experts
(``peft=lora_experts``: transformers' gpt-oss keeps each layer's experts as fused 3-D parameters, not
``nn.Linear`` modules that a PEFT adapter can attach to), DoRA and CanonicalLoRA checkpoints, target patterns
and anything else that is not one LoRA pair per attention projection in every layer. A full fine-tune holds no
adapters and is exported with ``convert.export_hf``.

The folder appears only when complete (and, for small models with ``--base``, verified against the NeMo LoRA
model's own logits): it is written to ``<out>.partial`` and renamed.

Examples:
    python -m convert.export_peft --lora work/runs/gpt_oss_tiny-lora/<time>/checkpoints/<name>-last \\
        --out work/runs/gpt_oss_tiny-lora/<time>/hf_peft --base work/models/gpt-oss-tiny-hf
"""

from __future__ import annotations

import argparse
import json
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from convert import verify as verification
from convert.gpt_oss import (
    EXPERT_LORA_TARGETS,
    PEFT_MAPPED_TARGETS,
    ConversionError,
    count_parameters,
    hf_config_from_nemo,
    load_hf_config,
    split_qkv,
)

# megatron-core attention module (under decoder.layers) -> the transformers projections it becomes.
HF_PROJECTIONS = {
    "self_attention.linear_qkv": ("q_proj", "k_proj", "v_proj"),
    "self_attention.linear_proj": ("o_proj",),
}
ADAPTER_FILE, CONFIG_FILE = "adapter_model.safetensors", "adapter_config.json"
# A model parameter's adapter pair in the torch_dist index, layers stacked along the first axis.
_ADAPTER_KEY = re.compile(
    r"^(?:module\.)?decoder\.layers\.(?P<module>.+?)\.adapter\.(?P<part>linear_in|linear_out)\.weight$"
)


def merged_export_fix(lora: str | Path) -> str:
    """The command that exports any LoRA checkpoint exactly: the Hugging Face export, adapters merged."""
    return (
        f"python -m convert.export_hf --nemo {lora} --out <hf folder> (it merges the adapters into the "
        "weights as it writes them; make finetune does it at the end of a run)"
    )


@dataclass
class LoraCheckpoint:
    """What the export needs from a NeMo LoRA checkpoint, read from its context and index (no tensor)."""

    path: Path
    transform: object  # nemo.collections.llm.peft.LoRA
    config: object  # nemo GPTOSSConfig of the base model
    keys: dict[str, dict[str, str]]  # HF_PROJECTIONS module -> {"linear_in": key, "linear_out": key}
    dtype: torch.dtype

    @property
    def targets(self) -> list[str]:
        return [p for module in HF_PROJECTIONS if module in self.keys for p in HF_PROJECTIONS[module]]


def inspect_lora(path: str | Path) -> LoraCheckpoint:
    """Check that ``path`` is a NeMo LoRA checkpoint whose adapters map exactly onto a PEFT adapter.

    Reads the checkpoint's context (the LoRA transform and the model config) and the ``torch_dist`` index, never
    a tensor. Raises `ConversionError` listing every problem, with the command that exports the checkpoint
    instead.

    Examples:
        python -c "from convert.export_peft import inspect_lora as i; print(i('<lora checkpoint>').targets)"
    """
    from convert.checkpoint import require_complete

    path = Path(path)
    require_complete(
        path,
        "a fine-tuning run writes them under <run_dir>/checkpoints/<name>-last",
        "use an earlier checkpoint of the run",
    )
    if not (path / "weights" / "adapter_metadata.json").exists():
        raise ConversionError(
            f"{path} is not a LoRA checkpoint (no weights/adapter_metadata.json): a full fine-tune (or an "
            "imported model) holds the whole model and no adapters; export it with "
            f"python -m convert.export_hf --nemo {path} --out <hf folder>"
        )
    backend = json.loads((path / "weights" / "metadata.json").read_text()).get("sharded_backend")
    if backend != "torch_dist":
        raise ConversionError(
            f"{path} was saved with the {backend!r} checkpoint format; only torch_dist (NeMo 2's default) is "
            "read here. Merge it through NeMo's own loader, which reads any format: python -m convert.merge_lora "
            f"--no-streaming --lora {path} --out <merged>, then python -m convert.export_hf --nemo <merged> "
            "--out <hf folder>"
        )
    transform, config = _context(path)
    kind = type(transform).__name__
    if kind != "LoRA":
        raise ConversionError(
            f"{path} was trained with {kind}, not LoRA: "
            + (
                "DoRA (its trained magnitude vector) is not mapped by this exporter"
                if kind == "DoRA"
                else "only NeMo's LoRA (one fused adapter per linear_qkv) is mapped"
            )
            + "; neither this exporter nor the merged export (convert.export_hf, which merges LoRA pairs only) "
            "writes it: train with peft=lora or peft=lora_experts"
        )
    problems = _target_problems(transform)
    keys, dtypes, key_problems = _adapter_keys(path, transform, config)
    problems += key_problems
    if problems:
        raise ConversionError(
            f"{path} cannot be written as a Hugging Face PEFT adapter:\n  - "
            + "\n  - ".join(dict.fromkeys(problems))
            + f"\nExport it merged instead (exact for every adapter): {merged_export_fix(path)}"
        )
    if len(dtypes) != 1:
        raise ConversionError(f"{path}: adapter tensors of several dtypes {sorted(map(str, dtypes))}")
    return LoraCheckpoint(path, transform, config, keys, dtypes.pop())


def _context(path: Path):
    from nemo.lightning import io
    from nemo.lightning.ckpt_utils import ckpt_to_context_subdir

    context = ckpt_to_context_subdir(path)
    return io.load_context(context, "model.model_transform"), io.load_context(context, "model.config")


_EXPERTS_WHY = (
    "adapters on the experts (linear_fc1/linear_fc2, peft=lora_experts) have no place in a PEFT adapter: "
    "transformers' gpt-oss holds each layer's experts as fused 3-D parameters (mlp.experts.gate_up_proj "
    "[E, hidden, 2*intermediate], down_proj [E, intermediate, hidden]), not nn.Linear modules, so PEFT's "
    "target_modules have nothing to attach a per-expert LoRA pair to"
)


def _target_problems(transform) -> list[str]:
    problems = []
    targets = list(transform.target_modules or [])
    experts = [t for t in targets if t.split(".")[-1] in EXPERT_LORA_TARGETS]
    if experts:
        problems.append(f"{_EXPERTS_WHY} (target_modules has {experts})")
    other = [t for t in targets if t not in PEFT_MAPPED_TARGETS and t not in experts]
    if other:
        problems.append(
            f"target_modules {other} are not mapped: only {list(PEFT_MAPPED_TARGETS)} in every layer are "
            "(patterns that pick some layers or modules are not)"
        )
    if getattr(transform, "exclude_modules", None):
        problems.append(f"exclude_modules={list(transform.exclude_modules)} is not mapped")
    if not targets:
        problems.append("the LoRA transform names no target_modules")
    return problems


def _adapter_keys(path: Path, transform, config):
    """The adapter keys of the torch_dist index by module, their dtypes, and what does not map."""
    from torch.distributed.checkpoint import FileSystemReader

    index = FileSystemReader(str(path / "weights")).read_metadata().state_dict_metadata
    keys: dict[str, dict[str, str]] = {}
    problems, dtypes, unknown = [], set(), []
    for key, meta in index.items():
        match = _ADAPTER_KEY.match(key)
        if match is None:
            if ".adapter." in key and not key.startswith("optimizer.") and "_extra_state" not in key:
                unknown.append(key)
            continue
        module = match["module"]
        if module.startswith("mlp."):
            problems.append(f"{_EXPERTS_WHY} (the checkpoint holds {module} adapters)")
            continue
        if module not in HF_PROJECTIONS:
            unknown.append(key)
            continue
        keys.setdefault(module, {})[match["part"]] = key
        dtypes.add(meta.properties.dtype)
        stored = sum(math.prod(chunk.sizes) for chunk in meta.chunks)
        if stored != math.prod(meta.size) or meta.size[0] != config.num_layers:
            problems.append(
                f"{key} holds adapters for only some of the {config.num_layers} layers; "
                "a partial adapter is not mapped"
            )
    if unknown:
        problems.append(f"adapter tensors of no mapped module: {unknown[:4]}")
    for target in transform.target_modules or []:
        module = PEFT_MAPPED_TARGETS.get(target)
        if module and set(keys.get(module, {})) != {"linear_in", "linear_out"}:
            problems.append(
                f"target {target} has no complete linear_in/linear_out pair in {path / 'weights'}"
            )
    problems += _shape_problems(index, keys, transform.dim, config)
    return keys, dtypes, problems


def _shape_problems(index, keys, r: int, cfg) -> list[str]:
    q = cfg.num_attention_heads * cfg.kv_channels
    qkv = q + 2 * cfg.num_query_groups * cfg.kv_channels
    # (in, out) of the base linear; A is [layers, r, in] and B [layers, out, r].
    io_sizes = {
        "self_attention.linear_qkv": (cfg.hidden_size, qkv),
        "self_attention.linear_proj": (q, cfg.hidden_size),
    }
    problems = []
    for module, parts in keys.items():
        n_in, n_out = io_sizes[module]
        want = {"linear_in": (cfg.num_layers, r, n_in), "linear_out": (cfg.num_layers, n_out, r)}
        for part, key in parts.items():
            got = tuple(index[key].size)
            if got != want[part]:
                problems.append(f"{key} has shape {got}; the model and dim={r} imply {want[part]}")
    return problems


def read_adapters(ckpt: LoraCheckpoint) -> dict[str, torch.Tensor]:
    """The adapter tensors of ``ckpt`` (``[layers, ...]`` each), read alone from its torch_dist files.

    torch's distributed-checkpoint reader reads only the requested keys; nothing else (no base weight, no
    optimizer state) is loaded.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemReader

    reader = FileSystemReader(str(ckpt.path / "weights"))
    index = reader.read_metadata().state_dict_metadata
    wanted = [key for parts in ckpt.keys.values() for key in parts.values()]
    tensors = {key: torch.empty(tuple(index[key].size), dtype=index[key].properties.dtype) for key in wanted}
    with warnings.catch_warnings():
        # One process reading on purpose; torch warns whenever it loads without a process group.
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(tensors, storage_reader=reader, no_dist=True)
    return tensors


def peft_state_dict(ckpt: LoraCheckpoint, adapters: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """NeMo adapter tensors -> PEFT's ``base_model.model.model.layers.{i}.self_attn.{proj}.lora_{A,B}.weight``."""
    out = {}
    for module, parts in ckpt.keys.items():
        a_all, b_all = adapters[parts["linear_in"]], adapters[parts["linear_out"]]
        for i in range(ckpt.config.num_layers):
            a, b = a_all[i], b_all[i]
            # B's rows are in megatron's per-query-group order: split exactly as the base QKV weight is.
            bs = split_qkv(b, ckpt.config) if module == "self_attention.linear_qkv" else (b,)
            for proj, b_proj in zip(HF_PROJECTIONS[module], bs, strict=True):
                prefix = f"base_model.model.model.layers.{i}.self_attn.{proj}"
                # Own copies: safetensors refuses tensors that share memory (q, k and v share A).
                out[f"{prefix}.lora_A.weight"] = a.clone().contiguous()
                out[f"{prefix}.lora_B.weight"] = b_proj.clone().contiguous()
    return out


def lora_config(ckpt: LoraCheckpoint, base_name: str | None):
    """PEFT's ``LoraConfig`` equivalent to the checkpoint's NeMo LoRA (same scale ``alpha / r``)."""
    from peft import LoraConfig

    t = ckpt.transform
    return LoraConfig(
        r=t.dim,
        lora_alpha=t.alpha,
        lora_dropout=t.dropout,
        target_modules=ckpt.targets,
        bias="none",
        task_type="CAUSAL_LM",
        base_model_name_or_path=base_name,
        inference_mode=True,
    )


def _check_base(base: Path, cfg) -> None:
    """The HF base model has the shape the adapters were trained on."""
    theirs, ours = load_hf_config(base), hf_config_from_nemo(cfg).to_dict()
    fields = ("num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim")
    bad = [f"{f}: {theirs.get(f)} (base) vs {ours[f]} (adapters)" for f in fields if theirs.get(f) != ours[f]]
    if bad:
        raise ConversionError(
            f"--base {base} is not the model these adapters were trained on: " + "; ".join(bad)
        )


def export_peft(
    lora: str | Path,
    out: str | Path,
    base: str | Path | None = None,
    overwrite: bool = False,
    verify: bool | None = None,
) -> Path:
    """Write the LoRA adapters of ``lora`` as a Hugging Face PEFT adapter folder ``out``.

    Everything is checked before anything is written (`inspect_lora`). The folder is written to
    ``<out>.partial`` (weights first, ``adapter_config.json`` last), verified, and renamed to ``out``: an
    interruption leaves at most ``<out>.partial``, which the next export replaces.

    Args:
        lora: NeMo LoRA checkpoint (``<run_dir>/checkpoints/<name>-last``) with attention adapters.
        out: Folder to write.
        base: Hugging Face folder of the base model (or a hub name, recorded only): written to
            ``base_model_name_or_path`` and, when verifying, loaded with the adapter.
        overwrite: Replace an existing ``out``.
        verify: Compare transformers + PEFT logits with the NeMo LoRA model's before publishing; ``None``: when
            ``base`` is a folder and the model has at most ``convert.verify.MAX_PARAMS`` parameters.

    Examples:
        python -m convert.export_peft --lora <lora checkpoint> --out /tmp/adapter --base work/models/gpt-oss-tiny-hf
    """
    from safetensors.torch import save_file

    from convert.checkpoint import publishing

    lora, out = Path(lora), Path(out)
    ckpt = inspect_lora(lora)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    base_dir = Path(base) if base is not None and Path(base).is_dir() else None
    if base_dir is not None:
        _check_base(base_dir, ckpt.config)
    small = count_parameters(hf_config_from_nemo(ckpt.config).to_dict()) <= verification.MAX_PARAMS
    if verify is None:
        verify = small and base_dir is not None
        if small and base_dir is None:
            print("not verified: pass --base <HF folder of the base model> to compare with the NeMo model")
    if verify and base_dir is None:
        raise ConversionError(
            f"verifying needs the base model as a Hugging Face folder (--base); got {base!r}. "
            "Pass --base <folder>, or --no-verify"
        )
    t = ckpt.transform
    print(
        f"LoRA r={t.dim}, alpha={t.alpha} (scale {t.alpha / t.dim:g}) on {', '.join(ckpt.targets)}; "
        f"{ckpt.config.num_layers} layers, {str(ckpt.dtype).removeprefix('torch.')}"
    )
    if t.dropout and t.dropout_position == "post":
        print(
            f"note: NeMo applied dropout {t.dropout} after B, PEFT applies lora_dropout before A: the same "
            "model at inference, a different regulariser if training continues"
        )
    tensors = peft_state_dict(ckpt, read_adapters(ckpt))
    base_name = str(base_dir.resolve()) if base_dir is not None else (str(base) if base is not None else None)
    with publishing(out) as tmp:
        tmp.mkdir(parents=True)
        save_file(tensors, str(tmp / ADAPTER_FILE), metadata={"format": "pt"})
        lora_config(ckpt, base_name).save_pretrained(str(tmp))  # adapter_config.json, the file PEFT looks for
        if verify:
            verification.enforce(
                verify_adapter(tmp, base_dir, ckpt.path),
                f"PEFT adapter of {ckpt.path} (NeMo LoRA model as reference)",
                "the adapter does not reproduce the NeMo LoRA model",
                strict=ckpt.config.params_dtype == torch.float32,
            )
    return out


# ------------------------------------------------------------------------------------------------ verify


@dataclass
class AdapterReport:
    logits: object  # convert.verify.Comparison: PEFT model vs the NeMo LoRA model
    adapter_effect: float  # max |logits with - without the adapter|: ~0 means the adapter changes nothing
    mismatched_tensors: list[str]  # adapter tensors PEFT did not load as written

    def summary(self) -> str:
        c = self.logits
        lines = [
            f"logits: max |diff| {c.max_abs_diff:.2e} (logit scale {c.logit_scale:.2f}), "
            f"top-1 agreement {c.top1_agreement:.1%} over {c.tokens} tokens",
            f"the adapter moves the logits by up to {self.adapter_effect:.2e}",
        ]
        if self.mismatched_tensors:
            lines.append(f"BAD not loaded as written: {self.mismatched_tensors[:4]}")
        return "\n".join(lines)

    def failed(self, tolerance: float) -> list[str]:
        bad = [f"PEFT did not load {n} as written" for n in self.mismatched_tensors]
        if self.logits.max_abs_diff > tolerance:
            bad.append(f"logits differ by {self.logits.max_abs_diff:.3g} > {tolerance:g}")
        return bad


def verify_adapter(adapter_dir: str | Path, base: str | Path, lora: str | Path) -> AdapterReport:
    """transformers + PEFT (``base`` with the adapter in ``adapter_dir``) against the NeMo LoRA model ``lora``.

    Both run in fp32 on `convert.verify`'s probe prompts. The NeMo side is the model as trained: the base
    checkpoint the adapters were trained on, with the adapters unmerged.

    Examples:
        python -c "from convert.export_peft import verify_adapter as v; print(v('/tmp/adapter', 'work/models/gpt-oss-tiny-hf', '<lora checkpoint>').summary())"
    """
    ids = verification.probe_ids(base)
    with_adapter, without, mismatched = peft_logits(base, adapter_dir, ids)
    reference = lora_logits(lora, ids)
    effect = (with_adapter - without).abs().max().item()
    return AdapterReport(verification.compare(with_adapter, reference), effect, mismatched)


@torch.no_grad()
def peft_logits(base: str | Path, adapter_dir: str | Path, input_ids: torch.Tensor):
    """fp32 logits of ``base`` with and without the PEFT adapter, and the adapter tensors not loaded as written."""
    from peft import PeftModel
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file

    model = PeftModel.from_pretrained(verification.load_hf(base), str(adapter_dir)).eval()
    written = load_file(str(Path(adapter_dir) / ADAPTER_FILE))
    loaded = get_peft_model_state_dict(model)
    mismatched = sorted(
        set(written) ^ set(loaded)
        | {
            k
            for k in written.keys() & loaded.keys()
            if not torch.equal(written[k].float(), loaded[k].float())
        }
    )
    with_adapter = model(input_ids=input_ids).logits.float()
    with model.disable_adapter():
        without = model(input_ids=input_ids).logits.float()
    return with_adapter, without, mismatched


@torch.no_grad()
def lora_logits(lora: str | Path, input_ids: torch.Tensor) -> torch.Tensor:
    """fp32 logits of a NeMo LoRA checkpoint as trained: its base checkpoint plus the adapters, unmerged.

    Loads the model as ``convert.merge_lora`` does (NeMo's own restore of base and adapters), in the model's
    precision; the base checkpoint is the one named in ``weights/adapter_metadata.json``.
    """
    from nemo.lightning import teardown

    from convert.checkpoint import restore_lora

    lora = Path(lora)
    base = json.loads((lora / "weights" / "adapter_metadata.json").read_text())["model_ckpt_path"]
    if not Path(base, "weights").is_dir():
        raise FileNotFoundError(
            f"the base NeMo checkpoint of {lora} (model_ckpt_path in weights/adapter_metadata.json) is not at "
            f"{base} (a relative path is relative to where training ran): run from there, or pass --no-verify"
        )
    model, trainer, _ = restore_lora(lora)
    try:
        return verification.forward(model, input_ids)
    finally:
        teardown(trainer, model)


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Export the LoRA adapters of a NeMo gpt-oss checkpoint as a Hugging Face PEFT adapter."
    )
    parser.add_argument("--lora", required=True, help="NeMo LoRA checkpoint folder (context/ and weights/)")
    parser.add_argument("--out", required=True, help="PEFT adapter folder to write")
    parser.add_argument("--base", default=None, help="Hugging Face folder (or hub name) of the base model")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument(
        "--verify",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="default: for small models when --base is a folder",
    )
    args = parser.parse_args()
    try:
        out = export_peft(args.lora, args.out, args.base, args.overwrite, verify=args.verify)
    except (ConversionError, FileNotFoundError, FileExistsError) as e:
        raise SystemExit(str(e)) from None
    print(f"PEFT adapter: {out}")


if __name__ == "__main__":
    main()
