"""The user's path through the command line: make a scene, train, read metrics, render an orbit."""

import json

import imageio.v3 as iio
import pytest
import torch

from tvq.train import TrainConfig


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


# ---- the .tvq file through the command line --------------------------------------------------------------


@pytest.fixture(scope="module")
def raw_run(trained, tvq):
    root, _ = trained
    run = tvq("train", root / "scene", "--out", root / "raw", "--bits", 0, "--iters", 30, "--max-level", 5,
              "--num-lods", 2, "--batch-rays", 512, "--samples-per-cell", 2, "--eval-every", 0, "--arch", "cpu")
    assert run.returncode == 0, run.stderr
    return root / "raw"


def test_train_writes_model_tvq_and_reports_its_real_size(trained):
    root, run = trained
    metrics = json.loads((root / "run" / "metrics.json").read_text())
    model = root / "run" / "model.tvq"
    assert model.is_file() and "size" not in metrics
    assert metrics["file"]["file_bytes"] == model.stat().st_size
    assert sum(metrics["file"]["components"].values()) == model.stat().st_size
    assert [row["bytes"] for row in metrics["lods"]] == [lod["end"] for lod in metrics["file"]["lods"]]
    assert metrics["lods"][-1]["bytes"] == model.stat().st_size
    assert "model.tvq" in run.stdout


def test_info_shows_the_chunk_table_and_json(trained, tvq):
    root, _ = trained
    table = tvq("info", root / "run" / "model.tvq")
    assert table.returncode == 0, table.stderr
    assert "indices" in table.stdout and "codebook" in table.stdout and "cumulative" in table.stdout
    report = json.loads(tvq("info", root / "run" / "model.tvq", "--json").stdout)
    assert report["file_bytes"] == (root / "run" / "model.tvq").stat().st_size
    assert report["chunks"][-1]["cumulative"] == report["file_bytes"]
    assert {"header", "mlp", "structure", "indices", "codebooks"} <= {k for k, v in report["components"].items() if v}


def test_export_without_entropy_matches_the_papers_accounting(trained, tvq):
    root, _ = trained
    out = root / "raw-layout.tvq"
    proc = tvq("export", root / "run" / "checkpoint.pt", "-o", out, "--no-entropy")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(tvq("info", out, "--json").stdout)
    m = report["model"]
    assert all(row["codec"] == "raw" for row in report["chunks"])
    for row in report["chunks"]:
        payload = row["raw_bytes"] - 16  # the chunk head
        if row["kind"] == "indices":
            vertices = m["counts"]["vertices"][m["levels"].index(row["level"])]
            assert payload == (vertices * m["bits"] + 7) // 8
        elif row["kind"] == "codebook":
            assert payload == (1 << m["bits"]) * m["feature_dim"] * 2
        elif row["kind"] == "mlp":  # fp16 weights and biases of both layers, the inputs 16 features + 27 of the direction
            hidden = m["decoder"]["hidden"]
            assert hidden == TrainConfig().decoder_hidden
            assert payload == 2 * (43 * hidden + hidden + 4 * hidden + 4)
    entropy = (root / "run" / "model.tvq").stat().st_size
    assert entropy <= out.stat().st_size


def test_render_a_prefix_of_the_file(trained, tvq):
    root, _ = trained
    model = root / "run" / "model.tvq"
    first_lod = json.loads(tvq("info", model, "--json").stdout)["lods"][0]["end"]
    proc = tvq("render", model, "--bytes", first_lod, "--orbit", 1, "--size", 12, "--out", root / "prefix.gif",
               "--arch", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert "1 complete LOD" in proc.stderr
    finer = tvq("render", model, "--bytes", first_lod, "--lod", 1, "--orbit", 1, "--out", root / "x.gif",
                "--arch", "cpu")
    assert finer.returncode == 2 and "--lod" in finer.stderr
    too_few = tvq("render", model, "--bytes", 100, "--orbit", 1, "--out", root / "y.gif", "--arch", "cpu")
    assert too_few.returncode == 2 and "truncated at byte 100" in too_few.stderr
    assert not (root / "y.gif").exists()


def test_compress_kmeans_and_lra(raw_run, tvq):
    for method, option in (("kmeans", ["--bits", 3]), ("lra", ["--rank", 2])):
        out = raw_run / f"{method}.tvq"
        proc = tvq("compress", raw_run / "checkpoint.pt", "--method", method, *option, "-o", out)
        assert proc.returncode == 0, proc.stderr
        assert 0 < out.stat().st_size < (raw_run / "model.tvq").stat().st_size
        info = json.loads(tvq("info", out, "--json").stdout)
        assert info["method"] == method
        render = tvq("render", out, "--orbit", 1, "--size", 12, "--out", raw_run / f"{method}.gif", "--arch", "cpu")
        assert render.returncode == 0, render.stderr


def test_compress_refuses_a_vq_model(trained, tvq):
    root, _ = trained
    proc = tvq("compress", root / "run" / "checkpoint.pt", "--method", "kmeans", "-o", root / "k.tvq")
    assert proc.returncode == 2 and "--bits 0" in proc.stderr


def test_eval_writes_the_rate_distortion_table_and_plot(trained, raw_run, tvq, tmp_path):
    import csv

    root, _ = trained
    files = [root / "run" / "model.tvq", raw_run / "model.tvq"]
    proc = tvq("eval", *files, "--scene", root / "scene", "--out", tmp_path / "rd", "--ref", "other:5000:20.5",
               "--arch", "cpu")
    assert proc.returncode == 0, proc.stderr
    with open(tmp_path / "rd" / "rd.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["file", "name", "lod", "level", "bytes", "psnr", "ssim", "lpips"]
    assert len(rows) == 4 and all(r["lpips"] == "n/a" for r in rows)
    assert (tmp_path / "rd" / "rd.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "n/a" in proc.stderr  # says how to provide LPIPS weights
    bad = tvq("eval", files[0], "--scene", root / "scene", "--out", tmp_path / "x", "--ref", "a:b")
    assert bad.returncode == 2 and "NAME:BYTES:PSNR" in bad.stderr


def test_train_recipe_options_reach_the_model(trained, tvq):
    """--density, --decoder-hidden, --adam-beta2 and --random-background as a user types them: the run
    trains with them, its file's header carries the density, and bad values are one-line errors."""
    from tvq.export import open_model

    root, _ = trained
    run = tvq("train", root / "scene", "--out", root / "exp", "--bits", 0, "--iters", 20, "--max-level", 5,
              "--num-lods", 2, "--batch-rays", 512, "--samples-per-cell", 2, "--eval-every", 0, "--arch", "cpu",
              "--density", "exp", "--decoder-hidden", 32, "--adam-beta2", 0.99, "--random-background")
    assert run.returncode == 0, run.stderr
    config = json.loads((root / "exp" / "metrics.json").read_text())["config"]
    assert (config["density"], config["decoder_hidden"], config["adam_beta2"], config["random_background"]) == (
        "exp", 32, 0.99, True)
    model = open_model(root / "exp" / "model.tvq")
    assert model.header["model"]["decoder"]["density"] == "exp" and model.field.decoder.density == "exp"
    usage = tvq("train", root / "scene", "--out", root / "bad", "--density", "softplus")  # a choice: a usage error
    assert usage.returncode == 2 and usage.stderr.startswith("Usage: tvq") and "'relu', 'exp'" in usage.stderr
    for args, needle in ((["--adam-beta2", "1.5"], "--adam-beta2"), (["--decoder-hidden", "4"], "--decoder-hidden")):
        bad = tvq("train", root / "scene", "--out", root / "bad", "--iters", 2, "--arch", "cpu", *args)
        assert bad.returncode == 2 and needle in bad.stderr, (args, bad.stderr)
        assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr
    assert not (root / "bad").exists()


def test_resume_keeps_the_runs_own_recipe_unless_the_command_sets_it(trained, tvq):
    """A run trained with a recipe other than today's defaults resumes with its own when the command leaves the
    recipe options out; a shape option that contradicts the checkpoint is a one-line error; an explicit
    --adam-beta2 reaches the restored optimiser."""
    from tvq import checkpoint

    root, _ = trained
    common = ("--bits", 0, "--max-level", 5, "--num-lods", 2, "--batch-rays", 512, "--samples-per-cell", 2,
              "--eval-every", 0, "--arch", "cpu")
    run = tvq("train", root / "scene", "--out", root / "paper", "--iters", 10, *common, "--density", "relu",
              "--decoder-hidden", 32, "--adam-beta2", 0.999, "--lr-decay", 0.5)
    assert run.returncode == 0, run.stderr
    again = tvq("train", root / "scene", "--out", root / "paper", "--iters", 20, "--resume", *common)
    assert again.returncode == 0, again.stderr
    metrics = json.loads((root / "paper" / "metrics.json").read_text())
    assert metrics["iterations"] == 20
    config = metrics["config"]
    assert (config["density"], config["decoder_hidden"], config["adam_beta2"], config["lr_decay"]) == (
        "relu", 32, 0.999, 0.5)
    clash = tvq("train", root / "scene", "--out", root / "paper", "--iters", 30, "--resume", *common,
                "--decoder-hidden", 64)
    assert clash.returncode == 2 and "decoder_hidden=32" in clash.stderr and "Traceback" not in clash.stderr
    beta = tvq("train", root / "scene", "--out", root / "paper", "--iters", 30, "--resume", *common,
               "--adam-beta2", 0.9)
    assert beta.returncode == 0, beta.stderr
    saved = checkpoint.load(root / "paper" / "checkpoint.pt")
    assert saved["config"]["adam_beta2"] == 0.9
    assert all(group["betas"][1] == 0.9 for group in saved["optimizer"]["param_groups"])


def test_demo_continues_a_folder_trained_with_another_recipe(tmp_path, tvq):
    """A demo folder from a version with other defaults (here the paper's recipe) resumes with its recipe."""
    demo = tmp_path / "demo"
    made = tvq("make-scene", demo / "scene", "--size", 16, "--train", 3, "--val", 1, "--test", 1)
    assert made.returncode == 0, made.stderr
    old = tvq("train", demo / "scene", "--out", demo / "model-bits4", "--bits", 4, "--iters", 4, "--max-level", 6,
              "--num-lods", 3, "--batch-rays", 256, "--samples-per-cell", 2, "--eval-every", 0, "--arch", "cpu",
              "--density", "relu", "--decoder-hidden", 128, "--adam-beta2", 0.999, "--lr-decay", 1)
    assert old.returncode == 0, old.stderr
    again = tvq("demo", "--out", demo, "--iters", 6, "--arch", "cpu")
    assert again.returncode == 0, again.stderr
    metrics = json.loads((demo / "model-bits4" / "metrics.json").read_text())
    assert metrics["iterations"] == 6 and (metrics["config"]["density"], metrics["config"]["decoder_hidden"]) == (
        "relu", 128)


def test_compress_vqrf_end_to_end(trained, tvq):
    """tvq compress --method vqrf as a user types it: a summary per level, PSNR before and after, a file
    smaller than the model it compresses that renders every LOD; bad input is a one-line error."""
    from tvq.export import open_model

    root, _ = trained
    run = tvq("train", root / "scene", "--out", root / "vqrf-base", "--bits", 0, "--iters", 100, "--max-level", 5,
              "--num-lods", 2, "--batch-rays", 1024, "--samples-per-cell", 2, "--eval-every", 0, "--arch", "cpu",
              "--density", "exp")
    assert run.returncode == 0, run.stderr
    ckpt = root / "vqrf-base" / "checkpoint.pt"
    out = root / "vqrf.tvq"
    done = tvq("compress", ckpt, "--out", out, "--method", "vqrf", "--finetune-steps", 20, "--codebook", 64,
               "--prune", 0.05, "--keep", "1,0.6")  # nothing kept unquantised at the first LOD
    assert done.returncode == 0, done.stderr
    assert "level 5:" in done.stdout and "pruned" in done.stdout and "kept (8-bit)" in done.stdout
    assert "dB before" in done.stdout and "fine-tune" in done.stderr and "importance of" in done.stderr
    assert out.stat().st_size < (root / "vqrf-base" / "model.tvq").stat().st_size
    model = open_model(out)
    assert model.header["model"]["kind"] == "vqrf" and model.lods == 2
    assert model.header["model"]["vqrf"]["kept"][0] == 0 < model.header["model"]["vqrf"]["kept"][1]
    # a checkpoint whose config leaves the options that depend on the octree source unset (or predates them)
    edited = torch.load(ckpt, weights_only=True)
    edited["config"].update(samples_per_cell=None, lod_ratio=None)
    del edited["config"]["subdivide_at"]
    torch.save(edited, root / "unset.pt")
    unset = tvq("compress", root / "unset.pt", "--out", root / "unset.tvq", "--method", "vqrf", "--finetune-steps", 5,
                "--codebook", 64)
    assert unset.returncode == 0 and (root / "unset.tvq").is_file(), unset.stderr
    for lod in (0, 1):
        frames = tvq("render", out, "--out", root / f"vqrf-lod{lod}", "--orbit", 1, "--lod", lod)
        assert frames.returncode == 0, frames.stderr
        assert len(list((root / f"vqrf-lod{lod}").glob("*.png"))) == 1
    for args, needle in ((["--prune", 0.9, "--keep", 0.5], "--prune"), (["--codebook", 1], "--codebook"),
                         (["--scene", root / "nowhere"], "nowhere"), (["--keep", "0.9,x"], "--keep"),
                         (["--keep", "0.9,0.8,0.7"], "one per LOD")):
        bad = tvq("compress", ckpt, "--out", root / "bad.tvq", "--method", "vqrf", *args)
        assert bad.returncode == 2 and needle in bad.stderr, (args, bad.stderr)
        assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr
    vq = tvq("compress", root / "run" / "checkpoint.pt", "--out", root / "bad.tvq", "--method", "vqrf")
    assert vq.returncode == 2 and "--bits 0" in vq.stderr and len(vq.stderr.strip().splitlines()) == 1
    raw = tvq("compress", ckpt, "--out", root / "bad.tvq", "--method", "hybrid")
    assert raw.returncode == 2 and "--bits b" in raw.stderr and len(raw.stderr.strip().splitlines()) == 1
    assert not (root / "bad.tvq").exists()
    # the hybrid: a VQ-AD model's learned indices inside VQRF's pruning, keep set and 8-bit storage
    run = tvq("train", root / "scene", "--out", root / "hybrid-base", "--bits", 4, "--iters", 100, "--max-level", 5,
              "--num-lods", 2, "--batch-rays", 1024, "--samples-per-cell", 2, "--eval-every", 0, "--arch", "cpu",
              "--density", "exp", "--vq-warmup", 0)
    assert run.returncode == 0, run.stderr
    hybrid = tvq("compress", root / "hybrid-base" / "checkpoint.pt", "--out", root / "hybrid.tvq", "--method",
                 "hybrid", "--finetune-steps", 20, "--prune", 0.05)
    assert hybrid.returncode == 0, hybrid.stderr
    assert "(learned)" in hybrid.stderr and "dB after" in hybrid.stdout
    assert open_model(root / "hybrid.tvq").header["method"] == "hybrid"
