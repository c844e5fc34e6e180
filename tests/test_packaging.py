"""The package installs as users get it: a wheel with every module and the `tvq` console command."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_holds_every_module_and_the_console_command(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
                           "-q", "-w", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    wheel = next(tmp_path.glob("tvq-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"tvq/{p.relative_to(ROOT / 'tvq').as_posix()}" for p in (ROOT / "tvq").rglob("*.py")}
    expected |= {f"tvq/apps/{p.relative_to(ROOT / 'apps').as_posix()}" for p in (ROOT / "apps").rglob("*.py")}
    assert expected <= names, f"missing from the wheel: {sorted(expected - names)}"
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "tvq = tvq.apps.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_console_command_lists_the_commands():
    proc = subprocess.run([sys.executable, "-m", "tvq.apps.cli", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for command in ("scene", "make-scene", "train", "demo", "render"):
        assert command in proc.stdout
