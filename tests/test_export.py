"""A decoded .tvq renders what its checkpoint renders; the post-hoc baselines reconstruct what they should."""

import pytest
import torch

from tvq import runtime
from tvq.data import load_scene
from tvq.data.synthetic import make_scene
from tvq.eval import evaluate
from tvq.export import export_checkpoint, open_model
from tvq.train import TrainConfig, Trainer


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    root = tmp_path_factory.mktemp("export") / "scene"
    make_scene(root, size=32, n_train=10, n_val=0, n_test=3, seed=2)
    return load_scene(root)


@pytest.fixture(scope="module", params=[(0, False), (4, False), (3, True)], ids=["raw", "vq4", "hash3"])
def run(request, scene, tmp_path_factory):
    bits, hashed = request.param
    runtime.init("cpu")
    out = tmp_path_factory.mktemp(request.node.callspec.id if hasattr(request.node, "callspec") else "run")
    trainer = Trainer(scene, TrainConfig(bits=bits, hash=hashed, iters=120, max_level=5, num_lods=3, batch_rays=1024,
                                         samples_per_cell=2, eval_every=0, vq_warmup=0 if bits and not hashed else None),
                      out)
    trainer.setup()
    trainer.fit()
    return out


def _psnr(model, scene):
    return [row["psnr"] for row in evaluate(model.field, scene.split("test"), model.background)]


def test_decoded_file_renders_what_the_checkpoint_renders(run, scene):
    export_checkpoint(run / "checkpoint.pt", run / "model.tvq")
    from_file = _psnr(open_model(run / "model.tvq", arch="cpu"), scene)
    from_checkpoint = _psnr(open_model(run / "checkpoint.pt", arch="cpu"), scene)
    assert len(from_file) == len(from_checkpoint) == 3
    for a, b in zip(from_file, from_checkpoint):
        assert abs(a - b) < 0.05, (from_file, from_checkpoint)


def test_a_prefix_renders_its_lods_like_the_whole_file(run, scene):
    export_checkpoint(run / "checkpoint.pt", run / "model.tvq")
    whole = open_model(run / "model.tvq", arch="cpu")
    for lod, entry in enumerate(whole.header["lods"]):
        prefix = open_model(run / "model.tvq", max_bytes=entry["end"], arch="cpu")
        assert prefix.lods == lod + 1
        view = scene.split("test")[0]
        a = evaluate(prefix.field, [view], prefix.background, lods=[lod])[0]["psnr"]
        b = evaluate(whole.field, [view], whole.background, lods=[lod])[0]["psnr"]
        # the first LOD's prefix decodes with 8-bit decoder weights, the whole file with their refinement
        assert a == pytest.approx(b, abs=0.02 if lod == 0 else 1e-9)


def test_lra_of_full_rank_is_the_features_and_klt_is_orthonormal():
    from tvq.compress.lra import klt

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(500, 6, generator=gen) @ torch.randn(6, 6, generator=gen)
    mean, basis, coeffs = klt(x, 6)
    assert torch.allclose(coeffs @ basis + mean, x, atol=1e-4)
    assert torch.allclose(basis @ basis.T, torch.eye(6), atol=1e-5)
    _, basis2, coeffs2 = klt(x, 2)
    # the top directions carry the most variance: no other 2 of the 6 carry more
    assert coeffs2.var(0).sum() >= coeffs.var(0).topk(2).values.sum() - 1e-3


def test_kmeans_with_as_many_codes_as_distinct_features_is_exact(scene, tmp_path):
    from tvq.compress.kmeans import quantize
    from tvq.train import make_field, build_octree

    runtime.init("cpu")
    config = TrainConfig(max_level=4, num_lods=2)
    octree, _ = build_octree(scene, config, runtime.device(), log=lambda m: None)
    field = make_field(octree, config)
    starts = field.grid.flat.vertex_start.tolist()
    with torch.no_grad():  # four distinct feature vectors per level
        for k in range(2):
            rows = torch.arange(starts[k], starts[k + 1])
            field.grid.features[rows] = torch.eye(16)[rows % 4] * (k + 1)
    quantized = quantize(field, bits=2, log=lambda m: None)
    points = torch.rand(2000, 3) * 2 - 1
    assert torch.allclose(quantized.grid(points, 1), field.grid(points, 1), atol=1e-5)
