"""Instance masks on K channels: the gap holds on every channel, arrangements vary, masks never do."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage as ndi
from skimage.segmentation import expand_labels

from cytogen.data.masks import (MaskChannels, _backtrack, assign_channels, check_label_image, conflict_pairs,
                                spread)
from cytogen.errors import CytogenError


def _layout(seed: int, n: int, radius: int, shape=(96, 96)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lab = np.zeros(shape, np.int32)
    pts = rng.integers(0, shape[0], (n, len(shape)))
    lab[tuple(pts.T)] = np.arange(1, n + 1)
    return expand_labels(lab, radius)


def _min_same_channel_distance(labels: np.ndarray, assignment: dict[int, int]) -> float:
    """Independent check: Euclidean distance transform from each mask to the others on its channel."""
    best = np.inf
    for lab, c in assignment.items():
        others = np.isin(labels, [k for k, v in assignment.items() if v == c and k != lab])
        if others.any():
            d = ndi.distance_transform_edt(labels != lab)
            best = min(best, float(d[others].min()))
    return best


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 40), radius=st.integers(2, 9),
       gap=st.sampled_from([1.0, 2.0, 3.0]))
def test_no_two_masks_within_the_gap_share_a_channel(seed, n, radius, gap):
    labels = _layout(seed, n, radius)
    try:
        a = assign_channels(labels, 4, gap, rng=np.random.default_rng(seed))
    except CytogenError as exc:  # allowed only when the layout really needs more channels
        assert "cannot hold" in str(exc)
        return
    assert set(a) == set(np.unique(labels[labels > 0]).tolist())
    assert all(0 <= c < 4 for c in a.values())
    assert _min_same_channel_distance(labels, a) > gap


def test_gap_counts_background_pixels_between_masks():
    lab = np.zeros((5, 12), np.int32)
    lab[1:4, 1:4] = 1
    lab[1:4, 6:9] = 2  # two background columns (4, 5) between them: 3 px centre to centre
    assert len(conflict_pairs(lab, 2.0)) == 0
    lab[1:4, 5] = 2  # one background column: 2 px apart
    assert conflict_pairs(lab, 2.0).tolist() == [[1, 2]]
    assert conflict_pairs(lab, 1.0).tolist() == []  # gap 1 only separates touching masks


def test_rearrangement_changes_channels_but_never_masks():
    labels = _layout(3, 30, 6)
    x1 = MaskChannels(channels=4, merged=True).encode(labels, np.random.default_rng(1))
    x2 = MaskChannels(channels=4, merged=True).encode(labels, np.random.default_rng(2))
    assert x1.shape == (5, 96, 96)
    for x in (x1, x2):
        assert np.array_equal(x[:4].sum(0), (labels > 0).astype(np.float32))  # each pixel on one channel
        assert np.array_equal(x[4], (labels > 0).astype(np.float32))  # the union
        for lab in np.unique(labels[labels > 0]):  # every mask whole on exactly one channel
            on = [c for c in range(4) if x[c][labels == lab].any()]
            assert len(on) == 1 and x[on[0]][labels == lab].all()
    assert not np.array_equal(x1, x2)  # a different arrangement
    fixed = MaskChannels(channels=4)
    assert np.array_equal(fixed.encode(labels), fixed.encode(labels))  # no rng: the fixed one


def test_too_few_channels_is_a_clear_error_and_enough_work():
    lab = np.zeros((10, 10), np.int32)  # four quadrants that all touch at the centre
    lab[:5, :5], lab[:5, 5:], lab[5:, :5], lab[5:, 5:] = 1, 2, 3, 4
    assert len(assign_channels(lab, 3, 1.0)) == 4  # gap 1: diagonal neighbours (1.41 px) may share
    with pytest.raises(CytogenError, match="3 mask channels cannot hold.*raise data.mask_channels.channels"):
        assign_channels(lab, 3, 2.0)
    a = assign_channels(lab, 4, 2.0)
    assert sorted(a.values()) == [0, 1, 2, 3]


def test_exhaustive_search_proves_and_finds():
    ring = [{(i - 1) % 5, (i + 1) % 5} for i in range(5)]  # an odd cycle: 3 colours, never 2
    colour = np.full(5, -1)
    assert _backtrack(list(range(5)), ring, 2, np.random.default_rng(0), colour) is False
    assert _backtrack(list(range(5)), ring, 3, np.random.default_rng(0), colour) is True
    assert all(colour[i] != colour[j] for i in range(5) for j in ring[i])


def test_3d_labels_and_bad_inputs():
    lab = np.zeros((6, 20, 20), np.int32)
    lab[1:5, 2:8, 2:8], lab[1:5, 2:8, 9:15], lab[1:5, 12:18, 2:8] = 1, 2, 3
    a = assign_channels(lab, 4, 2.0)
    assert a[1] != a[2] and a[1] != a[3]
    assert spread(lab, a, 4).shape == (4, 6, 20, 20)
    with pytest.raises(CytogenError, match="non-integer"):
        check_label_image(np.full((4, 4), 0.5))
    with pytest.raises(CytogenError, match="negative"):
        check_label_image(-np.ones((4, 4), np.int32))
    with pytest.raises(CytogenError, match="one channel"):
        check_label_image(np.zeros((2, 4, 4, 4)))
    with pytest.raises(CytogenError, match="unknown keys"):
        MaskChannels.from_dict({"chanels": 4})
    with pytest.raises(CytogenError, match="gap_px"):
        MaskChannels(gap_px=0.5)


@pytest.mark.parametrize("rearrange", [True, False])
def test_patches_of_a_label_source_are_spread_per_draw(rearrange):
    from cytogen.data.datasets import Field, RandomPatches, prepare_fields, RawField
    from cytogen.data.normalize import Normalizer
    from cytogen.io.images import Image

    labels = _layout(5, 12, 8, shape=(32, 32))
    target = (labels > 0).astype(np.float32)[None] * 100.0
    raw = RawField("f", Image(labels[None].astype(np.int64), "CYX"), Image(target, "CYX"), None)
    enc = MaskChannels(channels=4, rearrange=rearrange)
    fields = prepare_fields([raw], Normalizer("none"), Normalizer("none"), (32, 32), encoder=enc)
    assert isinstance(fields[0], Field) and (fields[0].assignment is None) == rearrange
    ds = RandomPatches(fields, (32, 32), 20, augment=False, encoder=enc)
    draws = [ds[i]["source"].numpy() for i in range(20)]
    assert all(d.shape == (4, 32, 32) and np.array_equal(d.sum(0), (labels > 0)) for d in draws)
    distinct = {d.tobytes() for d in draws}
    assert (len(distinct) > 1) == rearrange  # fresh arrangements, or always the field's fixed one
    assert np.array_equal(ds[3]["source"].numpy(), ds[3]["source"].numpy())  # item i is reproducible



def test_balanced_groups_share_the_patches_equally():
    from cytogen.data.datasets import Field, RandomPatches

    big = Field("big", np.zeros((1, 64, 64), np.float32), np.zeros((1, 64, 64), np.float32), None)
    smalls = [Field(f"s{i}", np.ones((1, 16, 16), np.float32), np.ones((1, 16, 16), np.float32), None)
              for i in range(2)]
    fields = [big, *smalls]
    plain = RandomPatches(fields, (16, 16), 2000, augment=False)
    balanced = RandomPatches(fields, (16, 16), 2000, augment=False, groups=["real", "synthetic", "synthetic"])
    assert plain.weights[0] == pytest.approx(4096 / (4096 + 512))  # by area
    assert balanced.weights.tolist() == pytest.approx([0.5, 0.25, 0.25])
    share = np.mean([float(balanced[i]["source"].mean()) for i in range(2000)])  # 1 = a small-group patch
    assert share == pytest.approx(0.5, abs=0.04)
