"""Exclusivity metrics against values computed by hand."""

import numpy as np
import pytest

from cytogen.errors import CytogenError
from cytogen.evaluate.exclusivity import exclusivity, exclusivity_map, pool_exclusivity

# 3 structures over 4 pixels (1 x 4 field); pixel 2 is a tie between A and B (A wins, map 0).
A = [5, 1, 2, 0]
B = [3, 4, 2, 1]
C = [0, 2, 1, 3]
STACK = np.array([A, B, C], dtype=float)[:, None, :]


def test_hand_computed_values():
    r = exclusivity(STACK, ["A", "B", "C"])
    np.testing.assert_allclose(exclusivity_map(STACK), [[2, 2, 0, 2]])
    assert r.overall == pytest.approx(1.5)
    assert r.per_structure == pytest.approx({"A": 1.0, "B": 2.0, "C": 2.0})
    expected = np.array([[np.nan, 1.0, 3.0],    # A over B: (2 + 0) / 2, A over C: (5 + 1) / 2
                         [3.0, np.nan, 2.0],    # pixel 1 only
                         [3.0, 2.0, np.nan]])   # pixel 3 only
    np.testing.assert_allclose(r.pairwise, expected)
    assert r.pairwise[0, 1] != r.pairwise[1, 0]  # directed, not symmetric
    assert r.fraction_highest == pytest.approx({"A": 0.5, "B": 0.25, "C": 0.25})
    d = r.to_dict()
    assert d["pairwise"]["B"]["A"] == pytest.approx(3.0) and "A" not in d["pairwise"]["A"]


def test_never_highest_structure_is_nan_and_json_none():
    stack = np.stack([np.full((2, 3), 2.0), np.ones((2, 3)), np.zeros((2, 3))])
    r = exclusivity(stack, ["a", "b", "c"])
    assert r.overall == pytest.approx(1.0)
    assert np.isnan(r.per_structure["b"]) and np.isnan(r.pairwise[1]).all()
    assert r.to_dict()["per_structure"]["b"] is None


def test_pairwise_at_least_per_structure():
    rng = np.random.default_rng(0)
    r = exclusivity(rng.random((4, 3, 16, 16)))  # 3D
    for i, name in enumerate(r.names):
        others = np.delete(r.pairwise[i], i)
        assert np.all(others >= r.per_structure[name] - 1e-12)
    two = exclusivity(rng.random((2, 3, 8, 8)), ["a", "b"])  # with two structures they coincide
    assert two.pairwise[0, 1] == pytest.approx(two.per_structure["a"])
    assert two.pairwise[1, 0] == pytest.approx(two.per_structure["b"])


def test_pool_equals_concatenated_pixels_not_mean_of_means():
    rng = np.random.default_rng(1)
    f1, f2 = rng.random((3, 8, 8)), rng.random((3, 4, 20)) ** 3
    pooled = pool_exclusivity([f1, f2], ["x", "y", "z"])
    joined = exclusivity(np.concatenate([f1.reshape(3, 1, -1), f2.reshape(3, 1, -1)], axis=2), ["x", "y", "z"])
    assert pooled.overall == pytest.approx(joined.overall)
    np.testing.assert_allclose(pooled.pairwise, joined.pairwise)
    mean_of_means = (exclusivity(f1).overall + exclusivity(f2).overall) / 2
    assert pooled.overall != pytest.approx(mean_of_means)
    assert pool_exclusivity([exclusivity(f1, "xyz"), exclusivity(f2, "xyz")]).overall == pytest.approx(joined.overall)


def test_permuting_structures_permutes_results():
    rng = np.random.default_rng(2)
    stack = rng.random((3, 10, 10))
    r = exclusivity(stack, ["a", "b", "c"])
    p = exclusivity(stack[[2, 0, 1]], ["c", "a", "b"])
    assert p.overall == pytest.approx(r.overall)
    assert p.per_structure == pytest.approx(r.per_structure)
    np.testing.assert_allclose(p.pairwise[1, 0], r.pairwise[0, 2])


def test_scaling_scales_values():
    rng = np.random.default_rng(3)
    stack = rng.random((2, 12, 12))
    assert exclusivity(stack * 255).overall == pytest.approx(255 * exclusivity(stack).overall)


@pytest.mark.parametrize("bad, match", [
    (np.zeros((1, 4, 4)), "at least 2"),
    (np.zeros((4, 4)), "stack"),
    (np.array([[[np.nan]], [[0.0]]]), "NaN"),
])
def test_bad_stacks(bad, match):
    with pytest.raises(CytogenError, match=match):
        exclusivity(bad)


def test_names_must_match():
    with pytest.raises(CytogenError, match="names"):
        exclusivity(np.zeros((2, 3, 3)), ["a"])
    with pytest.raises(CytogenError, match="different structures"):
        pool_exclusivity([exclusivity(np.zeros((2, 3, 3)), ["a", "b"]), exclusivity(np.zeros((2, 3, 3)), ["a", "c"])])
