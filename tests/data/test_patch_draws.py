"""RandomPatches draws one stacked crop per item: the patches must be exactly those of the
per-array reference (field by ``rng.choice(p=weights)``, each array cropped and transformed on
its own), so the lean path changes no statistics."""

import numpy as np
import pytest
import torch

from cytogen.data.augment import random_dihedral
from cytogen.data.datasets import Field, RandomPatches
from cytogen.data.patches import crop, foreground_coords, sample_corner


def _fields(n: int, shape=(40, 48), reference: bool = False) -> list[Field]:
    rng = np.random.default_rng(1)
    out = []
    for k in range(n):
        h, w = shape[0] + 4 * (k % 3), shape[1] + 2 * (k % 2)  # unequal areas: unequal weights
        src = rng.random((2, h, w), dtype=np.float32)
        tgt = rng.random((1, h, w), dtype=np.float32)
        mask = (tgt > 0.7).astype(np.float32)
        ref = rng.random((1, h, w), dtype=np.float32) if reference else None
        out.append(Field(f"f{k}", src, tgt, mask, foreground_coords(mask[0] > 0), None, ref))
    return out


def _reference_item(ds: RandomPatches, i: int) -> dict[str, np.ndarray]:
    epoch, i = divmod(i, ds.length)
    rng = np.random.default_rng([ds.seed, epoch, i])
    f = ds.fields[int(rng.choice(len(ds.fields), p=ds.weights))]
    corner = sample_corner(rng, f.source.shape[1:], ds.patch, f.fg_index, ds.fg_bias)
    arrays = {"source": crop(f.source, corner, ds.patch), "target": crop(f.target, corner, ds.patch),
              "mask": crop(f.mask, corner, ds.patch)}
    if f.reference is not None:
        arrays["reference"] = crop(f.reference, corner, ds.patch)
    if ds.unpaired:
        g = ds.fields[int(rng.choice(len(ds.fields), p=ds.weights))]
        cb = sample_corner(rng, g.source.shape[1:], ds.patch, g.fg_index, ds.fg_bias)
        arrays["target"] = crop(g.target, cb, ds.patch)
        arrays.pop("mask")
    if ds.augment:
        t = random_dihedral(rng, len(ds.patch), square=ds.patch[-1] == ds.patch[-2])
        arrays = {k: t.apply(v) for k, v in arrays.items()}
    return arrays


@pytest.mark.parametrize("kw", [dict(augment=True, fg_bias=0.5), dict(augment=False, fg_bias=0.0),
                                dict(augment=True, fg_bias=0.5, unpaired=True),
                                dict(augment=True, fg_bias=0.8, groups=["a", "b", "a", "c", "b", "a", "a"]),
                                dict(augment=True, fg_bias=0.5, reference=True)])
def test_patches_equal_the_per_array_reference(kw):
    kw = dict(kw)
    fields = _fields(7, reference=kw.pop("reference", False))
    ds = RandomPatches(fields, (16, 16), 50, seed=4, **kw)
    for i in list(range(50)) + [3 * 50 + 11]:
        got, want = ds[i], _reference_item(ds, i)
        assert list(got) == list(want)
        for k in want:
            assert got[k].dtype == torch.float32 and got[k].is_contiguous()
            np.testing.assert_array_equal(got[k].numpy(), want[k])


def test_many_small_fields_are_drawn_by_area():
    fields = _fields(400, shape=(20, 20))
    ds = RandomPatches(fields, (16, 16), 4000, augment=False, seed=0)
    names = [f.name for f in fields]
    counts = np.bincount([names.index(ds._pick(np.random.default_rng([0, 0, i])).name) for i in range(4000)],
                         minlength=400)
    expected = 4000 * ds.weights
    # larger fields (every third one is 8 px taller) are drawn more often, in proportion to area
    big = np.array([k % 3 == 2 for k in range(400)])
    assert counts[big].sum() / expected[big].sum() == pytest.approx(1, abs=0.06)
    assert counts[~big].sum() / expected[~big].sum() == pytest.approx(1, abs=0.06)
