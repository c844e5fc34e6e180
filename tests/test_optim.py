"""LazyRowAdam: Adam on the rows a step touched, nothing on the others; the options added after the
checkpoint format."""

import pytest
import torch

from tvq.errors import TvqError
from tvq.optim import LazyRowAdam


def _pair(seed=0):
    gen = torch.Generator().manual_seed(seed)
    start = torch.randn(6, 3, generator=gen)
    a = torch.nn.Parameter(start.clone())
    b = torch.nn.Parameter(start.clone())
    return a, b, gen


def test_all_rows_touched_is_adam():
    a, b, gen = _pair()
    lazy = LazyRowAdam([{"params": [a], "lr": 0.1, "lazy": True}], eps=1e-15)
    plain = torch.optim.Adam([b], lr=0.1, eps=1e-15)
    for _ in range(5):
        g = torch.randn(6, 3, generator=gen)
        a.grad, b.grad = g.clone(), g.clone()
        lazy.step()
        plain.step()
    torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-4, atol=1e-5)


def test_untouched_rows_keep_their_values_and_moments():
    a, b, gen = _pair(1)
    lazy = LazyRowAdam([{"params": [a], "lr": 0.1, "lazy": True}], eps=1e-15)
    plain = torch.optim.Adam([b], lr=0.1, eps=1e-15)
    g = torch.randn(6, 3, generator=gen)
    a.grad, b.grad = g.clone(), g.clone()
    lazy.step()
    plain.step()
    before = a.detach().clone()
    moments = [lazy.state[a][k].clone() for k in ("exp_avg", "exp_avg_sq")]
    g = torch.randn(6, 3, generator=gen)
    g[[1, 4]] = 0  # rows 1 and 4: no sample this step
    a.grad, b.grad = g.clone(), g.clone()
    lazy.step()
    plain.step()
    assert torch.equal(a.detach()[[1, 4]], before[[1, 4]])
    for k, m in zip(("exp_avg", "exp_avg_sq"), moments):
        assert torch.equal(lazy.state[a][k][[1, 4]], m[[1, 4]])
    assert not torch.equal(b.detach()[[1, 4]], before[[1, 4]])  # plain Adam moves them on momentum
    touched = [0, 2, 3, 5]
    torch.testing.assert_close(a.detach()[touched], b.detach()[touched], rtol=1e-4, atol=1e-5)


def test_plain_groups_stay_plain():
    a, b, gen = _pair(2)
    lazy = LazyRowAdam([{"params": [a], "lr": 0.1}], eps=1e-15)  # no "lazy": a plain group
    plain = torch.optim.Adam([b], lr=0.1, eps=1e-15)
    for _ in range(2):
        g = torch.randn(6, 3, generator=gen)
        g[0] = 0
        a.grad, b.grad = g.clone(), g.clone()
        lazy.step()
        plain.step()
    torch.testing.assert_close(a.detach(), b.detach())


def test_a_training_run_with_lazy_rows_trains_and_resumes(tmp_path):
    from tvq.data import load_scene
    from tvq.data.synthetic import make_scene
    from tvq.train import TrainConfig, Trainer

    make_scene(tmp_path / "scene", size=24, n_train=6, n_val=0, n_test=2, seed=1)
    scene = load_scene(tmp_path / "scene")
    config = dict(bits=4, max_level=4, num_lods=2, batch_rays=256, eval_every=0, vq_warmup=0, lazy_rows=True)
    trainer = Trainer(scene, TrainConfig(iters=20, **config), tmp_path / "run")
    trainer.setup()
    assert isinstance(trainer.optimizer, LazyRowAdam) and trainer.optimizer.param_groups[0]["lazy"]
    trainer.fit()
    first = trainer.last_loss
    resumed = Trainer(scene, TrainConfig(iters=40, **config), tmp_path / "run")
    resumed.setup(resume=True)
    assert resumed.step == 20 and resumed.optimizer.param_groups[0]["lazy"]
    resumed.fit()
    assert resumed.last_loss < first


def test_a_checkpoint_from_before_the_newer_options_loads_with_their_defaults(tmp_path):
    from tvq.checkpoint import ADDED_LATER
    from tvq.data import load_scene
    from tvq.data.synthetic import make_scene
    from tvq.train import TrainConfig, Trainer, field_from_checkpoint, load_checkpoint

    make_scene(tmp_path / "scene", size=24, n_train=6, n_val=0, n_test=2, seed=1)
    trainer = Trainer(load_scene(tmp_path / "scene"), TrainConfig(iters=3, max_level=4, num_lods=2, batch_rays=256,
                                                                  eval_every=0, decoder_hidden=32), tmp_path / "run")
    trainer.setup()
    trainer.fit()
    path = tmp_path / "run" / "checkpoint.pt"
    assert field_from_checkpoint(load_checkpoint(path), torch.device("cpu")).decoder.net[0].out_features == 32
    ckpt = torch.load(path, weights_only=True)
    for name in ADDED_LATER:
        del ckpt["config"][name]
    torch.save(ckpt, tmp_path / "old.pt")
    old = TrainConfig(**load_checkpoint(tmp_path / "old.pt")["config"])
    assert old.decoder_hidden == 128 and old.density == "relu" and not old.lazy_rows  # what those runs trained with
    assert all(getattr(old, name) == value for name, value in ADDED_LATER.items())
    del ckpt["config"]["max_level"]  # an option the format always had is still required
    torch.save(ckpt, tmp_path / "broken.pt")
    with pytest.raises(TvqError, match="config.max_level' is missing"):
        load_checkpoint(tmp_path / "broken.pt")
