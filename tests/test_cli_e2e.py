"""The user's path through the command line: make a scene, train, read metrics, render an orbit."""

import json

import imageio.v3 as iio
import pytest


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tvq):
    root = tmp_path_factory.mktemp("e2e")
    made = tvq("make-scene", root / "scene", "--size", 24, "--train", 8, "--val", 1, "--test", 2)
    assert made.returncode == 0, made.stderr
    run = tvq("train", root / "scene", "--out", root / "run", "--bits", 4, "--iters", 30, "--max-level", 5,
              "--num-lods", 2, "--batch-rays", 512, "--samples-per-cell", 2, "--eval-every", 10, "--arch", "cpu")
    assert run.returncode == 0, run.stderr
    return root, run


def test_train_writes_metrics_renders_and_checkpoint(trained):
    root, run = trained
    metrics = json.loads((root / "run" / "metrics.json").read_text())
    assert [row["lod"] for row in metrics["lods"]] == [0, 1]
    for row in metrics["lods"]:
        assert 0 < row["psnr"] < 100 and 0 < row["ssim"] <= 1
    assert metrics["bits"] == 4 and metrics["iterations"] == 30
    assert metrics["train_seconds"] > 0 and metrics["device"]
    assert len(metrics["history"]) == 3  # the quick checks at steps 10, 20, 30
    assert (root / "run" / "checkpoint.pt").is_file()
    assert len(list((root / "run" / "renders" / "lod1").glob("*.png"))) == 2
    assert "PSNR" in run.stdout


def test_train_refuses_to_overwrite_a_run(trained, tvq):
    root, _ = trained
    again = tvq("train", root / "scene", "--out", root / "run", "--iters", 5, "--arch", "cpu")
    assert again.returncode == 2
    assert "--resume" in again.stderr and "Traceback" not in again.stderr


def test_render_orbit_gif_and_frames(trained, tvq):
    root, _ = trained
    gif = tvq("render", root / "run" / "checkpoint.pt", "--orbit", 3, "--size", 20, "--out", root / "orbit.gif",
              "--arch", "cpu")
    assert gif.returncode == 0, gif.stderr
    frames = iio.imread(root / "orbit.gif", index=None)
    assert frames.shape[0] == 3 and frames.shape[1:3] == (20, 20)
    folder = tvq("render", root / "run" / "checkpoint.pt", "--orbit", 2, "--lod", 0, "--size", 16, "--out",
                 root / "frames", "--arch", "cpu")
    assert folder.returncode == 0, folder.stderr
    assert sorted(p.name for p in (root / "frames").iterdir()) == ["frame_0000.png", "frame_0001.png"]


@pytest.mark.parametrize("args, message", [
    (["--lod", "7"], "--lod"),
    (["--out", "x.bmp"], ".gif"),
])
def test_render_bad_inputs(trained, tvq, tmp_path, args, message):
    root, _ = trained
    base = ["render", root / "run" / "checkpoint.pt", "--orbit", 1, "--size", 8, "--arch", "cpu"]
    if "--out" not in args:
        base += ["--out", tmp_path / "o"]
    proc = tvq(*base, *args, cwd=tmp_path)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


def test_render_rejects_a_file_that_is_not_a_checkpoint(tvq, tmp_path):
    bogus = tmp_path / "checkpoint.pt"
    bogus.write_bytes(b"not a checkpoint")
    proc = tvq("render", bogus, "--out", tmp_path / "o", "--arch", "cpu")
    assert proc.returncode == 2 and "checkpoint" in proc.stderr and "Traceback" not in proc.stderr
