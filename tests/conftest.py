"""Shared fixtures: private data and cache dirs for every test, and one demo model per test run."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Must match mechscope.engine.model_cache.DEMO_DIR_NAME (not imported here: conftest stays import-light).
DEMO_DIR_NAME = "smollm2-135m-instruct"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that use `demo_engine` are demo tests: `-m "not demo"` deselects them."""
    for item in items:
        if "demo_engine" in getattr(item, "fixturenames", ()) and item.get_closest_marker("demo") is None:
            item.add_marker(pytest.mark.demo)


@pytest.fixture(scope="session")
def shared_cache_dir(pytestconfig: pytest.Config) -> Path:
    """A mechscope cache shared by the whole run (and later runs): $MECHSCOPE_TEST_CACHE, else under
    pytest's cache dir, so the demo is fetched and converted once, not once per test."""
    override = os.environ.get("MECHSCOPE_TEST_CACHE")
    if override:
        path = Path(override).expanduser()
    elif getattr(pytestconfig, "cache", None) is not None:
        path = Path(pytestconfig.cache.mkdir("mechscope-cache"))
    else:  # the cacheprovider plugin is disabled (-p no:cacheprovider)
        path = Path(tempfile.gettempdir()) / "mechscope-test-cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def demo_model_folder(shared_cache_dir: Path) -> Path:
    """The converted demo model folder in the shared cache (fetched/converted on first use)."""
    from mechscope.engine.model_cache import demo_model_dir

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MECHSCOPE_CACHE_DIR", str(shared_cache_dir))
        return demo_model_dir()


@pytest.fixture(autouse=True)
def isolated_mechscope_dirs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                            monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point MECHSCOPE_DATA_DIR / MECHSCOPE_CACHE_DIR at fresh dirs; demo tests see the shared demo."""
    root = tmp_path_factory.mktemp("mechscope-env")
    cache = root / "cache"
    monkeypatch.setenv("MECHSCOPE_DATA_DIR", str(root / "data"))
    monkeypatch.setenv("MECHSCOPE_CACHE_DIR", str(cache))
    if request.node.get_closest_marker("demo") is not None:
        demo_folder = request.getfixturevalue("demo_model_folder")
        (cache / "models").mkdir(parents=True)
        (cache / "models" / DEMO_DIR_NAME).symlink_to(demo_folder, target_is_directory=True)
    return root


@pytest.fixture(scope="session")
def demo_engine(shared_cache_dir: Path, demo_model_folder: Path):
    """One `Engine.load("demo")` for the whole run (SmolLM2-135M-Instruct on CPU, fp32)."""
    from mechscope.engine import Engine

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MECHSCOPE_CACHE_DIR", str(shared_cache_dir))
        return Engine.load("demo", device="cpu")
