"""Tokenization throughput of harmony rendering with the exact loss mask (data_prep.harmony.encode).

Renders chat examples through the tokenizer's chat template and checks the mask, as the recipe's data module
does: examples/s and tokens/s on one core, with the tiny model's tokenizer and, when present, the real
gpt-oss tokenizer.

Examples:
    python bench/bench_tokenize.py --examples 2000
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "data" / "gpt-oss" / "tokenizer"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=2000)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    import random

    from transformers import AutoTokenizer

    from convert.tiny import build_tokenizer, tiny_shape
    from data_prep.builtin import make_example
    from data_prep.harmony import encode

    rng = random.Random(0)
    examples = [make_example(rng, i, "bench") for i in range(args.examples)]
    tokenizers = {"tiny (byte-level BPE)": build_tokenizer(tiny_shape()["tokenizer_vocab"])}
    if (REAL / "tokenizer.json").exists():
        tokenizers["gpt-oss o200k_harmony"] = AutoTokenizer.from_pretrained(REAL)
    with tempfile.TemporaryDirectory():
        for name, tok in tokenizers.items():
            start = time.perf_counter()
            tokens = sum(len(encode(ex, tok).input_ids) for ex in examples)
            sec = time.perf_counter() - start
            print(
                f"{name}: {len(examples):,} examples in {sec:.1f} s on one core = "
                f"{len(examples) / sec:,.0f} examples/s, {tokens / sec:,.0f} tokens/s ({tokens / len(examples):.0f} tokens/example)"
            )


if __name__ == "__main__":
    main()
