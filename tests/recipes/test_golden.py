"""Golden dumps of every final NeMo recipe: a change in NeMo, NeMo-Run or our deltas shows as a readable diff.

Each shipped experiment is built as for its GPU cluster (``build(cfg, cuda=True)``); the default
(``make finetune``: the tiny model) is built as on a machine without CUDA, as CI and a fresh laptop run it.
After an intended change, rewrite the dumps and review the diff:

    UPDATE_GOLDEN=1 python -m pytest tests/recipes/test_golden.py
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import pytest

from recipes.finetune import build
from recipes.plan import compose

REPO = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden"
CONFIGS = REPO.parent / "shared" / "data" / "gpt-oss" / "configs"
PRESETS = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml"))


def dump(cfg, cuda: bool, paths: dict[str, str]) -> str:
    """The recipe as NeMo-Run prints it, with machine-specific paths replaced by names."""
    text = str(build(cfg, cuda=cuda))
    for path, name in paths.items():
        text = text.replace(path, name)
    return text + "\n"


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / f"{name}.txt"
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(text)
    if not path.exists():
        pytest.fail(f"no golden dump {path}: run UPDATE_GOLDEN=1 python -m pytest {__file__}")
    expected = path.read_text()
    if text != expected:
        diff = "".join(
            difflib.unified_diff(expected.splitlines(True), text.splitlines(True), str(path), "built")
        )
        pytest.fail(
            f"the built recipe differs from {path}:\n{diff}\nif intended: UPDATE_GOLDEN=1 pytest {__file__}"
        )


@pytest.fixture
def fixed_paths(monkeypatch):
    monkeypatch.setenv("GPT_OSS_WORK", "WORK")
    paths = {}
    for var, name in (("GPT_OSS_20B", "gpt-oss-20b"), ("GPT_OSS_120B", "gpt-oss-120b")):
        monkeypatch.setenv(var, str(CONFIGS / name))
        paths[str(CONFIGS / name)] = f"${var}"
    return paths


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_builds_the_recipe_in_its_golden_dump(preset, fixed_paths):
    if not CONFIGS.is_dir():
        pytest.skip(f"real gpt-oss configs not present at {CONFIGS}")
    cfg = compose([f"experiment={preset}", "run_id=golden", "cluster.slurm.account=acme"])
    check_golden(preset, dump(cfg, cuda=True, paths=fixed_paths))


def test_the_default_recipe_is_in_its_golden_dump(tiny_hf, fixed_paths):
    cfg = compose([f"model.hf_path={tiny_hf}", "run_id=golden"])
    check_golden("default_tiny_cpu", dump(cfg, cuda=False, paths={**fixed_paths, str(tiny_hf): "TINY_HF"}))


def test_a_changed_recipe_shows_as_a_diff(tiny_hf, fixed_paths):
    cfg = compose([f"model.hf_path={tiny_hf}", "run_id=golden", "trainer.max_steps=7"])
    text = dump(cfg, cuda=False, paths={**fixed_paths, str(tiny_hf): "TINY_HF"})
    if os.environ.get("UPDATE_GOLDEN"):
        pytest.skip("rewriting dumps")
    with pytest.raises(pytest.fail.Exception, match=r"-    max_steps=300,\n\+    max_steps=7,"):
        check_golden("default_tiny_cpu", text)
