"""VQRF's building blocks: the cumulative-importance thresholds and the importance-weighted codebook."""

import numpy as np
import pytest
import torch

from tvq.compress.vqrf import importance_codebook, quantile_threshold


def numpy_threshold(importance: np.ndarray, beta: float) -> float:
    """eq. 5-6 written out: the largest theta among the importances with F(theta) <= beta."""
    best = 0.0
    total = importance.sum()
    for theta in np.unique(np.concatenate([importance, [np.inf]])):
        if importance[importance < theta].sum() / total <= beta:
            best = theta
    return best


@pytest.mark.parametrize("beta", [0.0, 0.001, 0.2, 0.6, 0.999, 1.0])
def test_quantile_threshold_matches_numpy(beta):
    rng = np.random.default_rng(0)
    importance = np.concatenate([rng.exponential(1.0, 500) ** 3, np.zeros(50), np.full(20, 0.5)])
    theta = quantile_threshold(torch.from_numpy(importance), beta)
    assert theta == pytest.approx(numpy_threshold(importance, beta))
    below = importance[importance < theta].sum() / importance.sum()
    assert below <= beta + 1e-12
    if 0.2 <= beta < 1 and (importance > theta).any():  # and not less than it must: the next one exceeds beta
        nxt = importance[importance > theta].min()
        assert importance[importance < nxt].sum() / importance.sum() > beta


def test_quantile_threshold_long_tail_prunes_many_and_keeps_few():
    """A long tail like VQRF's Fig. 4: most vertices hold little, the top few hold most."""
    rng = np.random.default_rng(1)
    importance = torch.from_numpy(rng.pareto(0.7, 100000))
    prune = quantile_threshold(importance, 0.001)
    keep = quantile_threshold(importance, 0.6)
    pruned = float((importance < prune).double().mean())
    kept = float((importance > keep).double().mean())
    assert pruned > 0.2 and kept < 0.05 and prune < keep


def test_importance_codebook_recovers_weighted_clusters_with_no_dead_codes():
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(8, 4, generator=gen) * 10
    labels = torch.randint(0, 8, (20000,), generator=gen)
    x = centres[labels] + 0.1 * torch.randn(20000, 4, generator=gen)
    importance = torch.rand(20000, generator=gen) + 0.1
    codes, assign = importance_codebook(x, importance, k=8, steps=300, batch=2000, seed=0)
    used = torch.bincount(assign, minlength=8)
    assert (used > 0).all()
    found = torch.cdist(centres, codes).min(dim=1).values
    assert (found < 0.5).all(), found
    # every vector goes to the code of its own cluster
    nearest_code = torch.cdist(centres, codes).argmin(dim=1)
    assert torch.equal(assign, nearest_code[labels])


def test_code_expiry_revives_codes_that_no_vector_picks():
    """All codes start on one far point: without expiry the duplicates never receive a vector; with it they
    are re-seeded from important vectors until every cluster has its code."""
    gen = torch.Generator().manual_seed(1)
    centres = torch.randn(8, 3, generator=gen) * 10
    labels = torch.randint(0, 8, (8000,), generator=gen)
    x = centres[labels] + 0.05 * torch.randn(8000, 3, generator=gen)
    importance = torch.rand(8000, generator=gen) + 0.5
    init = torch.full((8, 3), 100.0)
    _, stuck = importance_codebook(x, importance, k=8, steps=200, batch=1000, expire=0, init=init)
    assert int((torch.bincount(stuck, minlength=8) > 0).sum()) == 1
    codes, assign = importance_codebook(x, importance, k=8, steps=400, batch=1000, expire=10, init=init)
    assert (torch.bincount(assign, minlength=8) > 0).all()
    assert (torch.cdist(centres, codes).min(dim=1).values < 0.5).all()


def test_importance_codebook_follows_the_importance():
    """Two clusters, one code: the code goes to the important cluster's side."""
    x = torch.cat([torch.zeros(1000, 2), torch.ones(1000, 2) * 4])
    importance = torch.cat([torch.full((1000,), 9.0), torch.full((1000,), 1.0)])
    codes, _ = importance_codebook(x, importance, k=1, steps=200, batch=500, expire=0, seed=0)
    # the importance-weighted mean: (9 * 0 + 1 * 4) / 10 per axis
    torch.testing.assert_close(codes[0], torch.full((2,), 0.4), atol=0.08, rtol=0)


def test_importance_codebook_refuses_bad_input():
    with pytest.raises(ValueError, match="non-empty"):
        importance_codebook(torch.zeros(0, 3), torch.zeros(0), k=2)
    with pytest.raises(ValueError, match="codebook options"):
        importance_codebook(torch.zeros(5, 3), torch.ones(5), k=0)
    with pytest.raises(ValueError, match="quantile"):
        quantile_threshold(torch.ones(3), 1.5)


def test_vertex_classes_and_surviving_cells():
    from tvq.compress.vqrf import surviving_cells, vertex_classes

    importance = torch.tensor([0.0, 0.001, 0.002, 1.0, 2.0, 3.0, 50.0, 100.0])
    pruned, kept = vertex_classes(importance, prune=0.001, keep=0.6)
    # total 156.003: the three smallest hold 0.003 / 156 < 0.1%; the top two hold 150 / 156 > 40%
    assert pruned.tolist() == [True, True, True, False, False, False, False, False]
    assert kept.tolist() == [False, False, False, False, False, False, False, True]
    cells = torch.tensor([[0, 1, 2, 0, 1, 2, 0, 1], [0, 1, 2, 3, 0, 1, 2, 0]], dtype=torch.int32)
    assert surviving_cells(cells, pruned).tolist() == [False, True]
    with pytest.raises(ValueError, match="prune <= keep"):
        vertex_classes(importance, prune=0.7, keep=0.6)


def test_vertex_importance_equals_a_brute_force_sum_over_samples(tmp_path):
    """Every sample's T alpha, spread by the trilinear twin (``reference.importance``) over one full pass of
    the training renderer, sums to what ``vertex_importance`` collects in chunks."""
    from tvq import reference
    from tvq.compress.vqrf import vertex_importance
    from tvq.data import load_scene
    from tvq.data.rays import pixel_rays
    from tvq.data.synthetic import make_scene
    from tvq.ops import composite
    from tvq.sampling import raymarch
    from tvq.train import TrainConfig, Trainer

    make_scene(tmp_path / "scene", size=32, n_train=10, n_val=0, n_test=1, seed=2)
    scene = load_scene(tmp_path / "scene")
    trainer = Trainer(scene, TrainConfig(iters=120, max_level=5, num_lods=3, batch_rays=1024, samples_per_cell=2, eval_every=0),
                      tmp_path / "run")
    trainer.setup()
    trainer.fit()
    field = trainer.field.eval()
    view = scene.split("train")[0]
    o, d = pixel_rays(torch.as_tensor(view.K), torch.as_tensor(view.c2w), width=32, height=32)
    o, d = o.float(), d.float()
    background = torch.ones(3)
    got = vertex_importance(field, o, d, background, chunk=37)  # chunks that split the image unevenly
    with torch.no_grad():
        on = field.octree.normalize(o)
        packed = raymarch(field.octree, on, d, field.grid.levels[-1], samples_per_cell=4, max_samples_per_ray=1 << 16)
        points = packed.positions(on, d)
        sigma, rgb = field(points, d, field.num_lods - 1, packed.ray_ids)
        w = composite(sigma, rgb, packed.t, packed.dt, packed.ray_offsets, background, return_weights=True).weights
        want = reference.importance(points.double(), field.grid.flat, w.double())
    assert float(want.sum()) > 0.1  # the field renders something
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-6)
    # each level holds the same total: the trilinear weights of a sample sum to 1 at every level
    starts = field.grid.flat.vertex_start.tolist()
    totals = [float(got[a:b].sum()) for a, b in zip(starts, starts[1:])]
    assert totals[0] == pytest.approx(totals[1], rel=1e-4) == pytest.approx(float(w.sum()), rel=1e-4)


def test_uint8_round_trip_error_is_at_most_half_a_step():
    from tvq.compress.vqrf import dequantize_uint8, quantize_uint8

    gen = torch.Generator().manual_seed(4)
    x = torch.randn(5000, 6, generator=gen) * torch.tensor([0.01, 1.0, 30.0, 150.0, 1.0, 1.0])
    x[:, 4] = 2.5  # a constant channel
    x[:, 5] = torch.linspace(-3, 7, 5000)
    q, scale, offset = quantize_uint8(x)
    assert q.dtype == torch.uint8 and tuple(scale.shape) == (6,)
    error = (dequantize_uint8(q, scale, offset) - x).abs()
    # half a step, plus the fp16 rounding of the offset the stored scale already accounts for
    assert (error <= scale / 2 * 1.01 + (offset.abs() * 2 ** -11)).all(), (error.max(0).values, scale)
    assert error[:, 4].max() <= 2.5 * 2 ** -11  # the constant: exact up to its fp16 offset
    assert int(q[:, 5].min()) == 0 and int(q[:, 5].max()) in (254, 255)  # the range is used
    empty = quantize_uint8(torch.zeros(0, 3))
    assert empty[0].shape == (0, 3)


def test_fine_tuning_lowers_the_loss_with_the_assignments_unchanged(tmp_path):
    from tvq.compress.vqrf import QuantizedGrid, importance_codebook
    from tvq.data import load_scene
    from tvq.data.synthetic import make_scene
    from tvq.field import RadianceField
    from tvq.render import RenderOptions, render_rays
    from tvq.train import TrainConfig, Trainer

    make_scene(tmp_path / "scene", size=32, n_train=10, n_val=0, n_test=1, seed=2)
    scene = load_scene(tmp_path / "scene")
    trainer = Trainer(scene, TrainConfig(iters=120, max_level=5, num_lods=3, batch_rays=1024, samples_per_cell=2,
                                         eval_every=0), tmp_path / "run")
    trainer.setup()
    trainer.fit()
    raw = trainer.field.grid
    features = raw.features.detach()
    kept_rows = features.norm(dim=1).topk(50).indices  # (any keep set will do here)
    is_kept = torch.zeros(features.shape[0], dtype=torch.bool)
    is_kept[kept_rows] = True
    codebook, assign = importance_codebook(features[~is_kept], torch.ones(int((~is_kept).sum())), k=16, steps=50,
                                           batch=1000)
    grid = QuantizedGrid(raw, codebook, assign, kept_rows, features[kept_rows])
    table = grid.table()
    assert torch.equal(table[kept_rows], features[kept_rows])
    assert torch.equal(table[~is_kept], codebook[assign])
    # a code's gradient is the sum of its vertices' gradients; a kept row's is its own
    cotangent = torch.randn(table.shape, generator=torch.Generator().manual_seed(1))
    (grid.table() * cotangent).sum().backward()
    want = torch.zeros_like(codebook).index_add_(0, assign, cotangent[grid.vq_rows])
    torch.testing.assert_close(grid.codebook.grad, want)
    torch.testing.assert_close(grid.kept.grad, cotangent[kept_rows])
    grid.zero_grad()
    field = RadianceField(grid, trainer.field.decoder)
    assign_before = grid.assign.clone()
    optimizer = torch.optim.Adam([{"params": grid.grid_parameters(), "lr": 0.05},
                                  {"params": field.decoder.parameters(), "lr": 1e-3}])
    gen = torch.Generator().manual_seed(0)
    origins, dirs, target, _ = trainer.data.sample(2048, gen)  # one fixed batch: the loss must go down on it
    options = RenderOptions(samples_per_cell=2)
    losses = []
    for step in range(30):
        out = render_rays(field, origins, dirs, grid.num_lods - 1, trainer.data.background, options)
        loss = torch.mean((out["color"] - target) ** 2)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.8 * losses[0], losses
    assert torch.equal(grid.assign, assign_before)
