"""VQRF on the octree end to end (CPU): prune, codebooks, fine-tuning, the vqrf chunks of a .tvq."""

import pytest
import torch

from tvq import runtime
from tvq.codec import FormatError
from tvq.codec.model import KEPT, PRUNED, QUANTISED
from tvq.compress.vqrf_model import VqrfOptions, compress, level_codes
from tvq.data import load_scene
from tvq.data.synthetic import make_scene
from tvq.export import open_model, write_field
from tvq.infer import FastRenderer
from tvq.train import TrainConfig, Trainer

OPTIONS = dict(prune=0.05, keep=0.6, codebook=64, kmeans_steps=40, finetune_steps=30)


@pytest.fixture(scope="module")
def compressed(tmp_path_factory):
    """A tiny raw model, compressed: (trainer, raw field, decoded field, encode options, report)."""
    runtime.init("cpu")
    root = tmp_path_factory.mktemp("vqrf")
    make_scene(root / "scene", size=32, n_train=10, n_val=0, n_test=2, seed=4)
    scene = load_scene(root / "scene")
    trainer = Trainer(scene, TrainConfig(bits=0, iters=150, max_level=5, num_lods=3, batch_rays=1024,
                                         samples_per_cell=2, eval_every=0, density="exp"), root / "run")
    trainer.setup()
    trainer.fit()
    raw = trainer.field
    decoded, kwargs, report = compress(trainer, raw, VqrfOptions(**OPTIONS), log=lambda _: None)
    return root, trainer, raw, decoded, kwargs, report


def test_level_codes_are_powers_of_two_within_the_limit():
    assert level_codes(1_000_000, 4096) == 4096
    assert level_codes(6000, 4096) == 128  # 6000 / 32 = 187 -> 128
    assert level_codes(3, 4096) == 2
    assert all(level_codes(n, 64) <= 64 for n in (0, 10, 10_000))


def test_per_level_thresholds():
    assert VqrfOptions(prune=0.01, keep=(1.0, 0.9, 0.6)).per_level(3) == [(0.01, 1.0), (0.01, 0.9), (0.01, 0.6)]
    from tvq.errors import TvqError

    with pytest.raises(TvqError, match="one per LOD"):
        VqrfOptions(keep=(0.9, 0.6)).per_level(3)
    with pytest.raises(TvqError, match="--prune"):
        VqrfOptions(prune=(0.5, 0.01, 0.01), keep=(0.4, 0.6, 0.6)).validate(3)


def test_pruning_removes_cells_and_classes_follow_the_importance(compressed):
    _, _, raw, decoded, _, report = compressed
    before = {row["level"]: row["vertices"] for row in report["levels_before"]}
    after = report["levels"]
    assert sum(r["vertices"] for r in after) < sum(before.values())  # cells whose corners are all pruned left
    for row in after:
        assert row["pruned"] + row["quantised"] + row["kept"] == row["vertices"]
        assert row["kept"] > 0 and row["quantised"] > 0
    grid = decoded.grid
    top = grid.octree.max_level
    classes = _classes(kwargs=compressed[4])
    finest = classes[-1]
    corners = grid.octree.cell_vertices[top].long()
    assert not bool((finest[corners] == PRUNED).all(dim=1).any()), "a cell of only pruned corners survived"


def _classes(kwargs):
    from tvq.codec import bitpack

    out = []
    for chunk in kwargs["chunks"]:
        if chunk.kind == "vertex-classes":
            out.append(torch.from_numpy(bitpack.unpack(chunk.raw, 2, chunk.symbols[1]).astype("int64")))
    return out


def test_fine_tuning_raises_the_compressed_fields_psnr(compressed):
    """The same pipeline without fine-tuning renders the training views worse (the assignments are the
    same: the codebooks, kept features and decoder are what moved)."""
    from tvq.eval import evaluate

    _, trainer, raw, decoded, _, report = compressed
    assert report["seconds"]["finetune"] > 0 and report["finetune_losses"]
    trainer_field = trainer.field
    untuned, _, _ = compress(trainer, raw, VqrfOptions(**{**OPTIONS, "finetune_steps": 0}), log=lambda _: None)
    trainer.field = trainer_field
    views = trainer.scene.split("train")[:4]
    bg = trainer.data.background
    last = [decoded.num_lods - 1]
    tuned_psnr = evaluate(decoded, views, bg, lods=last)[0]["psnr"]
    untuned_psnr = evaluate(untuned, views, bg, lods=last)[0]["psnr"]
    assert tuned_psnr > untuned_psnr + 0.1, (tuned_psnr, untuned_psnr)


def test_the_file_decodes_to_the_compressed_field_and_streams(compressed):
    root, trainer, raw, decoded, kwargs, _ = compressed
    path = root / "vqrf.tvq"
    report = write_field(path, decoded, [1.0, 1.0, 1.0], None, method="vqrf", **kwargs)
    model = open_model(path)
    assert model.header["model"]["kind"] == "vqrf" and model.lods == decoded.num_lods
    torch.testing.assert_close(model.field.grid.features, decoded.grid.features, atol=1e-6, rtol=0)
    # pruned vertices read 0, quantised ones a codebook row, kept ones their 8-bit features
    classes = torch.cat(_classes(kwargs))
    features = model.field.grid.features
    assert bool((features[classes == PRUNED] == 0).all())
    assert bool((features[classes == QUANTISED].abs().sum(1) > 0).any())
    assert int((classes == KEPT).sum()) == sum(r["kept"] for r in compressed[5]["levels"])
    view = trainer.scene.split("test")[0]
    for lod in range(model.lods):  # every LOD renders, from its own prefix too
        prefix = open_model(path, max_bytes=model.header["lods"][lod]["end"])
        assert prefix.lods == lod + 1
        image = FastRenderer(prefix.field, prefix.background).render(view.K, view.c2w, view.width, view.height, lod)
        assert torch.isfinite(image["color"]).all() and float(image["opacity"].mean()) > 0.01
    raw_path = root / "raw.tvq"
    raw_report = write_field(raw_path, raw, [1.0, 1.0, 1.0], None)
    assert report["file_bytes"] < raw_report["file_bytes"]


def test_vqrf_headers_and_classes_are_checked(compressed):
    from tvq.codec import bitpack, encode

    root, _, _, decoded, kwargs, _ = compressed
    broken = dict(kwargs, model_extra={"vqrf": dict(kwargs["model_extra"]["vqrf"], kept="many")})
    data, _ = encode(decoded, background=[1.0, 1.0, 1.0], **broken)
    (root / "bad-counts.tvq").write_bytes(data)
    with pytest.raises(FormatError, match="vqrf counts malformed"):
        open_model(root / "bad-counts.tvq")
    # an unknown class (3) in place of a quantised vertex, its index removed: lengths agree, classes do not
    chunks = list(kwargs["chunks"])
    at = next(i for i, c in enumerate(chunks) if c.kind == "vertex-classes")
    c = chunks[at]
    classes = bitpack.unpack(c.raw, 2, c.symbols[1]).copy()
    first = int((classes == QUANTISED).nonzero()[0][0])
    classes[first] = 3
    index_chunk = chunks[at + 1]
    bits, count = index_chunk.symbols
    index = bitpack.unpack(index_chunk.raw, bits, count)
    order = int((bitpack.unpack(c.raw, 2, c.symbols[1])[:first] == QUANTISED).sum())
    index = list(index[:order]) + list(index[order + 1:])
    import dataclasses

    chunks[at] = dataclasses.replace(c, raw=bitpack.pack(classes, 2))
    chunks[at + 1] = dataclasses.replace(index_chunk, raw=bitpack.pack(index, bits), symbols=(bits, count - 1))
    extra = {"vqrf": dict(kwargs["model_extra"]["vqrf"])}
    extra["vqrf"]["quantised"] = [extra["vqrf"]["quantised"][0] - 1] + extra["vqrf"]["quantised"][1:]
    data, _ = encode(decoded, background=[1.0, 1.0, 1.0], kind="vqrf", chunks=chunks, model_extra=extra)
    (root / "bad-classes.tvq").write_bytes(data)
    with pytest.raises(FormatError, match="vertex classes"):
        open_model(root / "bad-classes.tvq")


def test_hybrid_keeps_the_learned_indices(compressed):
    """A VQ-AD model through the hybrid: codes per level stay 2^b, and the vertices it quantises keep their
    trained index (vertices that shared a code share a decoded feature); pruned ones read 0."""
    from tvq.prune import vertex_rows

    root, trainer, _, _, _, _ = compressed
    vq_trainer = Trainer(trainer.scene, TrainConfig(bits=3, iters=120, max_level=5, num_lods=3, batch_rays=1024,
                                                    samples_per_cell=2, eval_every=0, density="exp", vq_warmup=0),
                         root / "vq")
    vq_trainer.setup()
    vq_trainer.fit()
    field = vq_trainer.field
    original = field.grid.hard_indices().long()
    decoded, kwargs, report = compress(vq_trainer, field, VqrfOptions(**OPTIONS), log=lambda _: None)
    assert kwargs["model_extra"]["vqrf"]["codes"] == [8, 8, 8]
    rows = vertex_rows(field.grid, decoded.octree)  # each surviving vertex's row in the VQ model
    classes = torch.cat(_classes(kwargs))
    features = decoded.grid.features
    quantised = torch.nonzero(classes == QUANTISED).flatten()
    level_of = torch.repeat_interleave(torch.arange(3), torch.tensor(decoded.grid.flat.vertex_counts()))
    groups = {}
    for v in quantised.tolist():
        groups.setdefault((int(level_of[v]), int(original[rows[v]])), []).append(v)
    assert len(groups) > 3
    for members in groups.values():
        assert torch.equal(features[members], features[members[:1]].expand(len(members), -1))
    assert bool((features[classes == PRUNED] == 0).all())


def test_a_diverged_fine_tuning_writes_nothing(compressed, monkeypatch):
    from tvq.compress import vqrf_model
    from tvq.errors import TvqError

    _, trainer, raw, _, _, _ = compressed
    saved = trainer.field
    monkeypatch.setattr(vqrf_model, "finetune", lambda *a, **k: [float("nan")])
    with pytest.raises(TvqError, match="diverged"):
        compress(trainer, raw, VqrfOptions(**OPTIONS), log=lambda _: None)
    trainer.field = saved
