"""Shared paths and config helpers for the evaluator and baseline tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "conf"
FIXTURES = Path(__file__).resolve().with_name("fixtures")
# Real reference data lives beside the repository, never inside it (../shared/data from the repo root).
SHARED_DATA = REPO.parent / "shared" / "data"
IBM_CSV = SHARED_DATA / "hr" / "ibm_hr_attrition.csv"


def compose_config(name: str, overrides: list[str]):
    """The composed Hydra config ``conf/<name>.yaml`` with ``overrides``, as the command line would see it."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose(config_name=name, overrides=overrides)


@pytest.fixture(scope="session")
def compose():
    """`compose_config` as a fixture: test modules never import `conftest` (every test folder has one)."""
    return compose_config


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def _evaluate_base():
    return compose_config(
        "evaluate",
        [
            f"predictions={FIXTURES / 'predictions.jsonl'}",
            f"references={FIXTURES / 'references.jsonl'}",
            "bootstrap.samples=0",
            "plots=false",
        ],
    )


@pytest.fixture
def fixture_eval(tmp_path, _evaluate_base):
    """conf/evaluate.yaml composed once on the hand-made fixtures; ``key=value`` overrides are merged on a copy
    (through the typed schema, so a wrong key or type still fails)."""

    def make(*overrides: str):
        cfg = OmegaConf.merge(
            _evaluate_base, OmegaConf.from_dotlist([f"out_dir={tmp_path / 'eval'}", *overrides])
        )
        return cfg

    return make


@pytest.fixture
def ibm_csv() -> Path:
    if not IBM_CSV.is_file():
        pytest.skip(f"real IBM HR data not found at {IBM_CSV} (../shared/data is absent on this machine)")
    return IBM_CSV
