"""Rate-distortion evaluation of .tvq prefixes (CPU, tiny scene) and LPIPS from user-provided weight files."""

import csv
import json

import pytest
import torch

from tvq import codec, lpips, runtime
from tvq.data import load_scene
from tvq.data.synthetic import make_scene
from tvq.errors import TvqError
from tvq.eval import evaluate
from tvq.export import open_model, write_field
from tvq.rd import COLUMNS, evaluate_files, parse_ref
from tvq.train import TrainConfig, Trainer

# ---- LPIPS ------------------------------------------------------------------------------------------


def _write_weights(folder, seed=0):
    """Random weights in the formats of torchvision's AlexNet file and the lpips package's v0.1 file."""
    g = torch.Generator().manual_seed(seed)
    backbone = {}
    for i, (c_in, c_out, k, _, _) in lpips.CONVS.items():
        backbone[f"features.{i}.weight"] = torch.randn(c_out, c_in, k, k, generator=g) * (2 / (c_in * k * k)) ** 0.5
        backbone[f"features.{i}.bias"] = torch.randn(c_out, generator=g) * 0.01
    backbone["classifier.1.weight"] = torch.randn(8, 4, generator=g)  # the real file has a classifier too
    linear = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) for i, c in enumerate(lpips.CHANNELS)}
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(backbone, folder / lpips.BACKBONE_FILE)
    torch.save(linear, folder / lpips.LINEAR_FILE)
    return folder


@pytest.fixture
def no_hub_cache(tmp_path, monkeypatch):
    """An empty torch hub cache, so weights already on this machine do not leak into the test."""
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    return hub


def test_find_weights_in_a_folder_and_in_the_hub_cache(tmp_path, no_hub_cache):
    folder = _write_weights(tmp_path / "w")
    assert lpips.find_weights(folder) == (folder / lpips.BACKBONE_FILE, folder / lpips.LINEAR_FILE)
    assert lpips.find_weights(None) is None
    _write_weights(no_hub_cache / "checkpoints")
    assert lpips.find_weights(None) == (no_hub_cache / "checkpoints" / lpips.BACKBONE_FILE,
                                        no_hub_cache / "checkpoints" / lpips.LINEAR_FILE)


def test_find_weights_gives_none_for_a_missing_file(tmp_path, no_hub_cache):
    folder = _write_weights(tmp_path / "w")
    (folder / lpips.LINEAR_FILE).unlink()
    assert lpips.find_weights(folder) is None
    with pytest.raises(TvqError, match="no such folder"):
        lpips.find_weights(tmp_path / "nowhere")


def test_lpips_zero_for_equal_symmetric_and_positive(tmp_path, no_hub_cache):
    metric = lpips.LPIPS(lpips.find_weights(_write_weights(tmp_path / "w")))
    g = torch.Generator().manual_seed(1)
    x = torch.rand(40, 36, 3, generator=g)
    y = (x + 0.2 * torch.randn(40, 36, 3, generator=g)).clamp(0, 1)
    assert metric(x, x) == 0.0
    d = metric(x, y)
    assert isinstance(d, float) and d > 0
    assert metric(y, x) == pytest.approx(d, rel=1e-6)


def test_lpips_refuses_wrong_files_and_small_images(tmp_path, no_hub_cache):
    folder = _write_weights(tmp_path / "w")
    torch.save({"lin0.model.1.weight": torch.rand(1, 3, 1, 1)}, folder / lpips.LINEAR_FILE)
    with pytest.raises(TvqError, match="shape"):
        lpips.LPIPS(lpips.find_weights(folder))
    metric = lpips.LPIPS(lpips.find_weights(_write_weights(tmp_path / "w2")))
    metric(torch.rand(31, 31, 3), torch.rand(31, 31, 3))  # the smallest size AlexNet's taps survive
    with pytest.raises(TvqError, match="at least 31"):
        metric(torch.rand(30, 40, 3), torch.rand(30, 40, 3))


# ---- rate-distortion ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    runtime.init("cpu")
    root = tmp_path_factory.mktemp("rd")
    make_scene(root / "scene", size=24, n_train=6, n_val=0, n_test=2, seed=1)
    files = []
    for bits in (4, 0):
        out = root / f"bits{bits}"
        trainer = Trainer(load_scene(root / "scene"), TrainConfig(bits=bits, iters=5, max_level=4, num_lods=2,
                                                                  batch_rays=256, eval_every=0), out)
        trainer.setup()
        trainer.fit()
        g = torch.Generator().manual_seed(bits)
        with torch.no_grad():  # five steps leave an empty scene: perturb it so every LOD renders differently
            for param in trainer.field.parameters():
                param.add_(torch.randn(param.shape, generator=g) * 0.5)
            trainer.field.decoder.net[2].bias[0] += 3.0
        w, h = int(trainer.data.images.shape[2]), int(trainer.data.images.shape[1])
        path = out / "model.tvq"
        write_field(path, trainer.field, [1, 1, 1], codec.camera_header(trainer.data.Ks[0], w, h, trainer.data.c2ws))
        files.append(path)
    return root, files


def test_evaluate_files_writes_csv_json_and_plot(models, tmp_path, no_hub_cache):
    root, files = models
    lines = []
    report = evaluate_files(files, root / "scene", tmp_path / "out", refs=["jpeg:3000:20.5"], arch="cpu",
                            log=lines.append)
    with open(tmp_path / "out" / "rd.csv", newline="") as f:
        table = list(csv.reader(f))
    assert tuple(table[0]) == COLUMNS == ("file", "name", "lod", "level", "bytes", "psnr", "ssim", "lpips")
    assert len(table) == 1 + 2 * 2  # two files, two LODs each
    for path in files:
        header = open_model(path).header
        rows = [r for r in report["rows"] if r["file"] == str(path)]
        assert [r["lod"] for r in rows] == [0, 1]
        assert [r["bytes"] for r in rows] == [e["end"] for e in header["lods"]]
        assert rows[-1]["bytes"] == header["file_bytes"]
        assert [r["level"] for r in rows] == [3, 4]
        assert {r["name"] for r in rows} == {path.parent.name}
    assert all(row[7] == "n/a" for row in table[1:])
    assert any("n/a" in line and "--lpips-weights" in line for line in lines)
    assert sum("PSNR" in line for line in lines) == 4
    saved = json.loads((tmp_path / "out" / "rd.json").read_text())
    assert saved["rows"] == report["rows"] and saved["refs"] == [{"name": "jpeg", "bytes": 3000.0, "psnr": 20.5}]
    assert saved["device"]
    assert (tmp_path / "out" / "rd.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_prefix_psnr_matches_evaluate_of_the_prefix(models, tmp_path, no_hub_cache):
    """Each row is what its prefix of the file renders (the first LOD's prefix holds 8-bit decoder weights,
    the whole file their refinement too)."""
    root, files = models
    rows = evaluate_files(files[:1], root / "scene", tmp_path, arch="cpu", log=lambda _: None)["rows"]
    views = load_scene(root / "scene").split("test")
    assert len(rows) == 2
    for row in rows:  # the full file at its last LOD, and a prefix at LOD 0
        prefix = open_model(files[0], max_bytes=row["bytes"])
        assert prefix.lods == row["lod"] + 1
        want = evaluate(prefix.field, views, prefix.background, lods=[row["lod"]])[0]
        assert abs(row["psnr"] - want["psnr"]) <= 1e-6
        assert abs(row["ssim"] - want["ssim"]) <= 1e-6
    assert abs(rows[0]["psnr"] - rows[1]["psnr"]) > 1e-3  # the LODs really differ


def test_checkpoint_rows_have_no_bytes(models, tmp_path, no_hub_cache):
    root, files = models
    ckpt = files[0].parent / "checkpoint.pt"
    rows = evaluate_files([ckpt], root / "scene", tmp_path, arch="cpu", log=lambda _: None)["rows"]
    assert [(r["lod"], r["bytes"]) for r in rows] == [(0, None), (1, None)]
    with open(tmp_path / "rd.csv", newline="") as f:
        assert [row[4] for row in list(csv.reader(f))[1:]] == ["n/a", "n/a"]


def test_lpips_weights_given_but_too_small_views(models, tmp_path, no_hub_cache):
    root, files = models
    lines = []
    rows = evaluate_files(files[:1], root / "scene", tmp_path / "o", lpips_weights=str(_write_weights(tmp_path / "w")),
                          arch="cpu", log=lines.append)["rows"]
    assert all(r["lpips"] is None for r in rows)
    assert any("at least 31" in line for line in lines)
    with pytest.raises(TvqError, match="--lpips-weights"):
        evaluate_files(files[:1], root / "scene", tmp_path / "o", lpips_weights=str(tmp_path), arch="cpu",
                       log=lambda _: None)


@pytest.mark.parametrize("ref", ["a:b", "a", ":100:30", "a:-5:30", "a:100:x"])
def test_bad_ref_is_a_one_line_error(ref):
    with pytest.raises(TvqError, match="--ref"):
        parse_ref(ref)


def test_parse_ref_keeps_colons_in_the_name():
    assert parse_ref("nerf:big:1e6:31.5") == {"name": "nerf:big", "bytes": 1e6, "psnr": 31.5}


def test_bad_inputs(models, tmp_path):
    root, files = models
    with pytest.raises(TvqError, match="no such scene"):
        evaluate_files(files, root / "missing", tmp_path, arch="cpu", log=lambda _: None)
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"neither kind of file")
    with pytest.raises(TvqError, match="neither a .tvq file nor a tvq checkpoint"):
        evaluate_files([files[0], junk], root / "scene", tmp_path, arch="cpu", log=lambda _: None)
    assert not (tmp_path / "rd.csv").exists()  # refused before any work


def test_lpips_column_with_weights(models, tmp_path, no_hub_cache):
    root, files = models
    make_scene(tmp_path / "scene32", size=32, n_train=1, n_val=0, n_test=2, seed=1)  # AlexNet needs >= 31 px
    _write_weights(no_hub_cache / "checkpoints")
    rows = evaluate_files(files, tmp_path / "scene32", tmp_path / "o", arch="cpu", log=lambda _: None)["rows"]
    assert len(rows) == 4 and all(isinstance(r["lpips"], float) and r["lpips"] > 0 for r in rows)
    with open(tmp_path / "o" / "rd.csv", newline="") as f:
        assert all(float(row[7]) > 0 for row in list(csv.reader(f))[1:])
