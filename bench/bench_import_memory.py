"""Peak host memory of importing and exporting gpt-oss: ours against stock NeMo's and the whole-model path.

Writes synthetic MXFP4 checkpoints with the real gpt-oss-20b (or, ``--model 120b``, gpt-oss-120b) names, dtypes
and shapes (random values) and k layers, then runs, each in its own process so each peak is its own (VmHWM of
the measured process, read from /proc/self/status: ``ru_maxrss`` would inherit the parent's peak across
exec), side by side in one invocation. Imports:

- ``stock``: NeMo 2.7.3's ``HFGPTOSSImporter.apply`` (reads and dequantises the whole checkpoint, then
  builds the model and saves a NeMo checkpoint);
- ``ours-ckpt``: ``convert.import_hf.import_hf``, the streaming import: the model is built on the meta
  device and each tensor is read from the source when the checkpoint writer writes it;
- ``ours-ckpt-memory``: ``import_hf(streaming=False)``: the model built in memory, filled a tensor at a
  time, then saved by NeMo (the same checkpoint, bit for bit);
- ``ours-model``: a trainable model without an intermediate checkpoint: the model built as training builds
  it, filled by ``convert.import_hf.load_hf_weights``.

Exports, of the bf16 NeMo checkpoint that ``ours-ckpt`` writes (made once per k, not measured by these modes):

- ``export-stock``: NeMo 2.7.3's ``HFGPTOSSExporter.apply`` (loads the model, converts the state dict, builds a
  transformers model and saves it);
- ``export-whole``: ``GptOssHFExporter.apply``, the same whole-model structure with a faithful config;
- ``export-dense``: ``convert.export_hf.export_hf``, streaming, BF16 (the source's dtype);
- ``export-mxfp4``: the same with ``fmt="mxfp4"``: experts equal to the source's are copied byte for byte, and
  the parent then checks every output tensor against the source, byte for byte.

Merges and exports of a LoRA checkpoint on that import (``write_synthetic_lora``: NeMo's LoRA checkpoint
layout, adapters of rank 8 on attention (qkv, proj) and on every expert (fc1, fc2) of every layer, random
values, so every weight of the model changes; made once per k, not measured):

- ``merge-whole``: ``convert.merge_lora.merge_lora(streaming=False)``: NeMo's restore of base and adapters,
  ``LoRAMerge``, save (the whole model in memory, as NeMo's ``llm.peft.merge_lora``);
- ``merge``: ``merge_lora``, streaming: each tensor read from the base, merged and written;
- ``export-lora-dense`` / ``export-lora-mxfp4``: ``export_hf`` straight from the LoRA checkpoint (the merge
  done as each tensor is written; MXFP4: every expert changed, so every expert is quantised).

All build the model in bf16. Each mode runs for its own list of k (``--run MODE:K,K``). The summary gives,
per k, the peak RSS of every mode with its wall time, then per mode the slope in GiB per added layer (a
least-squares line through its measured points), and stock's figure at every k where ours was measured:
measured where stock ran, otherwise extrapolated along stock's line and marked ``ext.``. Stock needs
several GiB per 20b layer: on a small shared machine give it small k only.

Examples:
    python bench/bench_import_memory.py --run stock:1,2 ours-ckpt:2,4,8 ours-model:2,4
    python bench/bench_import_memory.py --run export-whole:1 export-dense:1,2,4,8 export-mxfp4:1,2,4,8
    python bench/bench_import_memory.py --model 120b --run export-dense:1,2 export-mxfp4:1,2
    python bench/bench_import_memory.py --run merge-whole:1,2 merge:1,2,4,8 export-lora-dense:1,2,4,8
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CONFIGS = ROOT.parent / "shared" / "data" / "gpt-oss"
BF16 = ("params_dtype", "pipeline_dtype", "autocast_dtype")


def write_synthetic(folder: Path, k: int, model: str = "20b") -> Path:
    """An MXFP4 checkpoint of gpt-oss-``model`` cut to ``k`` layers: one safetensors file per layer plus one
    for embeddings, final norm and head, an index, the real config (``num_hidden_layers=k``) and tokenizer."""
    import torch
    from safetensors.torch import save_file

    from convert.gpt_oss import expected_hf_shapes, load_hf_config
    from convert.mxfp4 import NOT_QUANTIZED

    cfg = load_hf_config(CONFIGS / "configs" / f"gpt-oss-{model}")
    cfg["num_hidden_layers"], cfg["layer_types"] = k, cfg["layer_types"][:k]
    cfg["quantization_config"] = {"modules_to_not_convert": NOT_QUANTIZED, "quant_method": "mxfp4"}
    shapes = expected_hf_shapes(cfg, quantized=True)
    g = torch.Generator().manual_seed(0)
    groups: dict[str, dict] = {}
    for name, shape in shapes.items():
        file = f"layer-{name.split('.')[2]}.safetensors" if ".layers." in name else "outer.safetensors"
        groups.setdefault(file, {})[name] = shape
    folder.mkdir(parents=True)
    weight_map, total = {}, 0
    for file, members in groups.items():
        tensors = {}
        for name, shape in members.items():
            if name.endswith("_blocks"):
                t = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
            elif name.endswith("_scales"):
                t = torch.randint(118, 124, shape, generator=g, dtype=torch.uint8)  # values ~1e-2
            else:
                t = torch.empty(shape, dtype=torch.bfloat16).normal_(0, 0.02, generator=g)
            tensors[name] = t
            total += t.numel() * t.element_size()
        save_file(tensors, str(folder / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, file))
        del tensors
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    for f in (CONFIGS / "tokenizer").iterdir():
        shutil.copy2(f, folder / f.name)
    return folder


LORA_RANK, LORA_ALPHA = 8, 16
LORA_TARGETS = ("linear_qkv", "linear_proj", "linear_fc1", "linear_fc2")


def write_synthetic_lora(base: Path, folder: Path) -> Path:
    """A LoRA checkpoint on the NeMo checkpoint ``base`` as a fine-tuning run writes one: ``weights/`` holds
    the adapters in torch_dist (layer axis first, then the expert axis: megatron-core's sharded keys) with
    ``adapter_metadata.json`` naming ``base``; ``context/`` is base's with NeMo's ``LoRA`` transform added.
    Adapters on qkv, proj and every expert's fc1 and fc2, random (linear_out too, so every delta is nonzero)."""
    import fiddle as fdl
    import torch
    import torch.distributed as dist
    from fiddle._src.experimental import serialization
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing import ShardedObject, ShardedTensor
    from nemo.collections.llm.peft.lora import LoRA
    from nemo.lightning import io as nemo_io

    from compat import cpu
    from convert.checkpoint import CheckpointTensors

    stored = CheckpointTensors(base)
    layers = "module.decoder.layers."
    weights = (
        "self_attention.linear_qkv.weight",
        "self_attention.linear_proj.weight",
        "mlp.experts.experts.linear_fc1.weight",
        "mlp.experts.experts.linear_fc2.weight",
    )
    g = torch.Generator().manual_seed(1)
    adapters = {}
    for name in weights:
        shape = stored.shape(layers + name)  # [L, out, in] or [L, E, out, in]
        lead, (out_f, in_f) = shape[:-2], shape[-2:]
        stem = layers + name.removesuffix(".weight")
        a = torch.empty(*lead, LORA_RANK, in_f).normal_(0, 0.02, generator=g)
        b = torch.empty(*lead, out_f, LORA_RANK).normal_(0, 0.02, generator=g)
        for part, t in (("linear_in", a), ("linear_out", b)):
            key = f"{stem}.adapter.{part}"
            adapters[f"{key}.weight"] = ShardedTensor.from_rank_offsets(f"{key}.weight", t, replica_id=0)
            # Each adapter layer's (empty) extra state, one object per layer (and expert), which NeMo's
            # restore asks for.
            for offsets in itertools.product(*(range(n) for n in lead)):
                adapters[f"{key}._extra_state/{offsets}"] = ShardedObject(
                    f"{key}._extra_state", None, tuple(lead), offsets, replica_id=0
                )
    weights_dir = folder / "weights"
    weights_dir.mkdir(parents=True)
    cpu.enable()  # megatron-core's writer synchronises CUDA
    created = not dist.is_initialized()
    if created:
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        content = torch.load(base / "weights" / "common.pt", weights_only=False).get("content_metadata")
        dist_checkpointing.save(adapters, str(weights_dir), content_metadata=content)
    finally:
        if created:
            dist.destroy_process_group()
    (weights_dir / "adapter_metadata.json").write_text(json.dumps({"model_ckpt_path": str(base)}))
    shutil.copytree(base / "context", folder / "context")
    context = nemo_io.load_context(base / "context", build=False)
    context.model.model_transform = fdl.Config(
        LoRA, target_modules=list(LORA_TARGETS), dim=LORA_RANK, alpha=LORA_ALPHA
    )
    (folder / "context" / "io.json").write_text(serialization.dump_json(context))
    return folder


def child(mode: str, ckpt: Path, out: Path) -> None:
    """Run one mode in this process and print its peak RSS and wall time as JSON."""
    import torch

    bf16 = {**dict.fromkeys(BF16, torch.bfloat16), "bf16": True}
    t0 = time.perf_counter()
    if mode == "stock":
        import functools

        import nemo.collections.llm.gpt.model.gpt_oss as stock

        from compat import cpu

        cpu.enable()
        # Stock fills every field but layers and experts with 20b values, which is right for these shapes;
        # it only needs the CPU measures (without the fp32 ones) to run on this host.
        host = {k: v for k, v in cpu.config_overrides().items() if k not in (*BF16, "bf16")}
        real_config = stock.GPTOSSConfig

        class StockOnHost(stock.HFGPTOSSImporter):
            @functools.cached_property
            def config(self):
                # The partial is in place only while stock builds its config: NeMo's io context must find
                # the real class under its name when it serialises the config.
                stock.GPTOSSConfig = functools.partial(real_config, **host)
                try:
                    return stock.HFGPTOSSImporter.config.func(self)
                finally:
                    stock.GPTOSSConfig = real_config

        # Stock's mapping names Transformer Engine's modules (fused input norm, grouped experts); without TE
        # the model has the plain ones. Rename its targets (expert order is then not stock's, which does
        # not change memory) and keep everything else, tensors and their lifetimes, stock.
        real_apply = stock.io.apply_transforms

        def local_names(key):
            key = key.replace("self_attention.linear_qkv.layer_norm_weight", "input_layernorm.weight")
            for fc in ("linear_fc1", "linear_fc2"):
                for kind in ("weight", "bias"):
                    key = key.replace(f"experts.{fc}.{kind}*", f"experts.local_experts.*.{fc}.{kind}")
            return key

        def apply_transforms(source, target, mapping, transforms=None, **kwargs):
            for t in transforms or []:
                t.target_key = local_names(t.target_key)
            mapping = {k: local_names(v) for k, v in mapping.items()}
            return real_apply(source, target, mapping=mapping, transforms=transforms, **kwargs)

        stock.io.apply_transforms = apply_transforms
        importer = StockOnHost(str(ckpt))
        importer.trust_remote_code = False
        importer.apply(out)
    elif mode in ("ours-ckpt", "ours-ckpt-memory"):
        from convert.import_hf import import_hf

        import_hf(ckpt, out, verify=False, streaming=mode == "ours-ckpt", **bf16)
    elif mode == "ours-model":
        from nemo.lightning import teardown

        from compat import cpu
        from convert.import_hf import GptOssHFImporter, load_hf_weights

        importer = GptOssHFImporter(str(ckpt))
        importer.config_overrides = bf16
        cpu.enable()
        model = importer.init()
        trainer = importer.nemo_setup(model)
        load_hf_weights(model.module, str(ckpt), importer.config)
        teardown(trainer, model)
    elif mode == "export-stock":
        import nemo.collections.llm.gpt.model.gpt_oss as stock

        from compat import cpu

        cpu.enable()
        stock.HFGPTOSSExporter.trust_remote_code = False  # read by its init, never set by its apply
        stock.HFGPTOSSExporter(str(ckpt)).apply(out)
    elif mode == "export-whole":
        from convert.checkpoint import GptOssHFExporter

        GptOssHFExporter(str(ckpt)).apply(out)
    elif mode in ("export-dense", "export-mxfp4"):
        from convert.export_hf import export_hf

        export_hf(ckpt, out, verify=False, fmt=mode.removeprefix("export-"))
    elif mode in ("merge", "merge-whole"):
        from convert.merge_lora import merge_lora

        merge_lora(ckpt, out, streaming=mode == "merge")
    elif mode in ("export-lora-dense", "export-lora-mxfp4"):
        from convert.export_hf import export_hf

        export_hf(ckpt, out, verify=False, fmt=mode.removeprefix("export-lora-"))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    seconds = time.perf_counter() - t0
    # This process's own peak (the kernel's high-water mark of its address space since exec).
    peak = own_peak_bytes()
    # Children: the largest forked checkpoint writer, if any (its RSS counts the pages it shares with this
    # process, so it is not added to ours). Linux reports ru_maxrss in KiB.
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    print(
        json.dumps({"peak_rss_gib": peak / 2**30, "children_rss_gib": children / 2**30, "seconds": seconds})
    )


def own_peak_bytes() -> int:
    """VmHWM of this process: its resident high-water mark since exec (ru_maxrss also counts the parent's)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status (not Linux?)")


def same_bytes(source: Path, exported: Path) -> tuple[bool, list[str]]:
    """Whether every tensor of ``exported`` equals the source's tensor of that name byte for byte (one tensor
    in memory at a time), and the names that differ or are missing on either side."""
    import torch
    from safetensors import safe_open

    from convert.gpt_oss import checkpoint_files, read_header

    def where(folder):
        return {k: f for f in checkpoint_files(folder) for k in read_header(f)}

    a, b = where(source), where(exported)
    bad = sorted(set(a) ^ set(b))
    for name in sorted(set(a) & set(b)):
        with safe_open(str(a[name]), "pt") as fa, safe_open(str(b[name]), "pt") as fb:
            x, y = fa.get_tensor(name), fb.get_tensor(name)
            if x.dtype != y.dtype or not torch.equal(x.view(torch.uint8), y.view(torch.uint8)):
                bad.append(name)
    return not bad, bad


def run(mode: str, ckpt: Path, out: Path) -> dict:
    with socket.socket() as s:  # each child rendezvouses on its own free port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    cmd = [sys.executable, __file__, "--child", mode, "--ckpt", str(ckpt), "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode:
        return {"error": (proc.stdout + proc.stderr)[-1500:]}
    result = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            result.update(json.loads(line))
    return result


IMPORTS = ("stock", "ours-ckpt", "ours-ckpt-memory", "ours-model")
EXPORTS = ("export-stock", "export-whole", "export-dense", "export-mxfp4")
LORA = ("merge-whole", "merge", "export-lora-dense", "export-lora-mxfp4")
MODES = IMPORTS + EXPORTS + LORA


def parse_runs(specs: list[str]) -> dict[str, list[int]]:
    """``["stock:1,2", "ours-ckpt:2,4,8"]`` -> ``{"stock": [1, 2], "ours-ckpt": [2, 4, 8]}``."""
    runs = {}
    for spec in specs:
        mode, _, ks = spec.partition(":")
        if mode not in MODES or not ks:
            raise SystemExit(f"--run {spec!r}: expected MODE:K[,K...] with MODE one of {', '.join(MODES)}")
        runs[mode] = sorted({int(k) for k in ks.split(",")})
    return runs


def line(points: list[tuple[int, float]]) -> tuple[float, float] | None:
    """Least-squares ``(slope, intercept)`` of peak GiB against k; None with fewer than two k."""
    if len({k for k, _ in points}) < 2:
        return None
    n = len(points)
    mk, mv = sum(k for k, _ in points) / n, sum(v for _, v in points) / n
    slope = sum((k - mk) * (v - mv) for k, v in points) / sum((k - mk) ** 2 for k, _ in points)
    return slope, mv - slope * mk


def summary(rows: list[dict], runs: dict[str, list[int]], model: str, layers: int) -> str:
    """The measurements as a table, per-layer slopes, the projection to the whole model, and the ratio of the
    reference path (stock for imports, the whole-model export for exports) to ours at every measured k."""
    peaks = {(r["mode"], r["k"]): r for r in rows if "peak_rss_gib" in r}
    modes = [m for m in MODES if m in runs]
    ks = sorted({r["k"] for r in rows})
    sizes = {r["k"]: r for r in rows}
    out = [
        "Peak resident memory (VmHWM of the measured process, GiB) and wall time, one process per cell;",
        f"synthetic gpt-oss-{model} MXFP4 checkpoints cut to k layers (real names, shapes, dtypes; model in bf16).",
        "'on disk': the MXFP4 checkpoint; 'bf16 model': the weights an in-memory model holds (parameter count x 2 bytes).",
        "Imports: stock = NeMo's HFGPTOSSImporter.apply; ours-ckpt = import_hf, streaming; ours-ckpt-memory =",
        "import_hf(streaming=False); ours-model = a trainable model filled by load_hf_weights, no checkpoint.",
        "Exports of the bf16 NeMo import: export-stock = NeMo's HFGPTOSSExporter.apply; export-whole =",
        "GptOssHFExporter.apply (whole model); export-dense / export-mxfp4 = export_hf, streaming.",
        "Of a LoRA checkpoint on it (rank 8 on qkv, proj and every expert): merge-whole = merge_lora(streaming=",
        "False), NeMo's restore + LoRAMerge; merge = merge_lora, streaming; export-lora-* = export_hf of it.",
        "",
        f"{'k':>2} {'on disk':>8} {'bf16 model':>10}" + "".join(f" {m:>18}" for m in modes),
    ]
    for k in ks:
        cells = []
        for m in modes:
            r = peaks.get((m, k))
            if r is not None:
                cells.append(f"{r['peak_rss_gib']:7.2f} GiB {r['seconds']:4.0f} s")
            elif any(x.get("mode") == m and x["k"] == k for x in rows):
                cells.append("failed")
            else:
                cells.append("-")
        out.append(
            f"{k:>2} {sizes[k]['checkpoint_gib']:8.2f} {sizes[k]['model_gib']:10.2f}"
            + "".join(f" {c:>18}" for c in cells)
        )
    checked = [r for r in rows if "identical_to_source" in r]
    if checked:
        out += ["", "MXFP4 export without training vs the MXFP4 source, every tensor byte for byte:"]
        for r in checked:
            verdict = "identical" if r["identical_to_source"] else f"DIFFERENT: {r['differing'][:4]}"
            out.append(f"  k = {r['k']}: {verdict}")
    out += ["", f"Per added layer (least squares over the measured k) and projected at all {layers} layers:"]
    fits = {}
    for m in modes:
        points = [(k, peaks[(m, k)]["peak_rss_gib"]) for k in runs[m] if (m, k) in peaks]
        fits[m] = line(points)
        if fits[m] is None:
            out.append(f"  {m:<17} needs two measured k")
        else:
            slope, icpt = fits[m]
            out.append(
                f"  {m:<17} {slope:+.3f} GiB/layer, {icpt:.2f} GiB at k = 0 (k = "
                f"{', '.join(str(k) for k, _ in points)}); {slope * layers + icpt:.1f} GiB at k = {layers}"
            )
    for reference, ours in (
        ("stock", IMPORTS[1:]),
        ("export-whole", EXPORTS[2:]),
        ("export-stock", EXPORTS[2:]),
        ("merge-whole", LORA[1:]),
    ):
        ours = [m for m in ours if m in modes]
        if reference not in modes or not ours:
            continue
        out += ["", f"{reference} / ours ({reference} measured, or 'ext.': extrapolated along its line):"]
        for m in ours:
            for k in runs[m]:
                if (m, k) not in peaks:
                    continue
                if (reference, k) in peaks:
                    ref, label = peaks[(reference, k)]["peak_rss_gib"], "measured"
                elif fits[reference] is not None:
                    ref, label = fits[reference][0] * k + fits[reference][1], "ext."
                else:
                    continue
                ours_gib = peaks[(m, k)]["peak_rss_gib"]
                out.append(
                    f"  k = {k}: {reference} {ref:6.2f} GiB ({label:>8}) / {m} {ours_gib:5.2f} GiB = {ref / ours_gib:4.1f}x"
                )
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--run",
        nargs="+",
        default=["stock:1,2", "ours-ckpt:1,2", "ours-model:1,2"],
        help="MODE:K[,K...] for each mode to run, MODE one of " + ", ".join(MODES),
    )
    parser.add_argument(
        "--model", choices=["20b", "120b"], default="20b", help="whose shapes the layers take"
    )
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--ckpt", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, Path(args.ckpt), Path(args.out))
        return
    if not (CONFIGS / "configs" / "gpt-oss-20b" / "config.json").exists():
        sys.exit(f"needs the real gpt-oss configs and tokenizer under {CONFIGS}")
    from convert.gpt_oss import count_parameters, load_hf_config

    runs = parse_runs(args.run)
    layers = load_hf_config(CONFIGS / "configs" / f"gpt-oss-{args.model}")["num_hidden_layers"]
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-import-"))
    rows = []
    for k in sorted({k for ks in runs.values() for k in ks}):
        ckpt = work / f"mxfp4-{k}"
        if not ckpt.exists():
            write_synthetic(ckpt, k, args.model)
        disk = sum(f.stat().st_size for f in ckpt.glob("*.safetensors")) / 2**30
        model = count_parameters(ckpt) * 2 / 2**30  # bf16
        nemo = work / f"nemo-{k}"
        if any(k in runs.get(m, ()) for m in EXPORTS + LORA) and not nemo.exists():
            made = run("ours-ckpt", ckpt, nemo)  # the bf16 import the exports read; not a measured cell
            if "error" in made:
                sys.exit(f"the import for the exports failed:\n{made['error']}")
        lora = work / f"lora-{k}"
        if any(k in runs.get(m, ()) for m in LORA) and not lora.exists():
            write_synthetic_lora(nemo, lora)
        for mode in (m for m in MODES if k in runs.get(m, ())):
            out = work / f"{mode}-{k}"
            shutil.rmtree(out, ignore_errors=True)
            r = run(mode, lora if mode in LORA else nemo if mode in EXPORTS else ckpt, out)
            if mode == "export-mxfp4" and "error" not in r:
                r["identical_to_source"], r["differing"] = same_bytes(ckpt, out)
            shutil.rmtree(out, ignore_errors=True)
            rows.append({"k": k, "mode": mode, "checkpoint_gib": disk, "model_gib": model, **r})
            print(json.dumps(rows[-1]), flush=True)
        shutil.rmtree(ckpt, ignore_errors=True)
        shutil.rmtree(nemo, ignore_errors=True)
        shutil.rmtree(lora, ignore_errors=True)
    print("\n" + summary(rows, runs, args.model, layers))


if __name__ == "__main__":
    main()
