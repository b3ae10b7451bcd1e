"""Fixtures for the data-prep tests (helpers live in dp_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from dp_helpers import hr_rows, to_csv_bytes


@pytest.fixture
def hr_csv(tmp_path) -> Path:
    p = tmp_path / "hr.csv"
    p.write_bytes(to_csv_bytes(hr_rows(400)))
    return p
