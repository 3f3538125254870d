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


@pytest.fixture(autouse=True, scope="session")
def _study_cache_in_a_temporary_directory(tmp_path_factory) -> None:
    """Studies cache compiled artefacts in ``$SNUC_CACHE`` (default ``~/.cache/snuc``):
    point it at the test session's temporary directory, so the tests never write to the
    user's home. Workers a test spawns inherit it."""
    if "SNUC_CACHE" not in os.environ:
        os.environ["SNUC_CACHE"] = str(tmp_path_factory.mktemp("snuc-cache"))
