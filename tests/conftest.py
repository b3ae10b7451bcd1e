"""Shared fixtures: the tiny gpt-oss, built once per session, and the path to ../shared/data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
REAL_TOKENIZER = SHARED_DATA / "gpt-oss" / "tokenizer"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


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
