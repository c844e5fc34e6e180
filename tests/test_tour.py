"""The kernel tour (apps/tour): every step end to end, its pictures and timings, and that a drifted twin fails."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tvq import reference
from tvq.apps import tour
from tvq.errors import TvqError

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"
DIFFERENTIABLE = ("gather", "codebook", "composite")


@pytest.fixture(scope="module")
def whole_tour(tmp_path_factory):
    out = tmp_path_factory.mktemp("tour")
    lines: list[str] = []
    result = tour.run_tour(None, out, log=lines.append)
    return out, result, "\n".join(map(str, lines))


@pytest.mark.slow
def test_whole_tour_writes_every_picture(whole_tour):
    out, result, _ = whole_tour
    assert list(result["steps"]) == list(tour.STEPS)
    # a guard against a step that blows up (a gradcheck at the wrong size), not a benchmark: on a 2-core CPU
    # the tour takes well under a minute with warm kernel caches
    assert result["seconds"] < 300, f"the tour took {result['seconds']:.0f} s"
    for name in tour.STEPS:
        assert result["steps"][name]["pictures"] == list(tour.PICTURES[name])
        assert result["steps"][name]["checks"], f"step {name} checked nothing"
        for picture in tour.PICTURES[name]:
            path = out / picture
            assert path.is_file(), f"{name}: {picture} not written"
            assert path.read_bytes()[:8] == PNG, f"{picture} is not a PNG"
            assert path.stat().st_size <= 150_000, f"{picture}: {path.stat().st_size} bytes"


@pytest.mark.slow
def test_whole_tour_times_every_kernel(whole_tour):
    out, result, log = whole_tour
    timings = json.loads((out / "timings.json").read_text())
    assert timings == json.loads(json.dumps(result["timings"]))
    assert "cpu" in timings["runs"]
    assert set(timings["kernels"]) == set(tour.KERNELS.values())
    for kernel, entry in timings["kernels"].items():
        cpu = entry["cpu"]
        assert cpu["taichi"]["forward_ms"] > 0 and cpu["torch"]["forward_ms"] > 0, kernel
        if kernel in DIFFERENTIABLE:
            assert cpu["taichi"]["forward_backward_ms"] > 0 and cpu["torch"]["forward_backward_ms"] > 0, kernel
        assert kernel in log  # the printed table
    assert "twin fwd" in log


@pytest.mark.slow
def test_whole_tour_checks_gradients(whole_tour):
    _, result, _ = whole_tour
    for name in DIFFERENTIABLE:
        assert any(check.startswith("gradcheck") for check in result["steps"][name]["checks"]), name
    train = result["steps"]["train"]
    assert [lod["lod"] for lod in train["lods"]] == [0, 1, 2]
    assert train["lods"][0]["bytes"] < train["lods"][1]["bytes"] < train["lods"][2]["bytes"] == train["file_bytes"]


def test_a_twin_that_drifts_fails_its_step(tmp_path, monkeypatch):
    original = reference.gather
    monkeypatch.setattr(reference, "gather", lambda *args, **kw: original(*args, **kw) + 1e-3)
    with pytest.raises(AssertionError, match="Taichi kernel and its torch twin disagree"):
        tour.run_tour("gather", tmp_path, log=lambda *a: None)


def test_a_twin_with_a_wrong_gradient_fails_its_step(tmp_path, monkeypatch):
    # the same forward values, a gradient of the depth off by 0.01 per sample
    original = reference.composite_reference

    def drifted(sigma, *args, **kw):
        colour, opacity, depth, weights = original(sigma, *args, **kw)
        return colour, opacity, depth + 0.01 * (sigma.sum() - sigma.sum().detach()), weights

    monkeypatch.setattr(reference, "composite_reference", drifted)
    with pytest.raises(AssertionError, match="dD/dsigma"):
        tour.run_tour("composite", tmp_path, log=lambda *a: None)


def test_steps_by_name_and_number():
    assert tour.resolve_step(1) == "octree"
    assert tour.resolve_step("8") == "train"
    assert tour.resolve_step("step4_gather") == "gather"
    assert [tour.resolve_step(s) for s in tour.STEPS] == list(tour.STEPS)
    with pytest.raises(TvqError, match="unknown tour step"):
        tour.resolve_step("nine")


def test_steps_are_percent_notebooks():
    folder = ROOT / "apps" / "tour"
    for name, module in tour.MODULES.items():
        text = (folder / f"{module}.py").read_text()
        assert text.startswith("# %% [markdown]\n"), module
        cells = text.split("\n# %%")
        assert len(cells) > 4, module
        for cell in cells:
            header, _, body = cell.partition("\n")
            if header.strip().endswith("[markdown]"):
                assert all(not line or line.startswith("#") for line in body.strip("\n").split("\n")), (module, header)
        assert 'if __name__ == "__main__":' in text and "def run(out: Path, log=print) -> dict:" in text


@pytest.mark.slow
def test_a_step_runs_as_a_plain_script(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "apps" / "tour" / "step1_octree.py")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "tvq-tour" / "octree_levels.png").read_bytes()[:8] == PNG
    assert "identical" in proc.stdout


def test_tour_command_runs_one_step(tvq, tmp_path):
    proc = tvq("tour", "octree", "--out", tmp_path / "tour")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "tour" / "octree_levels.png").read_bytes()[:8] == PNG
    bad = tvq("tour", "nosuch", "--out", tmp_path / "x")
    assert bad.returncode == 2 and "unknown tour step" in bad.stderr and "Traceback" not in bad.stderr
