"""Fixtures shared by the test modules."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from snuc.datasets import resolve_data_dir
from snuc.ir.errors import SnucError


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real data sets; skip only when none is configured, fail when SNUC_DATA is wrong."""
    if os.environ.get("SNUC_DATA"):
        return resolve_data_dir()
    try:
        return resolve_data_dir()
    except SnucError as exc:
        pytest.skip(f"data sets not available: {exc}")
