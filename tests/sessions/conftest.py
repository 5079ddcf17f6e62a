"""Fixtures for session tests: tiny models saved as HF folders, so the CLI can load them with --model."""

from __future__ import annotations

from pathlib import Path

import pytest


def save_tiny_folder(path: Path, seed: int) -> Path:
    from mechscope.engine.testing import tiny_model, tiny_tokenizer

    tiny_model("llama", seed=seed).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama (seed 0) saved with save_pretrained, loadable with `--model`."""
    return save_tiny_folder(tmp_path_factory.mktemp("tiny-llama-seed0"), seed=0)


@pytest.fixture(scope="session")
def other_tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same architecture with different weights (seed 1): replaying on it must drift."""
    return save_tiny_folder(tmp_path_factory.mktemp("tiny-llama-seed1"), seed=1)


@pytest.fixture(scope="session")
def folder_engine(tiny_folder: Path):
    from mechscope.engine import Engine

    return Engine.load(str(tiny_folder), device="cpu")
