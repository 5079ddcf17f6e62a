"""Workbench core test fixtures: every test gets its own data and cache folders."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path, monkeypatch):
    """Sessions and converted models go to a temporary folder, never the user's."""
    monkeypatch.setenv("MECHSCOPE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MECHSCOPE_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path
