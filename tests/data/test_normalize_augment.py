import numpy as np
import pytest
import torch

from cytogen.data.augment import Dihedral, random_dihedral
from cytogen.data.datasets import RandomPatches, Field
from cytogen.data.normalize import Normalizer
from cytogen.data.patches import sample_corner


@pytest.mark.parametrize("method", ["percentile", "zscore", "none"])
@pytest.mark.parametrize("scope", ["field", "dataset"])
def test_normalize_round_trip(method, scope):
    rng = np.random.default_rng(0)
    imgs = [rng.gamma(2.0, 100.0, size=(2, 32, 40)).astype(np.float32) for _ in range(3)]
    n = Normalizer(method, (1, 99), scope).fit(imgs)
    x = imgs[1]
    stats = n.stats_for(x)
    y = n.normalize(x, stats)
    np.testing.assert_allclose(n.denormalize(y, stats), x, rtol=1e-5, atol=1e-3)
    restored = Normalizer.from_dict(n.to_dict())
    np.testing.assert_array_equal(restored.normalize(x), n.normalize(x))


def test_percentile_maps_to_unit_range_and_constant_is_safe():
    x = np.arange(1000, dtype=np.float32).reshape(1, 10, 100)
    y = Normalizer("percentile", (0, 100)).normalize(x)
    assert y.min() == pytest.approx(0) and y.max() == pytest.approx(1)
    const = np.full((1, 8, 8), 7.0, np.float32)
    out = Normalizer("percentile").normalize(const)
    assert np.all(np.isfinite(out)) and np.all(out == 0)
    assert np.all(np.isfinite(Normalizer("zscore").normalize(const)))


def test_dataset_scope_uses_fitted_stats():
    a = np.zeros((1, 4, 4), np.float32)
    b = np.full((1, 4, 4), 10.0, np.float32)
    n = Normalizer("zscore", scope="dataset").fit([a, b])
    assert n.offset == [5.0] and n.scale == [5.0]
    np.testing.assert_allclose(n.normalize(b), 1.0)


@pytest.mark.parametrize("shape, n_distinct", [((2, 6, 6), 8), ((1, 3, 6, 6), 16)])
def test_random_dihedral_reaches_every_transform_and_keeps_channels(shape, n_distinct):
    """Square YX: the 8 symmetries of the square (x2 with the Z flip in 3D), channels untouched."""
    x = np.random.default_rng(1).normal(size=shape)
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(400):
        t = random_dihedral(rng, len(shape) - 1)
        y = t.apply(x)
        assert y.shape == x.shape and y.flags.c_contiguous
        seen.add(y.tobytes())
    # the symmetry group built independently: rotations of x and of its YX transpose (and Z flips)
    xt = np.swapaxes(x, -1, -2)
    group = {np.ascontiguousarray(np.rot90(a, k, axes=(-2, -1))).tobytes() for a in (x, xt) for k in range(4)}
    if x.ndim == 4:
        group |= {np.ascontiguousarray(np.flip(np.frombuffer(g).reshape(x.shape), axis=1)).tobytes() for g in group}
    assert len(group) == n_distinct and seen == group


def test_random_dihedral_on_non_square_patches_keeps_the_shape():
    x = np.random.default_rng(2).normal(size=(1, 4, 6))
    rng = np.random.default_rng(0)
    ks = set()
    for _ in range(50):
        t = random_dihedral(rng, 2, square=False)
        ks.add(t.k)
        assert t.apply(x).shape == x.shape
    assert ks == {0, 2}


def test_rot90_rotates_yx_plane():
    x = np.array([[[1, 2], [3, 4]]])
    np.testing.assert_array_equal(Dihedral(1).apply(x), np.rot90(x, 1, axes=(1, 2)))


def test_foreground_bias():
    rng = np.random.default_rng(0)
    fg = np.array([np.ravel_multi_index((50, 60), (100, 100))])
    corners = [sample_corner(rng, (100, 100), (20, 20), fg, 1.0) for _ in range(10)]
    assert all(c == (40, 50) for c in corners)
    uniform = {sample_corner(rng, (100, 100), (20, 20), fg, 0.0) for _ in range(20)}
    assert len(uniform) > 10


def test_random_patches_aligned_deterministic_and_biased():
    rng = np.random.default_rng(0)
    src = rng.normal(size=(1, 64, 64)).astype(np.float32)
    mask = np.zeros((1, 64, 64), np.float32)
    mask[0, 40:50, 10:20] = 1
    f = Field("f", src, src * 2 + 1, mask, np.flatnonzero(mask[0]))
    ds = RandomPatches([f], (16, 16), 20, augment=True, fg_bias=1.0, seed=5)
    item = ds[3]
    torch.testing.assert_close(item["target"], item["source"] * 2 + 1)  # pairs stay aligned under augmentation
    assert all(ds[i]["mask"].sum() > 0 for i in range(20))  # every patch sees foreground
    torch.testing.assert_close(ds[3]["source"], RandomPatches([f], (16, 16), 20, fg_bias=1.0, seed=5)[3]["source"])
    assert not torch.equal(ds[20 + 3]["source"], item["source"])  # item 3 of epoch 1 (index e * length + i)
