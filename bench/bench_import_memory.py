"""Peak host memory of making a NeMo gpt-oss model from an MXFP4 checkpoint: ours against stock NeMo's.

Writes synthetic MXFP4 checkpoints with the real gpt-oss-20b names, dtypes and shapes (random values) and
k layers, then runs, each in its own process so each peak RSS is its own, side by side in one invocation:

- ``stock``: NeMo 2.7.3's ``HFGPTOSSImporter.apply`` (reads and dequantises the whole checkpoint, then
  builds the model and saves a NeMo checkpoint);
- ``ours-ckpt``: ``convert.import_hf.import_hf`` (layer-at-a-time reading into the built model, then the
  same NeMo save);
- ``ours-model``: a trainable model without an intermediate checkpoint: the model built as training builds
  it, filled by ``convert.import_hf.load_hf_weights``.

All three build the model in bf16. Stock needs ~4.4 GiB per 20b layer, so on a small shared machine pass
only small k to it (``--stock-k``).

Examples:
    python bench/bench_import_memory.py --stock-k 1 2 --ours-k 1 2
"""

from __future__ import annotations

import argparse
import json
import math
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


def write_synthetic(folder: Path, k: int) -> Path:
    """An MXFP4 checkpoint of gpt-oss-20b cut to ``k`` layers: one safetensors file per layer plus one for
    embeddings, final norm and head, an index, the real config (``num_hidden_layers=k``) and tokenizer."""
    import torch
    from safetensors.torch import save_file

    from convert.gpt_oss import expected_hf_shapes

    cfg = json.loads((CONFIGS / "configs" / "gpt-oss-20b" / "config.json").read_text())
    cfg["num_hidden_layers"], cfg["layer_types"] = k, cfg["layer_types"][:k]
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


def child(mode: str, ckpt: Path, out: Path) -> None:
    """Run one mode in this process and print its peak RSS and wall time as JSON."""
    import torch

    bf16 = {**dict.fromkeys(BF16, torch.bfloat16), "bf16": True}
    t0 = time.perf_counter()
    if mode == "stock":
        import functools

        import nemo.collections.llm.gpt.model.gpt_oss as stock

        from recipes import cpu

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
    elif mode == "ours-ckpt":
        from convert.import_hf import import_hf

        import_hf(ckpt, out, verify=False, **bf16)
    elif mode == "ours-model":
        from nemo.lightning import teardown

        from convert.import_hf import GptOssHFImporter, load_hf_weights
        from recipes import cpu

        importer = GptOssHFImporter(str(ckpt))
        importer.config_overrides = bf16
        cpu.enable()
        model = importer.init()
        trainer = importer.nemo_setup(model)
        load_hf_weights(model.module, str(ckpt), importer.config)
        nbytes = sum(p.numel() * p.element_size() for p in model.module.parameters())
        teardown(trainer, model)
        print(json.dumps({"model_gib": nbytes / 2**30}))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    print(json.dumps({"peak_rss_gib": peak / 2**30, "seconds": time.perf_counter() - t0}))


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--stock-k", type=int, nargs="*", default=[1, 2], help="layers for stock (~4.4 GiB each)"
    )
    parser.add_argument(
        "--ours-k", type=int, nargs="*", default=[1, 2], help="layers for ours (~1.6-1.9 GiB each)"
    )
    parser.add_argument("--modes", nargs="*", default=["stock", "ours-ckpt", "ours-model"])
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--ckpt", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, Path(args.ckpt), Path(args.out))
        return
    if not (CONFIGS / "configs" / "gpt-oss-20b" / "config.json").exists():
        sys.exit(f"needs the real gpt-oss-20b config and tokenizer under {CONFIGS}")
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-import-"))
    rows = []
    for k in sorted(set(args.stock_k) | set(args.ours_k)):
        ckpt = work / f"mxfp4-{k}"
        if not ckpt.exists():
            write_synthetic(ckpt, k)
        disk = sum(f.stat().st_size for f in ckpt.glob("*.safetensors")) / 2**30
        for mode in args.modes:
            if k not in (args.stock_k if mode == "stock" else args.ours_k):
                continue
            out = work / f"{mode}-{k}"
            shutil.rmtree(out, ignore_errors=True)
            r = run(mode, ckpt, out)
            shutil.rmtree(out, ignore_errors=True)
            rows.append({"k": k, "mode": mode, "checkpoint_gib": disk, **r})
            print(json.dumps(rows[-1]), flush=True)
        shutil.rmtree(ckpt, ignore_errors=True)
    print(f"\n{'k':>2} {'mode':<11} {'ckpt GiB':>8} {'peak RSS GiB':>12} {'s':>6}")
    for r in rows:
        peak = f"{r['peak_rss_gib']:.2f}" if "peak_rss_gib" in r else "failed"
        secs = f"{r.get('seconds', math.nan):.0f}"
        print(f"{r['k']:>2} {r['mode']:<11} {r['checkpoint_gib']:>8.2f} {peak:>12} {secs:>6}")


if __name__ == "__main__":
    main()
