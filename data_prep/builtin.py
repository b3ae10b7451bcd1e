"""A small built-in chat dataset: the embedded default's training data, generated, never downloaded.

Each person has a profile and an individual history, and the attrition risk follows from both by a fixed rule,
so a model that learns is measurably better than the majority class, and one that also reads the history
(stage 2) measurably better than one that reads the profile alone (stage 1):

    profile_risk = "High" if years_since_promotion >= 4 and performance != "Exceeds", or engagement <= 2
    risk         = "High" if manager_feedback == "concerned"     (history; 1 in 6 people)
                   "Low"  if manager_feedback == "strong"        (history; 1 in 6 people)
                   profile_risk otherwise

From the profile alone the best answer is ``profile_risk`` (right for 5 in 6 people); with the history every
answer can be right. Every split holds, per person, the stage-1 conversation (profile -> risk) and the stage-2
conversation that continues it (`data_prep.stage2`): the population-level answer (``profile_risk``) as the
earlier assistant turn, the history as a new user turn, the risk as the answer. ``meta.history`` of the stage-1
line holds the history too, for ``recipes.predict``.

Examples:
    python -m data_prep.builtin --out work/data/builtin
"""

from __future__ import annotations

import argparse
import random
import tempfile
from pathlib import Path

from data_prep.schema import ChatExample, write_jsonl
from data_prep.stage2 import history_turn, stage2_id, stage2_messages

SYSTEM = "You are an HR analytics expert. Predict the attrition risk of the employee from the profile."
DEPARTMENTS = ("Engineering", "Sales", "Finance", "Support", "Marketing")
REGIONS = ("North America", "Europe", "Asia Pacific")
PERFORMANCE = ("Below", "Meets", "Exceeds")
# Drawn uniformly: "strong" and "concerned" (which override the profile's risk) 1 in 6 each.
FEEDBACK = ("strong", "solid", "solid", "mixed", "mixed", "concerned")
SPLITS = {"train": 192, "validation": 32, "test": 64}  # people; each gives a stage-1 and a stage-2 line


def profile_rule(years_since_promotion: int, performance: str, engagement: int) -> bool:
    """The population-level risk, from the profile alone: True means high."""
    return (years_since_promotion >= 4 and performance != "Exceeds") or engagement <= 2


def attrition_rule(
    years_since_promotion: int, performance: str, engagement: int, manager_feedback: str
) -> bool:
    """The ground truth of the built-in task: True means high attrition risk."""
    if manager_feedback in ("concerned", "strong"):
        return manager_feedback == "concerned"
    return profile_rule(years_since_promotion, performance, engagement)


def answer_text(high: bool) -> str:
    return f"Attrition risk: {'High' if high else 'Low'}"


def make_examples(rng: random.Random, index: int, split: str) -> tuple[ChatExample, ChatExample]:
    """One person's stage-1 and stage-2 examples."""
    profile = {
        "department": rng.choice(DEPARTMENTS),
        "region": rng.choice(REGIONS),
        "performance": rng.choice(PERFORMANCE),
        "years_since_promotion": rng.randint(0, 7),
        "engagement": rng.randint(1, 5),
    }
    # The history comes from its own generator, so the profiles stay those of the seed.
    h = random.Random(f"history-{split}-{index}")
    history = {
        "tenure_years": round(h.uniform(0.5, 12.0), 1),
        "project_completion_rate": f"{h.randint(40, 100)}%",
        "engagement_score": max(1, min(5, profile["engagement"] + h.choice((-1, 0, 0, 1)))),
        "manager_feedback": h.choice(FEEDBACK),
    }
    facts = (profile["years_since_promotion"], profile["performance"], profile["engagement"])
    high = attrition_rule(*facts, history["manager_feedback"])
    user = (
        "Employee Profile:\n"
        f"- Department: {profile['department']}\n"
        f"- Region: {profile['region']}\n"
        f"- Performance: {profile['performance']}\n"
        f"- Years since last promotion: {profile['years_since_promotion']}\n"
        f"- Engagement (1-5): {profile['engagement']}\n\n"
        "Predict: attrition risk"
    )
    meta = {"department": profile["department"], "region": profile["region"], "source": "builtin"}
    prompt = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]
    ex_id = f"builtin-{split}-{index:04d}"
    stage1 = ChatExample(
        id=ex_id,
        task="builtin",
        messages=[*prompt, {"role": "assistant", "content": answer_text(high)}],
        label={"attrition": high},
        meta={**meta, "history": history},
    )
    population = answer_text(profile_rule(*facts))
    stage2 = ChatExample(
        id=stage2_id(ex_id),
        task="builtin",
        messages=[
            *stage2_messages(prompt, population, history_turn(history)),
            {"role": "assistant", "content": answer_text(high)},
        ],
        label={"attrition": high},
        meta={**meta, "stage": 2},
    )
    return stage1, stage2


def make_example(rng: random.Random, index: int, split: str) -> ChatExample:
    """One person's stage-1 example (``bench/bench_tokenize.py`` renders these)."""
    return make_examples(rng, index, split)[0]


def generate(seed: int = 0) -> dict[str, list[ChatExample]]:
    """All splits of the built-in dataset, each person's stage-1 line followed by its stage-2 line; the same
    seed gives the same examples."""
    out = {}
    for offset, (split, n) in enumerate(SPLITS.items()):
        rng = random.Random(f"{seed}-{offset}")
        out[split] = [ex for i in range(n) for ex in make_examples(rng, i, split)]
    return out


def write(out_dir: str | Path, seed: int = 0) -> dict[str, Path]:
    """Write train/validation/test JSONL files under ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    paths = {}
    for split, examples in generate(seed).items():
        paths[split] = out_dir / f"{split}.jsonl"
        write_jsonl(paths[split], examples)
    return paths


def is_current(out_dir: str | Path, seed: int = 0) -> bool:
    """Whether ``out_dir`` holds, byte for byte, the files `write` makes now (a folder written by an earlier
    version of this module, or edited since, is not)."""
    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory() as tmp:
        return all(
            (out_dir / p.name).is_file() and (out_dir / p.name).read_bytes() == p.read_bytes()
            for p in write(tmp, seed).values()
        )


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
