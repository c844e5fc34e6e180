"""Weighted k-means (codebook initialisation) and the VQ grid it starts from trained raw features."""

import pytest
import torch

from tvq.kmeans import kmeans


def _blobs(k=6, per=200, dim=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, dim, generator=g) * 10
    labels = torch.arange(k).repeat_interleave(per)
    return centres[labels] + torch.randn(k * per, dim, generator=g) * 0.05, labels, centres


def test_separated_clusters_are_recovered():
    x, labels, centres = _blobs()
    found, assign = kmeans(x, 6, seed=1)
    # same partition as the truth (labels may be permuted), and each centroid on its blob's centre
    for c in range(6):
        assert assign[labels == c].unique().numel() == 1
    assert assign.unique().numel() == 6
    match = torch.cdist(found, centres).min(dim=1).values
    assert float(match.max()) < 0.05


def test_weights_move_the_centroid_to_the_weighted_mean():
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [4.0, 0.0]])
    w = torch.tensor([1.0, 1.0, 2.0])
    found, assign = kmeans(x, 1, weights=w)
    torch.testing.assert_close(found, torch.tensor([[2.25, 0.0]]))
    assert assign.tolist() == [0, 0, 0]


def test_more_codes_than_distinct_points_still_assigns_everything():
    x = torch.tensor([[1.0, 2.0]] * 5)
    found, assign = kmeans(x, 4)
    assert found.shape == (4, 2)
    torch.testing.assert_close(found[assign], x)


def test_bad_input_is_refused():
    with pytest.raises(ValueError):
        kmeans(torch.zeros(0, 3), 4)
    with pytest.raises(ValueError):
        kmeans(torch.zeros(5, 3), 0)


def test_vq_grid_from_raw_features_starts_at_the_nearest_codes():
    from tvq import runtime
    from tvq.field import FeatureOctree
    from tvq.octree import SparseOctree

    runtime.init()
    g = torch.Generator().manual_seed(0)
    octree = SparseOctree.from_points(torch.rand(500, 3, generator=g) * 2 - 1, 4)
    raw = FeatureOctree(octree, num_lods=2, feature_dim=4, kind="raw")
    with torch.no_grad():  # clustered features: 8 distinct values plus a little noise
        table = torch.randn(8, 4, generator=g)
        pick = torch.randint(0, 8, (raw.features.shape[0],), generator=g)
        raw.features.copy_(table[pick] + torch.randn(raw.features.shape, generator=g) * 1e-3)
    vq = FeatureOctree.quantized_from(raw, bits=3, logit_gap=2.0)
    assert vq.kind == "vq" and vq.logits.shape == (raw.features.shape[0], 8)
    codes = 8
    level_start = torch.repeat_interleave(torch.arange(2), torch.tensor(raw.flat.vertex_counts())) * codes
    decoded = vq.codebooks[vq.hard_indices().long() + level_start]
    torch.testing.assert_close(decoded, raw.features, atol=5e-3, rtol=0)
    top2 = vq.logits.detach().topk(2, dim=1).values
    starts = raw.flat.vertex_start.tolist()
    for k in range(2):  # the median gap is set per level
        gap = (top2[starts[k]:starts[k + 1], 0] - top2[starts[k]:starts[k + 1], 1]).median()
        assert abs(float(gap) - 2.0) < 1e-4


def test_vq_grid_from_identical_features_keeps_finite_logits():
    from tvq import runtime
    from tvq.field import FeatureOctree
    from tvq.octree import SparseOctree

    runtime.init()
    octree = SparseOctree.from_points(torch.rand(200, 3, generator=torch.Generator().manual_seed(1)) * 2 - 1, 3)
    raw = FeatureOctree(octree, num_lods=1, feature_dim=4, kind="raw")
    with torch.no_grad():
        raw.features.fill_(0.5)  # every centroid the same point: all logit gaps are 0
    vq = FeatureOctree.quantized_from(raw, bits=2)
    logits = vq.logits.detach()
    assert torch.isfinite(logits).all() and float(logits.abs().max()) < 1.0
