"""The decoder: per-ray view directions give what per-sample ones give."""

import pytest
import torch

from tvq.field import Decoder, encode_direction


def _inputs(num_rays=7, per_ray=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    dirs = torch.nn.functional.normalize(torch.randn(num_rays, 3, generator=g, dtype=torch.float64), dim=1)
    ray_ids = torch.arange(num_rays).repeat_interleave(per_ray).to(torch.int32)
    features = torch.randn(ray_ids.numel(), 16, generator=g, dtype=torch.float64)
    return features, dirs, ray_ids


def _concatenated(decoder, features, dirs_per_sample):
    """The decoder as DESIGN.md writes it: MLP([f, PE(d)])."""
    out = decoder.net(torch.cat([features, encode_direction(dirs_per_sample, decoder.num_freqs)], dim=-1))
    return torch.relu(out[:, 0]), torch.sigmoid(out[:, 1:])


def test_per_ray_directions_match_per_sample_directions():
    torch.manual_seed(1)
    decoder = Decoder(16).double()
    with torch.no_grad():
        decoder.net[0].bias.normal_()  # nonzero bias: it must be counted once per sample
    features, dirs, ray_ids = _inputs()
    per_sample = dirs[ray_ids.long()]
    results = []
    for fn in (lambda f: decoder(f, dirs, ray_ids), lambda f: decoder(f, per_sample),
               lambda f: _concatenated(decoder, f, per_sample)):
        f = features.clone().requires_grad_()
        sigma, rgb = fn(f)
        g = torch.Generator().manual_seed(2)
        loss = (sigma * torch.rand(sigma.shape, generator=g, dtype=sigma.dtype)).sum() + \
            (rgb * torch.rand(rgb.shape, generator=g, dtype=rgb.dtype)).sum()
        decoder.zero_grad()
        grads = torch.autograd.grad(loss, [f, *decoder.parameters()])
        results.append((sigma.detach(), rgb.detach(), *grads))
    assert float(results[0][0].max()) > 0  # some density passes the ReLU
    for other in results[1:]:
        for got, want in zip(results[0], other):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("density", ["relu", "exp"])
def test_decoder_gradcheck(density):
    torch.manual_seed(3)
    decoder = Decoder(16, density=density).double()
    features, dirs, ray_ids = _inputs(3, 2, seed=4)
    f = features.requires_grad_()
    assert torch.autograd.gradcheck(lambda x: decoder(x, dirs, ray_ids), (f,), eps=1e-6, atol=1e-8)


def test_truncated_exp_density():
    """exp below the clamps; above them the value saturates at exp(30) and the slope at exp(15), so an
    opaque sample still gets a (bounded) gradient."""
    from tvq.field import EXP_CLAMP, EXP_GRAD_CLAMP, activate_density

    y = torch.tensor([-3.0, 0.0, 7.0, 20.0, 40.0], dtype=torch.float64, requires_grad=True)
    sigma = activate_density(y, "exp")
    sigma.sum().backward()
    torch.testing.assert_close(sigma.detach(), torch.exp(y.detach().clamp(max=EXP_CLAMP)))
    torch.testing.assert_close(y.grad, torch.exp(y.detach().clamp(max=EXP_GRAD_CLAMP)))
    assert torch.isfinite(activate_density(torch.tensor([1e4]), "exp")).all()
    with pytest.raises(ValueError, match="density"):
        Decoder(16, density="softplus")


def test_two_layer_mlp_matches_autograd_in_chunks():
    from tvq.mlp import two_layer_mlp

    torch.manual_seed(5)
    net = torch.nn.Sequential(torch.nn.Linear(43, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).double()
    features, view = torch.randn(37, 16, dtype=torch.float64), torch.randn(37, 27, dtype=torch.float64)
    cotangent = torch.randn(37, 4, dtype=torch.float64)
    results = []
    for fn in (lambda f: two_layer_mlp(f, view, net[0], net[2], chunk=8), lambda f: net(torch.cat([f, view], 1))):
        f = features.clone().requires_grad_()
        out = fn(f)
        grads = torch.autograd.grad((out * cotangent).sum(), [f, *net.parameters()])
        results.append((out.detach(), *grads))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    inputs = [features[:9].clone().requires_grad_(), *(p.detach().clone().requires_grad_() for p in net.parameters())]
    fn = lambda f, w1, b1, w2, b2: two_layer_mlp(  # noqa: E731
        f, view[:9], _Linear(w1, b1), _Linear(w2, b2), chunk=4)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-8)


class _Linear:
    def __init__(self, weight, bias):
        self.weight, self.bias = weight, bias


@pytest.mark.parametrize("density", ["relu", "exp"])
def test_decoder_head_matches_its_slices(density):
    """The fused head against activate_density and sigmoid on slices of y: values, and gradients for random
    cotangents, also when only one of its outputs is used."""
    from tvq.field import activate_density, decoder_head

    gen = torch.Generator().manual_seed(9)
    y = (torch.randn(300, 4, generator=gen, dtype=torch.float64) * 12).requires_grad_()
    gs = torch.randn(300, generator=gen, dtype=torch.float64)
    grgb = torch.randn(300, 3, generator=gen, dtype=torch.float64)
    sigma, rgb = decoder_head(y, density)
    want_sigma, want_rgb = activate_density(y[:, 0], density), torch.sigmoid(y[:, 1:])
    torch.testing.assert_close(sigma, want_sigma)
    torch.testing.assert_close(rgb, want_rgb)
    got = torch.autograd.grad((sigma * gs).sum() + (rgb * grgb).sum(), y)[0]
    want = torch.autograd.grad((want_sigma * gs).sum() + (want_rgb * grgb).sum(), y)[0]
    torch.testing.assert_close(got, want)
    only_rgb = torch.autograd.grad((decoder_head(y, density)[1] * grgb).sum(), y)[0]
    torch.testing.assert_close(only_rgb, torch.autograd.grad((torch.sigmoid(y[:, 1:]) * grgb).sum(), y)[0])
