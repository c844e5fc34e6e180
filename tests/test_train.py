"""Training end to end on a tiny built-in scene (CPU): learning, exact resume, divergence guard."""

import math
import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from tvq import runtime
from tvq.data import load_scene
from tvq.data.synthetic import make_scene
from tvq.errors import TvqError
from tvq.eval import evaluate
from tvq.train import TrainConfig, Trainer, field_from_checkpoint, load_checkpoint

TINY = dict(max_level=5, num_lods=2, batch_rays=1024, samples_per_cell=2, eval_every=0, checkpoint_every=0,
            checkpoint_seconds=0)


@pytest.fixture(scope="module")
def tiny_scene(tmp_path_factory):
    root = tmp_path_factory.mktemp("scene") / "synthetic"
    make_scene(root, size=32, n_train=16, n_val=2, n_test=3, seed=3)
    return load_scene(root)


def _test_psnr(trainer: Trainer, scene) -> float:
    return evaluate(trainer.field, scene.split("test"), trainer.data.background,
                    lods=[trainer.field.num_lods - 1])[0]["psnr"]


@pytest.mark.slow
@pytest.mark.parametrize("bits", [0, 4])
def test_training_raises_psnr(tiny_scene, tmp_path, bits):
    runtime.init()
    trainer = Trainer(tiny_scene, TrainConfig(bits=bits, iters=300, seed=0, **TINY), tmp_path)
    trainer.setup()
    start = _test_psnr(trainer, tiny_scene)
    trainer.fit()
    end = _test_psnr(trainer, tiny_scene)
    assert end > start + 6.0, f"bits={bits}: test PSNR {start:.2f} -> {end:.2f} dB"
    assert (tmp_path / "checkpoint.pt").is_file()


def _state(path):
    ckpt = load_checkpoint(path)
    return ckpt["step"], ckpt["field"], ckpt["octree"]["leaf_codes"]


RESUME_SCRIPT = """
import sys
from tvq import runtime
runtime.init("cpu")
from tvq.data import load_scene
from tvq.train import TrainConfig, Trainer
scene, out = load_scene(sys.argv[1]), sys.argv[2]
# Prune at step 10 too, so the resumed run must restore a rebuilt octree and remapped Adam state; the VQ
# warm start ends at step 24, so the resumed run restores raw features (step 20) and quantises them itself;
# the indices are fixed at step 28, so its second resume restores fixed indices (step 30).
cfg = dict(bits=4, seed=1, vq_warmup=0.6, vq_freeze=0.7, prune_at=(10,), prune_threshold=1e-4, max_level=5, num_lods=2,
           batch_rays=1024, samples_per_cell=2, eval_every=0, checkpoint_every=10, checkpoint_seconds=0, iters=40)
def run(name, resume=False, kill_at=None):
    trainer = Trainer(scene, TrainConfig(**cfg), f"{out}/{name}", log=lambda *a: None)
    trainer.setup(resume=resume)
    def killer(t, stats):
        if t.step == kill_at:
            raise KeyboardInterrupt
    try:
        trainer.fit(progress=killer)
    except KeyboardInterrupt:
        pass
    return trainer
run("straight")
run("resumed", kill_at=25)   # killed between checkpoints: the one of step 20 is left behind
run("resumed", resume=True, kill_at=35)
assert run("resumed", resume=True).step == 40
"""


def test_resume_matches_uninterrupted_run(tiny_scene, tmp_path):
    """Kill a run at steps 25 and 35, resume it each time (from its checkpoints of steps 20 and 30) to 40:
    bit-identical to 40 straight.

    Bitwise reproducibility needs a fixed order of the floating-point atomics, so this runs with one CPU
    thread (a parallel backend may sum gradients in another order from run to run).
    """
    env = {**os.environ, "TI_CPU_MAX_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "TVQ_DEBUG": "0"}
    proc = subprocess.run([sys.executable, "-c", RESUME_SCRIPT, str(tiny_scene.root), str(tmp_path)],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    step_a, field_a, leaves_a = _state(tmp_path / "straight" / "checkpoint.pt")
    step_b, field_b, leaves_b = _state(tmp_path / "resumed" / "checkpoint.pt")
    assert step_a == step_b == 40
    assert load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")["grid_kind"] == "vq"
    assert "grid.indices" in field_b and "grid.logits" not in field_b  # fixed after step 28
    assert torch.equal(leaves_a, leaves_b)
    for name in field_a:
        assert torch.equal(field_a[name], field_b[name]), name


def test_divergence_guard_keeps_last_good_checkpoint(tiny_scene, tmp_path):
    runtime.init()
    trainer = Trainer(tiny_scene, TrainConfig(bits=0, iters=50, seed=0, **{**TINY, "checkpoint_every": 3}), tmp_path)
    trainer.setup()

    def inject_nan(t, stats):
        if t.step == 4:
            with torch.no_grad():
                t.field.decoder.net[0].weight[0, 0] = math.nan

    with pytest.raises(TvqError, match="diverged at step 5"):
        trainer.fit(progress=inject_nan)
    step, field, _ = _state(tmp_path / "checkpoint.pt")
    assert step == 3
    assert all(torch.isfinite(v).all() for v in field.values() if v.is_floating_point())


def test_config_errors_are_one_line(tiny_scene, tmp_path):
    with pytest.raises(TvqError, match="--bits"):
        TrainConfig(bits=-1).validate()
    with pytest.raises(TvqError, match="--hash"):
        TrainConfig(bits=0, hash=True).validate()
    with pytest.raises(TvqError, match="--num-lods"):
        TrainConfig(max_level=3, num_lods=6).validate()
    with pytest.raises(TvqError, match="--iters"):
        TrainConfig(iters=0, minutes=5).validate()
    for minutes in (0, -1):
        with pytest.raises(TvqError, match="--minutes"):
            TrainConfig(minutes=minutes).validate()
    for bits, hash_, warmup in ((0, False, 0.3), (4, True, 0.3), (4, False, 1.0)):
        with pytest.raises(TvqError, match="--vq-warmup"):
            TrainConfig(bits=bits, hash=hash_, vq_warmup=warmup).validate()
    for bits, hash_, freeze, warmup in ((0, False, 0.5, None), (4, True, 0.5, None), (4, False, 1.5, None),
                                        (4, False, -0.1, None), (4, False, 0.2, 0.4), (4, False, 0.4, 0.4)):
        with pytest.raises(TvqError, match="--vq-freeze"):
            TrainConfig(bits=bits, hash=hash_, vq_freeze=freeze, vq_warmup=warmup).validate()
    with pytest.raises(TvqError, match="--density"):
        TrainConfig(density="softplus").validate()
    with pytest.raises(TvqError, match="--adam-beta2"):
        TrainConfig(adam_beta2=1.0).validate()
    with pytest.raises(TvqError, match="--lod-ratio"):
        TrainConfig(lod_ratio=0).validate()
    with pytest.raises(TvqError, match="--samples-per-cell"):
        TrainConfig(samples_per_cell=0).validate()
    with pytest.raises(TvqError, match="--subdivide-at must be"):
        TrainConfig(subdivide_at=-1).validate()
    for gap in (0.0, -1.0):
        with pytest.raises(TvqError, match="vq_logit_gap must be positive"):
            TrainConfig(bits=6, vq_logit_gap=gap).validate()


def test_random_background_targets_composite_on_each_rays_colour(tiny_scene, tmp_path):
    """target = C_fg + (1 - alpha) bg_ray: an opaque pixel keeps its colour, an empty one shows its ray's
    random colour, and the colour the images were composited on is taken out exactly."""
    runtime.init()
    trainer = Trainer(tiny_scene, TrainConfig(bits=0, iters=1, random_background=True, **TINY), tmp_path)
    data = trainer.data
    assert data.alphas is not None
    gen = torch.Generator().manual_seed(0)
    _, _, target, background = data.sample(4096, gen, random_background=True)
    gen.manual_seed(0)
    _, _, plain, same = data.sample(4096, gen)  # the same rays on the scene's own background
    assert torch.equal(same, data.background) and background.shape == (4096, 3)
    flat = torch.randint(0, data.num_pixels, (4096,), generator=torch.Generator().manual_seed(0))
    alpha = data.alphas.view(-1)[flat][:, None]
    torch.testing.assert_close(target, plain - (1 - alpha) * data.background + (1 - alpha) * background)
    empty, opaque = alpha[:, 0] == 0, alpha[:, 0] == 1
    assert empty.any() and opaque.any()
    torch.testing.assert_close(target[empty], background[empty])
    torch.testing.assert_close(target[opaque], plain[opaque])
    assert background.std() > 0.2  # random colours, not one
    trainer.setup()
    trainer.fit()
    assert math.isfinite(trainer.last_loss)


def test_resume_refuses_other_data(tiny_scene, tmp_path):
    runtime.init()
    first = Trainer(tiny_scene, TrainConfig(bits=0, iters=3, seed=0, **TINY), tmp_path)
    first.setup()
    first.fit()
    other = load_scene(tiny_scene.root, downscale=2)
    with pytest.raises(TvqError, match="downscale"):
        Trainer(other, TrainConfig(bits=0, iters=6, seed=0, **TINY), tmp_path).setup(resume=True)


def test_cli_train_bad_inputs(tmp_path):
    missing = subprocess.run([sys.executable, "-m", "tvq.apps.cli", "train", str(tmp_path / "nope"), "--out",
                              str(tmp_path / "out")], capture_output=True, text=True)
    assert missing.returncode == 2
    assert "Traceback" not in missing.stderr
    assert missing.stderr.strip().startswith("error:") and len(missing.stderr.strip().splitlines()) == 1
    bad_bits = subprocess.run([sys.executable, "-m", "tvq.apps.cli", "train", str(tmp_path), "--out",
                               str(tmp_path / "out"), "--bits", "-3"], capture_output=True, text=True)
    assert bad_bits.returncode == 2 and "--bits" in bad_bits.stderr


def test_pruning_keeps_parameters_and_adam_state_of_surviving_vertices(tiny_scene, tmp_path):
    runtime.init()
    trainer = Trainer(tiny_scene, TrainConfig(bits=4, iters=15, seed=2, **TINY), tmp_path)
    trainer.setup()
    trainer.fit()
    old_grid, old_opt = trainer.field.grid, trainer.optimizer
    old_rows = {}  # (level, vertex code) -> (logits row, Adam exp_avg row)
    exp_avg = old_opt.state[old_grid.logits]["exp_avg"]
    for k, level in enumerate(old_grid.levels):
        start = int(old_grid.flat.vertex_start[k])
        for i, code in enumerate(old_grid.octree.vertices[level].tolist()):
            old_rows[level, code] = (old_grid.logits[start + i].detach().clone(), exp_avg[start + i].clone())
    codebooks = old_grid.codebooks.detach().clone()
    from tvq.prune import cell_max_weights

    weights = cell_max_weights(trainer.field, trainer.data, trainer.config)
    trainer.config.prune_threshold = float(weights.median()) + 1e-6  # drops about half of the finest cells
    trainer.prune()
    new_grid = trainer.field.grid
    assert new_grid.flat.num_vertices < old_grid.flat.num_vertices
    # the run's history records the vertices per level before and after (metrics.json carries it)
    event = trainer.pruning[-1]
    assert event["vertices_before"] == {str(l): old_grid.octree.num_vertices(l) for l in old_grid.levels}
    assert event["vertices_after"] == {str(l): new_grid.octree.num_vertices(l) for l in new_grid.levels}
    trainer.save_checkpoint()  # resumed runs keep the record; a malformed one is refused in one line
    resumed = Trainer(tiny_scene, TrainConfig(bits=4, iters=15, seed=2, **TINY), tmp_path)
    resumed.setup(resume=True)
    assert resumed.pruning == trainer.pruning
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    ckpt["pruning"] = "everything"
    torch.save(ckpt, tmp_path / "bad.pt")
    with pytest.raises(TvqError, match="'pruning'"):
        load_checkpoint(tmp_path / "bad.pt")
    new_avg = trainer.optimizer.state[new_grid.logits]["exp_avg"]
    for k, level in enumerate(new_grid.levels):
        start = int(new_grid.flat.vertex_start[k])
        for i, code in enumerate(new_grid.octree.vertices[level].tolist()):
            logits_row, avg_row = old_rows[level, code]
            assert torch.equal(new_grid.logits[start + i].detach(), logits_row)
            assert torch.equal(new_avg[start + i], avg_row)
    assert torch.equal(new_grid.codebooks.detach(), codebooks)


def test_vq_warm_start_trains_raw_then_quantises(tiny_scene, tmp_path):
    runtime.init()
    logs = []
    config = TrainConfig(bits=3, iters=20, vq_warmup=0.5, seed=0, **{**TINY, "eval_every": 5})
    trainer = Trainer(tiny_scene, config, tmp_path, log=logs.append)
    trainer.setup()
    assert trainer.field.grid.kind == "raw" and trainer.warming_up
    trainer.fit(evaluate=lambda t: {"psnr": 0.0})
    assert trainer.field.grid.kind == "vq" and not trainer.warming_up
    assert [h["grid"] for h in trainer.history] == ["raw", "vq", "vq", "vq"]  # quantised at step 10
    assert all(h["samples_per_ray"] > 0 for h in trainer.history)  # each check's mean over its own steps
    assert any("quantised" in line for line in logs)
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt["grid_kind"] == "vq" and "logits" in "".join(ckpt["field"])
    # the decoder's Adam state survived the switch (its step count runs on from the warm start)
    decoder_param = next(trainer.field.decoder.parameters())
    assert int(trainer.optimizer.state[decoder_param]["step"]) == 20


def test_fixed_indices_keep_the_argmax_and_train_the_codebooks_at_a_decaying_rate(tiny_scene, tmp_path):
    runtime.init()
    logs, seen = [], {}
    config = TrainConfig(bits=3, iters=20, vq_warmup=0.2, vq_freeze=0.5, seed=0, **TINY)
    trainer = Trainer(tiny_scene, config, tmp_path, log=logs.append)
    trainer.setup()

    def watch(t, stats):
        grid = t.field.grid
        if grid.kind == "vq":
            seen[t.step] = (grid.learned, grid.hard_indices().clone(), grid.codebooks.detach().clone(),
                            t.optimizer.param_groups[0]["lr"])

    trainer.fit(progress=watch)
    assert [step for step in sorted(seen) if seen[step][0]] == list(range(4, 10))  # learned from 4, fixed at 10
    assert any("indices fixed" in line for line in logs)
    assert not torch.equal(seen[4][1], seen[9][1])  # the learned indices moved
    for step in range(11, 21):  # fixed at the argmax they had after step 10; the codebooks train on
        assert torch.equal(seen[step][1], seen[10][1])
        assert not torch.equal(seen[step][2], seen[step - 1][2])
    grid = trainer.field.grid
    assert not grid.learned and not hasattr(grid, "logits")
    # the rate is the start's until the indices are fixed, then decays to lr_decay's default 0.1 at the end
    start = config.lr * config.grid_lr_scale
    assert seen[9][3] == pytest.approx(start)
    assert seen[20][3] == pytest.approx(start * 0.1 ** (9 / 10))  # set before the 20th step, at 19/20
    # the codebooks' Adam moments ran on from the learned phase (its step count did not restart)
    assert int(trainer.optimizer.state[grid.codebooks]["step"]) == 16
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert "grid.indices" in ckpt["field"] and "grid.logits" not in ckpt["field"]
    reloaded = field_from_checkpoint(ckpt, torch.device("cpu"))
    assert torch.equal(reloaded.grid.hard_indices(), seen[20][1])
    bad = {**ckpt, "field": {**ckpt["field"], "grid.indices": ckpt["field"]["grid.indices"] + (1 << config.bits)}}
    with pytest.raises(TvqError, match="grid.indices"):
        field_from_checkpoint(bad, torch.device("cpu"))
    # fixed indices stay fixed on resume: the run goes on at its decaying rate, a command that would learn them
    # again (or fix them elsewhere, or subdivide their octree) is refused
    for changed, match in (({"vq_freeze": 1.0}, "--vq-freeze"), ({"vq_freeze": 0.8}, "--vq-freeze"),
                           ({"subdivide_at": 25}, "subdivide")):
        with pytest.raises(TvqError, match=match):
            Trainer(tiny_scene, replace(config, iters=30, **changed), tmp_path).setup(resume=True)
    resumed = Trainer(tiny_scene, replace(config, iters=30), tmp_path, log=logs.append)
    resumed.setup(resume=True)
    resumed.fit()
    assert resumed.step == 30 and torch.equal(resumed.field.grid.hard_indices(), seen[20][1])


def test_indices_quantised_after_the_freeze_point_learn_to_the_end(tiny_scene, tmp_path):
    """A short budget on a visual hull: k-means after the last pruning, which comes after ``vq_freeze``."""
    runtime.init()
    logs, rates = [], {}
    config = TrainConfig(bits=3, iters=20, seed=0, octree_from="masks", prune_at=(15,), prune_threshold=1e-4,
                         subdivide_at=0, vq_freeze=0.6, **TINY)
    trainer = Trainer(tiny_scene, config, tmp_path, log=logs.append)
    trainer.setup()
    trainer.fit(progress=lambda t, stats: rates.setdefault(t.step, t.optimizer.param_groups[0]["lr"]))
    assert any("indices learn to the end" in line for line in logs)
    assert not any("indices fixed" in line for line in logs)
    assert trainer.field.grid.learned and trainer.config.vq_freeze == 1.0
    # the full rate throughout: no decay before the indices are fixed, and none once they learn to the end
    assert len(rates) == 20 and list(rates.values()) == pytest.approx([config.lr * config.grid_lr_scale] * 20)
    assert load_checkpoint(tmp_path / "checkpoint.pt")["config"]["vq_freeze"] == 1.0  # a resume keeps learning


@pytest.mark.parametrize("gap", [0.5, 4.0])
def test_quantisation_starts_the_logits_at_the_configured_gap(tiny_scene, tmp_path, gap):
    runtime.init()
    trainer = Trainer(tiny_scene, TrainConfig(bits=3, iters=4, vq_warmup=0.5, vq_logit_gap=gap, seed=0, **TINY),
                      tmp_path)
    trainer.setup()
    trainer.fit()  # quantised after step 2, trained 2 more steps: the gaps move a little, not by 2x
    grid = trainer.field.grid
    top2 = grid.logits.detach().topk(2, dim=1).values
    finest = slice(int(grid.flat.vertex_start[-2]), int(grid.flat.vertex_start[-1]))
    median = float((top2[finest, 0] - top2[finest, 1]).median())
    assert gap / 1.5 < median < gap * 1.5


def test_default_warm_start_lasts_until_the_last_pruning(tiny_scene, tmp_path):
    runtime.init()
    logs = []
    config = TrainConfig(bits=3, iters=12, seed=0, prune_at=(6, 9), prune_threshold=1e-4,
                         **{**TINY, "eval_every": 3})
    assert config.vq_warmup is None
    trainer = Trainer(tiny_scene, config, tmp_path, log=logs.append)
    trainer.setup()
    assert trainer.warming_up
    trainer.fit(evaluate=lambda t: {"psnr": 0.0})
    assert [h["grid"] for h in trainer.history] == ["raw", "raw", "vq", "vq"]
    pruned = next(i for i, line in enumerate(logs) if line.startswith("pruned at step 9"))
    quantised = next(i for i, line in enumerate(logs) if "quantised" in line)
    assert quantised == pruned + 1  # the logits are made for the pruned octree's vertices only
    # a depth octree is never pruned: VQ from the start
    unpruned = Trainer(tiny_scene, TrainConfig(bits=3, iters=1, seed=0, **TINY), tmp_path / "depth")
    unpruned.setup()
    assert unpruned.config.prune_at == () and unpruned.field.grid.kind == "vq"


@pytest.mark.parametrize("bits", [0, 3])
def test_subdivision_adds_the_finest_level_and_keeps_the_coarser_ones(tiny_scene, tmp_path, bits):
    """--subdivide-at: built one level coarser, then every finest cell split into 8 at that step; the coarser
    LODs render exactly as before, the new one nearly so, and Adam's moments move with their rows."""
    runtime.init()
    config = TrainConfig(bits=bits, iters=8, seed=1, subdivide_at=9, vq_warmup=0, **{**TINY, "num_lods": 3})
    trainer = Trainer(tiny_scene, config, tmp_path)
    trainer.setup()
    assert trainer.field.octree.max_level == 4 and trainer.field.grid.levels == (3, 4)  # first level fixed
    trainer.fit()  # stops before the subdivision: this test makes it itself
    grid_before, opt_before = trainer.field.grid, trainer.optimizer
    table = "features" if bits == 0 else "logits"
    moment_before = opt_before.state[getattr(grid_before, table)]["exp_avg"].clone()
    leaves = trainer.field.octree.cells[4]
    views = tiny_scene.split("test")[:1]
    psnr = lambda lod: evaluate(trainer.field, views, trainer.data.background, lods=[lod])[0]["psnr"]  # noqa: E731
    before = [psnr(0), psnr(1)]
    trainer.subdivide()
    grid = trainer.field.grid
    assert trainer.field.octree.max_level == 5 and grid.levels == (3, 4, 5) and trainer.field.num_lods == 3
    assert torch.equal(trainer.field.octree.cells[5] >> 3, torch.repeat_interleave(leaves, 8))  # all 8 children
    assert trainer.pruning[-1]["subdivided"] and "5" in trainer.pruning[-1]["vertices_after"]
    assert [psnr(0), psnr(1)] == pytest.approx(before, abs=1e-6)  # the coarser LODs: the same field
    assert abs(psnr(2) - before[1]) < 0.5  # the new level starts near zero
    held = int(grid.flat.vertex_start[2])  # the old levels' rows come first, unchanged, with their moments
    moment = trainer.optimizer.state[getattr(grid, table)]["exp_avg"]
    assert torch.equal(getattr(grid, table)[:held].detach(), getattr(grid_before, table).detach())
    assert torch.equal(moment[:held], moment_before) and not moment[held:].any()
    if bits:
        codes = 1 << bits
        assert torch.equal(grid.codebooks[:2 * codes].detach(), grid_before.codebooks.detach())
    trainer.config.iters = 12
    trainer.fit()  # trains on past step 9 (subdivided already: nothing happens), then resumes from its checkpoint
    resumed = Trainer(tiny_scene, TrainConfig(bits=bits, iters=12, seed=1, subdivide_at=9, vq_warmup=0,
                                              **{**TINY, "num_lods": 3}), tmp_path)
    resumed.setup(resume=True)
    assert resumed.field.grid.levels == (3, 4, 5) and resumed.step == 12
    assert torch.equal(getattr(resumed.field.grid, table).detach(), getattr(trainer.field.grid, table).detach())


@pytest.mark.parametrize("source, given, iters, want", [
    # a visual hull: the shell (pruned at level max - 1, subdivided at 2000, trimmed at 3000), 2 samples, ratio 4
    ("masks", {}, 20000, dict(samples_per_cell=2, lod_ratio=4.0, subdivide_at=2000, prune_at=(500, 2000, 3000))),
    # ... unless the step cap leaves the new level too little time: built at max_level, the two prunings
    ("masks", {}, 5999, dict(samples_per_cell=2, lod_ratio=4.0, subdivide_at=0, prune_at=(500, 2000))),
    ("masks", {"subdivide_at": 4000}, 100, dict(subdivide_at=4000, prune_at=(500, 2000, 4000, 5000))),
    ("masks", {"subdivide_at": 0, "samples_per_cell": 3, "lod_ratio": 2.0, "prune_at": (7,)}, 20000,
     dict(samples_per_cell=3, lod_ratio=2.0, subdivide_at=0, prune_at=(7,))),
    # a depth octree: the paper's sampling, never pruned or subdivided
    ("depth", {}, 20000, dict(samples_per_cell=4, lod_ratio=2.0, subdivide_at=0, prune_at=())),
    ("depth", {"subdivide_at": 10}, 20000, dict(subdivide_at=10, prune_at=())),
    # fixed indices: after 0.6 for VQ on a visual hull, unless raw features train past it; never elsewhere
    ("masks", {"bits": 6}, 20000, dict(vq_freeze=0.6)),
    ("masks", {"bits": 6, "vq_warmup": 0.7}, 20000, dict(vq_freeze=1.0)),
    ("masks", {"bits": 6, "vq_warmup": 0.7, "vq_freeze": 0.8}, 20000, dict(vq_freeze=0.8)),
    ("masks", {}, 20000, dict(vq_freeze=1.0)),
    ("masks", {"bits": 12, "hash": True}, 20000, dict(vq_freeze=1.0)),
    ("depth", {"bits": 6}, 20000, dict(vq_freeze=1.0)),
])
def test_options_left_unset_take_their_octree_sources_defaults(source, given, iters, want):
    config = TrainConfig(iters=iters, **given)
    config.validate()
    assert config.build_level == config.max_level - bool(config.subdivide_at)
    config.fill_source_defaults(source)
    config.validate()
    assert {key: getattr(config, key) for key in want} == want
    if "subdivide_at" in want:
        assert config.build_level == config.max_level - (1 if want["subdivide_at"] else 0)


def test_a_visual_hull_run_starts_one_level_coarser_by_default(tiny_scene, tmp_path):
    """An octree carved from the masks: built at max_level - 1 by default, to subdivide at step 2000."""
    runtime.init()
    config = TrainConfig(iters=6000, octree_from="masks", max_level=5, num_lods=2, eval_every=0)
    trainer = Trainer(tiny_scene, config, tmp_path / "run")
    trainer.setup()
    c = trainer.config
    assert (c.subdivide_at, c.prune_at, c.samples_per_cell, c.lod_ratio) == (2000, (500, 2000, 3000), 2, 4.0)
    assert trainer.field.octree.max_level == 4 and trainer.field.num_lods == 1


def test_subdivide_at_needs_a_coarser_lod(tvq, tmp_path):
    with pytest.raises(TvqError, match="--subdivide-at needs"):
        TrainConfig(subdivide_at=10, num_lods=1).validate()
    proc = tvq("train", tmp_path, "--out", tmp_path / "run", "--subdivide-at", 10, "--num-lods", 1)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "--subdivide-at" in proc.stderr, \
        proc.stderr


def test_prefetched_batch_is_the_one_a_step_would_draw(tiny_scene, tmp_path):
    """A step draws and counts the next step's rays ahead: the same draws, rays and sample offsets as that
    step would make afresh; after a pruning the batch no longer matches the field (and is drawn again).
    (Bitwise equality of whole runs across a fresh draw: the resume test, whose resumed run starts without
    a prefetched batch.)"""
    runtime.init()
    config = TrainConfig(bits=0, iters=4, seed=4, prune_threshold=1e-4, **TINY)
    trainer = Trainer(tiny_scene, config, tmp_path, log=lambda *a: None)
    trainer.setup()
    for _ in range(2):
        trainer.train_step()
        trainer.step += 1
    ahead = trainer._next
    fresh = trainer._batch(trainer.step)
    assert ahead.step == fresh.step == trainer.step and ahead.field() is trainer.field
    assert (ahead.lod, ahead.seed) == (fresh.lod, fresh.seed)
    assert torch.equal(ahead.target, fresh.target)
    assert torch.equal(ahead.counts.ray_offsets, fresh.counts.ray_offsets)
    assert ahead.counts.num_samples == fresh.counts.num_samples > 0
    trainer.prune()
    assert trainer._next.field() is not trainer.field  # stale: train_step draws this step's batch again
    assert trainer.train_step()["samples"] > 0
