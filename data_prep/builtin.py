"""A small built-in chat dataset: the embedded default's training data, generated, never downloaded.

Each example is an employee profile and the attrition risk that follows from it by a fixed rule, so a model
that learns the rule is measurably better than the majority class (the label is a function of the profile):

    risk = "High" if years_since_promotion >= 4 and performance != "Exceeds", or engagement <= 2
           "Low"  otherwise

Examples:
    python -m data_prep.builtin --out work/data/builtin
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from data_prep.schema import ChatExample, write_jsonl

SYSTEM = "You are an HR analytics expert. Predict the attrition risk of the employee from the profile."
DEPARTMENTS = ("Engineering", "Sales", "Finance", "Support", "Marketing")
REGIONS = ("North America", "Europe", "Asia Pacific")
PERFORMANCE = ("Below", "Meets", "Exceeds")
SPLITS = {"train": 192, "validation": 32, "test": 64}


def attrition_rule(years_since_promotion: int, performance: str, engagement: int) -> bool:
    """The ground truth of the built-in task: True means high attrition risk."""
    return (years_since_promotion >= 4 and performance != "Exceeds") or engagement <= 2


def make_example(rng: random.Random, index: int, split: str) -> ChatExample:
    profile = {
        "department": rng.choice(DEPARTMENTS),
        "region": rng.choice(REGIONS),
        "performance": rng.choice(PERFORMANCE),
        "years_since_promotion": rng.randint(0, 7),
        "engagement": rng.randint(1, 5),
    }
    high = attrition_rule(profile["years_since_promotion"], profile["performance"], profile["engagement"])
    user = (
        "Employee Profile:\n"
        f"- Department: {profile['department']}\n"
        f"- Region: {profile['region']}\n"
        f"- Performance: {profile['performance']}\n"
        f"- Years since last promotion: {profile['years_since_promotion']}\n"
        f"- Engagement (1-5): {profile['engagement']}\n\n"
        "Predict: attrition risk"
    )
    answer = f"Attrition risk: {'High' if high else 'Low'}"
    meta = {"department": profile["department"], "region": profile["region"], "source": "builtin"}
    if split == "test":
        # The individual's history, for the personalised (stage 2) prediction of recipes/predict.py; drawn
        # from its own generator so the profiles stay those of the seed.
        h = random.Random(f"history-{split}-{index}")
        meta["history"] = {
            "tenure_years": round(h.uniform(0.5, 12.0), 1),
            "project_completion_rate": f"{h.randint(40, 100)}%",
            "engagement_score": max(1, min(5, profile["engagement"] + h.choice((-1, 0, 0, 1)))),
            "manager_feedback": h.choice(("strong", "solid", "mixed", "concerned")),
        }
    return ChatExample(
        id=f"builtin-{split}-{index:04d}",
        task="builtin",
        messages=[
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": user},
            {"role": "assistant", "content": answer},
        ],
        label={"attrition": high},
        meta=meta,
    )


def generate(seed: int = 0) -> dict[str, list[ChatExample]]:
    """All splits of the built-in dataset; the same seed gives the same examples."""
    out = {}
    for offset, (split, n) in enumerate(SPLITS.items()):
        rng = random.Random(f"{seed}-{offset}")
        out[split] = [make_example(rng, i, split) for i in range(n)]
    return out


def write(out_dir: str | Path, seed: int = 0) -> dict[str, Path]:
    """Write train/validation/test JSONL files under ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    paths = {}
    for split, examples in generate(seed).items():
        paths[split] = out_dir / f"{split}.jsonl"
        write_jsonl(paths[split], examples)
    return paths


def corpus(seed: int = 0) -> list[str]:
    """Every text of the dataset, for training the tiny model's tokenizer."""
    return [m["content"] for exs in generate(seed).values() for ex in exs for m in ex.messages]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="work/data/builtin", help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for split, path in write(args.out, args.seed).items():
        print(f"{split:>10}: {path}")


if __name__ == "__main__":
    main()
