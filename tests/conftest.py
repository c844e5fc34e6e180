"""Shared test setup: Taichi in debug mode (bounds checks, no fast-math) and the real-scene locator."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("TVQ_DEBUG", "1")

SHARED_DATA = Path(os.environ.get("TVQ_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


def shared_scene(name: str) -> Path:
    """Path of a real scene under ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real scene {name!r} not found at {path} (set TVQ_SHARED_DATA to its parent folder)")
    return path


def cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    if cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def _console_script() -> str:
    import shutil
    import sys

    script = shutil.which("tvq") or shutil.which("tvq", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.fail("the `tvq` console command is not installed: run `pip install -e .` first")
    return script


@pytest.fixture(scope="session")
def tvq():
    """Run the installed `tvq` console command as a user types it: tvq(*args, cwd=None, timeout=600)."""
    import subprocess

    script = _console_script()

    def run(*args, cwd=None, timeout=600):
        return subprocess.run([script, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=timeout)

    run.script = script
    return run
