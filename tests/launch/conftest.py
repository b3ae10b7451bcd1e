"""Launch tests: NeMo-Run writes under a temporary NEMORUN_HOME; presets read the real model configs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO.parent / "shared" / "data" / "gpt-oss" / "configs"
LAUNCH_VARS = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "SLURM_ACCOUNT")


@pytest.fixture(autouse=True)
def nemorun_home(tmp_path, monkeypatch):
    monkeypatch.setenv("NEMORUN_HOME", str(tmp_path / "nemo_run"))
    monkeypatch.setenv("GPT_OSS_WORK", str(tmp_path / "work"))
    # Presets name the real models; without their configs the planner falls back to nothing, so skip.
    for var, name in (("GPT_OSS_20B", "gpt-oss-20b"), ("GPT_OSS_120B", "gpt-oss-120b")):
        monkeypatch.setenv(var, str(CONFIGS / name))
    # The pair executor sets the rendezvous variables in this process's environment for NeMo-Run's torchrun
    # component. tests/conftest.py's restore_environ undoes that after each test; this also starts each launch
    # test without the ones the shell running pytest may have (a stray NODE_RANK=1 makes a run rank 1).
    for var in LAUNCH_VARS:
        monkeypatch.delenv(var, raising=False)
    # NeMo-Run's LocalTunnel runs shell commands through invoke, which forwards stdin; pytest's is closed.
    with open(os.devnull) as devnull:
        monkeypatch.setattr(sys, "stdin", devnull)
        yield tmp_path / "nemo_run"


@pytest.fixture
def real_configs():
    if not CONFIGS.is_dir():
        pytest.skip(f"real gpt-oss configs not present at {CONFIGS}")
