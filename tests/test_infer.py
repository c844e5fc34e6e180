"""The fast inference path renders what the training renderer renders, for every kind of field and source."""

import pytest
import torch

from tvq import runtime
from tvq.data import load_scene
from tvq.data.rays import pixel_rays
from tvq.data.synthetic import make_scene
from tvq.errors import TvqError
from tvq.export import export_checkpoint, open_model
from tvq.infer import MODES, FastRenderer, raymarch_in_rounds, render_image as fast_render_image
from tvq.metrics import psnr
from tvq.render import RenderOptions, render_image
from tvq.sampling import raymarch
from tvq.train import TrainConfig, Trainer

KINDS = {"raw": (0, False, "relu"), "vq4": (4, False, "relu"), "hash3": (3, True, "relu"), "raw-exp": (0, False, "exp")}


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    root = tmp_path_factory.mktemp("infer") / "scene"
    make_scene(root, size=32, n_train=10, n_val=0, n_test=2, seed=2)
    return load_scene(root)


def train_tiny(scene, out, bits: int, hashed: bool, density: str = "relu"):
    """A model in seconds on the CPU: 3 LODs (levels 3..5), 120 steps, exported to model.tvq; it must
    render something (a field that is still transparent would make every comparison trivial)."""
    trainer = Trainer(scene, TrainConfig(bits=bits, hash=hashed, iters=120, max_level=5, num_lods=3, batch_rays=1024,
                                         samples_per_cell=2, eval_every=0, vq_warmup=0 if bits and not hashed else None,
                                         density=density),
                      out)
    trainer.setup()
    trainer.fit()
    export_checkpoint(out / "checkpoint.pt", out / "model.tvq")
    model = open_model(out / "model.tvq")
    view = scene.split("test")[0]
    opacity = FastRenderer(model.field, model.background).render(view.K, view.c2w, view.width, view.height)["opacity"]
    assert float(opacity.mean()) > 0.05, "the tiny model did not learn any density"
    return out


@pytest.fixture(scope="module", params=list(KINDS))
def run(request, scene, tmp_path_factory):
    runtime.ensure()
    bits, hashed, density = KINDS[request.param]
    return train_tiny(scene, tmp_path_factory.mktemp(request.param), bits, hashed, density)


def _compare(model, scene, renderer=None, tol_db=0.1):
    renderer = renderer or FastRenderer(model.field, model.background)
    options = RenderOptions(early_stop=True)
    for lod in range(model.lods):
        for view in scene.split("test"):
            target = torch.from_numpy(view.image).to(model.background.device)
            ref = render_image(model.field, view.K, view.c2w, view.width, view.height, lod, model.background, options)
            fast = renderer.render(view.K, view.c2w, view.width, view.height, lod)
            a, b = psnr(ref["color"], target), psnr(fast["color"], target)
            assert abs(a - b) < tol_db, (lod, view.name, a, b)
            assert fast["color"].shape == (view.height, view.width, 3)
            for key in ("opacity", "depth"):
                assert torch.allclose(fast[key], ref[key], atol=2e-3), (key, lod)


@pytest.mark.parametrize("fused", [False, True], ids=["rounds", "fused"])
@pytest.mark.parametrize("source", ["tvq", "checkpoint"])
def test_fast_path_matches_render_image_on_test_views(run, scene, source, fused):
    model = open_model(run / ("model.tvq" if source == "tvq" else "checkpoint.pt"))
    if source == "checkpoint" and model.field.grid.kind == "vq":
        assert model.field.grid.learned  # a training field: the renderer takes argmax of its logits once
    _compare(model, scene, FastRenderer(model.field, model.background, fused=fused))


def test_baked_table_interpolates_to_the_sum_over_levels(run):
    """Trilinear interpolation of a LOD's baked table inside a cell of its level equals the field's feature
    sum over the LOD's levels (``ops.gather``) at random points of random cells."""
    from tvq.infer import baked_table
    from tvq.octree import CORNERS, morton_decode

    model = open_model(run / "model.tvq")
    grid = model.field.grid
    renderer = FastRenderer(model.field, model.background)
    gen = torch.Generator().manual_seed(0)
    for lod in range(grid.num_lods):
        level = grid.levels[lod]
        table = baked_table(grid, renderer.table, lod)
        cells = grid.octree.cells[level]
        pick = torch.randint(0, cells.numel(), (500,), generator=gen).to(cells.device)
        frac = torch.rand(500, 3, generator=gen).mul(0.98).add(0.01).to(cells.device)
        points = (morton_decode(cells[pick]).float() + frac) * (2.0 / (1 << level)) - 1
        corners = CORNERS.to(cells.device)
        weights = torch.where(corners[None].bool(), frac[:, None, :], 1 - frac[:, None, :]).prod(dim=2)
        rows = grid.octree.cell_vertices[level][pick].long()
        baked = (weights[:, :, None] * table[rows]).sum(dim=1)
        with torch.no_grad():
            summed = grid(points, lod)
        torch.testing.assert_close(baked, summed, atol=1e-4, rtol=1e-4)


def test_fused_frame_equals_the_rounds(run, scene):
    """One launch per frame composites exactly the samples the rounds composite, to the same image."""
    model = open_model(run / "model.tvq")
    view = scene.split("test")[1]
    rounds = FastRenderer(model.field, model.background, fused=False)
    fused = FastRenderer(model.field, model.background, fused=True)
    blocked = FastRenderer(model.field, model.background, fused=True, block_dim=32)  # the launch shape only
    for lod in range(model.lods):
        a = rounds.render(view.K, view.c2w, view.width, view.height, lod)
        b = fused.render(view.K, view.c2w, view.width, view.height, lod)
        assert torch.equal(blocked.render(view.K, view.c2w, view.width, view.height, lod)["color"], b["color"])
        assert torch.equal(a["samples"], b["samples"]), lod
        assert b["stats"]["rounds"] == 1 and b["stats"]["samples"] == int(b["samples"].sum())
        for key in ("color", "opacity", "depth"):
            torch.testing.assert_close(b[key], a[key], atol=2e-5, rtol=0)


def test_a_prefix_of_the_file_renders_its_lods(run, scene):
    whole = open_model(run / "model.tvq")
    first = open_model(run / "model.tvq", max_bytes=whole.header["lods"][0]["end"])
    assert first.lods == 1
    view = scene.split("test")[0]
    a = FastRenderer(first.field, first.background).render(view.K, view.c2w, view.width, view.height, 0)["color"]
    b = FastRenderer(whole.field, whole.background).render(view.K, view.c2w, view.width, view.height, 0)["color"]
    # the prefix decodes with 8-bit decoder weights, the whole file with their refinement
    torch.testing.assert_close(a, b, atol=2e-2, rtol=0)
    second = open_model(run / "model.tvq", max_bytes=whole.header["lods"][1]["end"])
    c = FastRenderer(second.field, second.background).render(view.K, view.c2w, view.width, view.height, 0)["color"]
    torch.testing.assert_close(c, b)


def test_resumed_marching_emits_the_one_shot_marchers_samples(run):
    model = open_model(run / "model.tvq")
    octree = model.field.octree
    cams = model.cameras
    o, d = pixel_rays(cams["K"], cams["c2ws"][1], width=24, height=20)
    o, d = octree.normalize(o.float()).to(runtime.device()), d.float().to(runtime.device())
    for level in model.field.grid.levels:
        for cap, k in ((1024, 3), (6, 4), (5, 5), (1024, 1)):
            a = raymarch(octree, o, d, level, samples_per_cell=3, max_samples_per_ray=cap)
            b = raymarch_in_rounds(octree, o, d, level, samples_per_cell=3, max_samples_per_ray=cap, round_samples=k)
            assert a.num_samples > 0
            for x, y in ((a.ray_offsets, b.ray_offsets), (a.t, b.t), (a.dt, b.dt), (a.ray_ids, b.ray_ids)):
                assert torch.equal(x, y), (level, cap, k)


def test_early_termination_decodes_fewer_samples_and_round_sizes_do_not_change_the_image(run, scene):
    model = open_model(run / "model.tvq")
    view = scene.split("test")[0]
    lod = model.lods - 1
    base = FastRenderer(model.field, model.background)
    out = base.render(view.K, view.c2w, view.width, view.height, lod)
    o, d = pixel_rays(view.K, view.c2w, width=view.width, height=view.height)
    level = model.field.grid.levels[lod]
    everything = raymarch(model.field.octree, model.field.octree.normalize(o.float()).to(runtime.device()),
                          d.float().to(runtime.device()), level, samples_per_cell=4, max_samples_per_ray=1024)
    assert out["stats"]["samples"] <= everything.num_samples
    assert int(out["samples"].sum()) <= out["stats"]["samples"]  # composited <= decoded
    other = FastRenderer(model.field, model.background, round_samples=1, max_round_samples=2, batch_samples=97,
                         mlp_chunk=50)
    again = other.render(view.K, view.c2w, view.width, view.height, lod)
    torch.testing.assert_close(again["color"], out["color"], atol=1e-5, rtol=0)
    assert torch.equal(again["samples"], out["samples"])


def test_modes_images_and_buffers_reused(run, scene):
    model = open_model(run / "model.tvq")
    renderer = FastRenderer(model.field, model.background)
    view = scene.split("test")[0]
    K = torch.as_tensor(view.K).clone()
    K[0] *= 20 / view.width
    K[1] *= 16 / view.height
    images = {}
    for mode in MODES:
        out = renderer.render(K, view.c2w, 20, 16, 1, mode=mode)
        assert out["image"].shape == (16, 20, 3)
        assert torch.isfinite(out["image"]).all() and out["image"].min() >= 0 and out["image"].max() <= 1
        images[mode] = out["image"]
    for a in MODES:
        for b in MODES:
            if a < b:
                assert not torch.equal(images[a], images[b]), (a, b)
    cells = renderer.render(K, view.c2w, 20, 16, 1, mode="cells")
    colour = renderer.render(K, view.c2w, 20, 16, 1)
    hit = cells["cells"] >= 0
    assert hit.any() and (~hit).any()
    assert (colour["samples"][~hit] == 0).all()  # no cell on the ray: nothing decoded
    assert (colour["samples"][hit] > 0).all()
    assert len(renderer.frames) == 1  # one resolution: its buffers made once
    renderer.render(K, view.c2w, 20, 16, 0)
    assert len(renderer.frames) == 1


def test_drop_in_render_image_and_errors(run, scene):
    model = open_model(run / "model.tvq")
    view = scene.split("test")[0]
    a = fast_render_image(model.field, view.K, view.c2w, 12, 10, 1, model.background, RenderOptions(early_stop=True))
    b = render_image(model.field, view.K, view.c2w, 12, 10, 1, model.background, RenderOptions(early_stop=True))
    torch.testing.assert_close(a["color"], b["color"], atol=1e-4, rtol=0)
    renderer = FastRenderer(model.field, model.background)
    with pytest.raises(TvqError, match="lod"):
        renderer.render(view.K, view.c2w, 8, 8, model.lods)
    with pytest.raises(TvqError, match="mode"):
        renderer.render(view.K, view.c2w, 8, 8, 0, mode="normals")
    with pytest.raises(TvqError, match="size"):
        renderer.render(view.K, view.c2w, 0, 8, 0)


@pytest.mark.cuda
def test_fast_path_matches_render_image_on_the_gpu(scene, tmp_path):
    assert runtime.ensure().arch == "cuda"
    out = train_tiny(scene, tmp_path / "vq4", 4, False)
    for name in ("model.tvq", "checkpoint.pt"):
        model = open_model(out / name)
        assert model.background.is_cuda
        assert FastRenderer(model.field, model.background).fused  # the default
        _compare(model, scene)
        _compare(model, scene, FastRenderer(model.field, model.background, fused=False))
        # float16 MLP (the rounds): the image stays within the same 0.1 dB
        _compare(model, scene, FastRenderer(model.field, model.background, half=True))
    raw = open_model(train_tiny(scene, tmp_path / "raw", 0, False) / "model.tvq")
    _compare(raw, scene)
    _compare(raw, scene, FastRenderer(raw.field, raw.background, half=True))
    exp = open_model(train_tiny(scene, tmp_path / "raw-exp", 0, False, density="exp") / "model.tvq")
    assert exp.field.decoder.density == "exp"
    _compare(exp, scene)
    _compare(exp, scene, FastRenderer(exp.field, exp.background, fused=False))
    test_baked_table_interpolates_to_the_sum_over_levels(tmp_path / "raw")
    view = scene.split("test")[1]
    rounds, fused = (FastRenderer(raw.field, raw.background, fused=f) for f in (False, True))
    blocked = FastRenderer(raw.field, raw.background, fused=True, block_dim=64)
    for lod in range(raw.lods):  # (a GPU may round a ray's last transmittance test the other way)
        a = rounds.render(view.K, view.c2w, view.width, view.height, lod)
        b = fused.render(view.K, view.c2w, view.width, view.height, lod)
        assert torch.equal(blocked.render(view.K, view.c2w, view.width, view.height, lod)["color"], b["color"])
        assert float((a["samples"] != b["samples"]).float().mean()) < 1e-3
        torch.testing.assert_close(b["color"], a["color"], atol=1e-3, rtol=0)


def test_fused_caps_and_cell_sizes_match_the_rounds(run, scene):
    """A per-ray cap that falls inside a cell, and other samples per cell, composite the same samples."""
    model = open_model(run / "model.tvq")
    view = scene.split("test")[0]
    for spc, cap in ((3, 5), (1, 1024), (8, 40)):
        rounds = FastRenderer(model.field, model.background, samples_per_cell=spc, max_samples_per_ray=cap,
                              fused=False)
        fused = FastRenderer(model.field, model.background, samples_per_cell=spc, max_samples_per_ray=cap)
        assert fused.fused
        a = rounds.render(view.K, view.c2w, view.width, view.height)
        b = fused.render(view.K, view.c2w, view.width, view.height)
        assert int(b["samples"].max()) <= cap
        assert torch.equal(a["samples"], b["samples"]), (spc, cap)
        torch.testing.assert_close(b["color"], a["color"], atol=2e-5, rtol=0)
    # more samples per cell than the kernel holds: the rounds by default, a clear error when forced
    assert not FastRenderer(model.field, model.background, samples_per_cell=9).fused
    with pytest.raises(TvqError, match="at most 8 samples per cell"):
        FastRenderer(model.field, model.background, samples_per_cell=9, fused=True)
