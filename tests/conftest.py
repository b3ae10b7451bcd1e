"""Shared fixtures (the tiny gpt-oss, built once per session, and the path to ../shared/data) and the rules
that make every run of the suite deterministic and self-contained.

- Hypothesis runs the ``deterministic`` profile on every run, on a laptop as in CI: examples derived from each
  test's name (``derandomize``), no example database (nothing learnt by one run changes the next), no deadline
  (a loaded host is not a failure), and a failure prints the ``@reproduce_failure`` blob that replays it.
  To hunt for new failures instead, pick the random profile for one run::

      HYPOTHESIS_PROFILE=explore .venv/bin/python -m pytest -q tests/data_prep

- Every test gets ``os.environ`` back as it found it (`restore_environ`): in-process NeMo runs set
  ``MASTER_PORT``, ``RANK`` and friends, which would otherwise steer the next test's rendezvous.
- ``slow`` tests get `SLOW_TIMEOUT_S` instead of the default per-test timeout of pyproject.toml.
- `kill_when_started` is the one way the interruption tests kill a child process midway (SIGKILL).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import settings

settings.register_profile("deterministic", derandomize=True, database=None, print_blob=True, deadline=None)
settings.register_profile("explore", derandomize=False, database=None, print_blob=True, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
REAL_TOKENIZER = SHARED_DATA / "gpt-oss" / "tokenizer"
# pytest-timeout's limit for `slow` tests (the default one is pyproject.toml's `timeout`): above the sum of their
# own subprocess timeouts (the two-node test: a reference run and two launches of <= 900 s each = 2,700 s), so
# those fire first with the logs; that test took 778 s on 2 cores under a load average of 12-22.
SLOW_TIMEOUT_S = 3600


def pytest_collection_modifyitems(config, items):
    skip = None if torch.cuda.is_available() else pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if skip is not None and "gpu" in item.keywords:
            item.add_marker(skip)
        # A test's own @pytest.mark.timeout wins: it is closer to the test than this one.
        if "slow" in item.keywords and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT_S))


@pytest.fixture(autouse=True)
def restore_environ():
    """Give each test the environment the one before it started with, whatever the test or NeMo set."""
    saved = dict(os.environ)
    yield
    for name in set(os.environ) - set(saved):
        del os.environ[name]
    os.environ.update(saved)


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory) -> Path:
    """The embedded default tiny gpt-oss (fp32), built from conf/model/gpt_oss_tiny.yaml."""
    from convert.tiny import build

    return build(tmp_path_factory.mktemp("models") / "tiny-hf")


@pytest.fixture(scope="session")
def tiny_nemo(tiny_hf, tmp_path_factory) -> Path:
    """The tiny gpt-oss imported into NeMo by our importer."""
    from convert.import_hf import import_hf

    return import_hf(tiny_hf, tmp_path_factory.mktemp("models") / "tiny-nemo")


@pytest.fixture
def real_tokenizer() -> Path:
    if not (REAL_TOKENIZER / "tokenizer.json").exists():
        pytest.skip(f"real gpt-oss tokenizer not present at {REAL_TOKENIZER}")
    return REAL_TOKENIZER


@pytest.fixture
def kill_when_started():
    """``kill(script, started, never)``: run ``script`` in a child Python (in the repository, on a rendezvous
    port of its own) and SIGKILL it as soon as it creates the file ``started``; the test fails with ``never``
    when the child ends first or has not created it within 240 s."""
    sys.path.insert(0, str(REPO / "tests" / "launch"))
    from launch_helpers import free_port

    def kill(script: str, started: Path, never: str) -> None:
        # In-process NeMo runs earlier in the test leave their port in os.environ: the child takes a fresh one.
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
        proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env=env)
        try:
            deadline = time.monotonic() + 240
            while not started.exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"{never} (exit code {proc.poll()})")
                time.sleep(0.2)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()

    return kill
