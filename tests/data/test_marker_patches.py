"""Known answers for marker-centred patches, canvases, area batches and dihedral augmentation
(cytogen.data.marker_patches, paper 004 "Segmentation model")."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from cytogen.data.marker_patches import (
    AreaBatches,
    MarkerField,
    batch_for_area,
    canvas_for,
    dihedral_batch,
    extract_patches,
    gaussian_disk,
    invert_dihedral_batch,
    mask_on_canvas,
    patch_origins,
    random_codes,
)
from cytogen.errors import CytogenError

pytestmark = pytest.mark.usefixtures("one_thread")


def _subpixel_peak(g: np.ndarray) -> tuple[float, ...]:
    """Centre of a sampled Gaussian from a parabola through log g at the maximum (exact for a
    Gaussian, whose log is quadratic)."""
    c = np.unravel_index(int(np.argmax(g)), g.shape)
    lg = np.log(g.astype(np.float64))
    out = []
    for ax in range(g.ndim):
        lo, hi = list(c), list(c)
        lo[ax] -= 1
        hi[ax] += 1
        a, b, e = lg[tuple(lo)], lg[c], lg[tuple(hi)]
        out.append(c[ax] + 0.5 * (a - e) / (a - 2 * b + e))
    return tuple(out)


def test_gaussian_disk_peak_and_width():
    g = gaussian_disk(9, (4, 4), 2.0)
    assert g.dtype == np.float32 and g.shape == (9, 9)
    assert g[4, 4] == 1.0 and np.argmax(g) == 4 * 9 + 4
    # one sigma away along an axis: exp(-1/2); sqrt(2) sigma diagonally: exp(-1)
    assert g[4, 6] == pytest.approx(np.exp(-0.5), rel=1e-6)
    assert g[6, 6] == pytest.approx(np.exp(-1.0), rel=1e-6)
    assert np.allclose(g, g.T) and np.allclose(g, g[::-1])
    sub = gaussian_disk((11, 13), (3.3, 7.8), 4.0)
    assert np.allclose(_subpixel_peak(sub), (3.3, 7.8), atol=1e-3)
    g3 = gaussian_disk((5, 9, 9), (2.0, 4.0, 4.0), (1.0, 3.0, 3.0))
    assert g3.shape == (5, 9, 9) and g3[2, 4, 4] == 1.0
    assert g3[3, 4, 4] == pytest.approx(np.exp(-0.5), rel=1e-6)   # one z-sigma (1 px)
    assert g3[2, 4, 7] == pytest.approx(np.exp(-0.5), rel=1e-6)   # one x-sigma (3 px)


def test_patch_origins_round_half_up():
    m = np.array([[10.4, 2.6], [2.5, 0.0], [0.0, 63.49]])
    assert patch_origins(m, 8).tolist() == [[6, -1], [-1, -4], [-4, 59]]
    assert patch_origins(m, (8, 5)).tolist() == [[6, 1], [-1, -2], [-4, 61]]


def test_extract_patches_interior_and_corner():
    rng = np.random.default_rng(0)
    image = rng.random((2, 20, 30)).astype(np.float32)
    markers = np.array([[10.0, 15.0], [0.3, 0.0], [19.0, 29.4]])
    patches, origins = extract_patches(image, markers, (8, 8), sigma_px=3.0)
    assert patches.shape == (3, 3, 8, 8) and patches.dtype == np.float32
    assert origins.dtype == np.int64 and origins.tolist() == [[6, 11], [-4, -4], [15, 25]]
    assert np.array_equal(patches[0, :2], image[:, 6:14, 11:19])
    # corner marker: the in-image part equals the image crop, the rest is zero padding
    assert np.array_equal(patches[1, :2, 4:, 4:], image[:, :4, :4])
    assert not patches[1, :2, :4].any() and not patches[1, :2, :, :4].any()
    assert np.array_equal(patches[2, :2, :5, :5], image[:, 15:, 25:])
    assert not patches[2, :2, 5:].any() and not patches[2, :2, :, 5:].any()
    # the Gaussian channel peaks at the marker, sub-pixel position included
    for i in range(3):
        assert np.allclose(_subpixel_peak(patches[i, -1]), markers[i] - origins[i], atol=1e-3)
    assert np.unravel_index(np.argmax(patches[1, -1]), (8, 8)) == (4, 4)


def test_extract_patches_3d_corner():
    rng = np.random.default_rng(1)
    image = rng.random((1, 6, 12, 12)).astype(np.float32)
    markers = np.array([[0.0, 1.2, 11.0]])
    patches, origins = extract_patches(image, markers, (4, 8, 8), sigma_px=(1.5, 3.0, 3.0))
    assert patches.shape == (1, 2, 4, 8, 8)
    assert origins.tolist() == [[-2, -3, 7]]
    assert np.array_equal(patches[0, 0, 2:, 3:, :5], image[0, :2, :5, 7:])
    assert patches[0, 0].sum() == pytest.approx(image[0, :2, :5, 7:].sum(), rel=1e-6)
    assert np.allclose(_subpixel_peak(patches[0, 1]), markers[0] - origins[0], atol=1e-3)


def test_extract_patches_bad_markers():
    with pytest.raises(CytogenError, match="markers"):
        extract_patches(np.zeros((1, 8, 8), np.float32), np.zeros((3, 3)), 4)
    with pytest.raises(CytogenError, match="NaN"):
        extract_patches(np.zeros((1, 8, 8), np.float32), np.array([[np.nan, 1.0]]), 4)
    p, o = extract_patches(np.zeros((1, 8, 8), np.float32), np.zeros((0, 2)), 4)
    assert p.shape == (0, 2, 4, 4) and o.shape == (0, 2)


def test_canvas_and_mask_on_canvas():
    c0, shape = canvas_for(np.array([[-2, 3], [5, 1]]), 4)
    assert c0.tolist() == [-2, 1] and shape.tolist() == [11, 6]
    mask = np.random.default_rng(2).random((6, 7)) > 0.5
    canvas = mask_on_canvas(mask, (-2, -3), (10, 12))
    assert canvas.dtype == np.float32 and canvas.shape == (10, 12)
    assert np.array_equal(canvas[2:8, 3:10], mask.astype(np.float32))
    outside = np.ones((10, 12), bool)
    outside[2:8, 3:10] = False
    assert not canvas[outside].any()
    inner = mask_on_canvas(mask, (1, 2), (3, 3))
    assert np.array_equal(inner, mask[1:4, 2:5].astype(np.float32))


def _field(name="f", shape=(50, 60), n=30, seed=0, corner=None):
    rng = np.random.default_rng(seed)
    image = rng.random((1,) + shape).astype(np.float32)
    if corner is None:
        markers = rng.uniform(0, 1, (n, 2)) * (np.asarray(shape) - 1)
    else:
        markers = rng.uniform(0, corner, (n, 2))
    fg = rng.random(shape) > 0.3
    return MarkerField(name, image, markers, fg)


def _marker_pixels(f, idx):
    return np.floor(f.markers[idx] + 0.5).astype(np.int64)


def test_area_batches_deterministic_and_complete():
    fields = [_field("a", seed=0), _field("b", (40, 45), n=20, seed=1)]
    ds = AreaBatches(fields, size=8, area=20, sigma_px=3.0, length=5, seed=7)
    again = AreaBatches(fields, size=8, area=20, sigma_px=3.0, length=5, seed=7)
    assert len(ds) == 5
    seen_fields, seen_areas = set(), set()
    for k in range(12):
        a, b = ds[k], again[k]
        assert a.keys() == b.keys()
        for key in a:
            assert (torch.equal(a[key], b[key]) if torch.is_tensor(a[key]) else a[key] == b[key])
        f = fields[a["field"]]
        lo, hi = a["area"].numpy()
        assert (hi - lo).tolist() == [20, 20]
        pix = _marker_pixels(f, a["marker_index"].numpy())
        assert len(pix) >= 1 and ((pix >= lo) & (pix < hi)).all()
        # every marker of the area is there, in marker order
        all_pix = _marker_pixels(f, np.arange(len(f.markers)))
        inside = np.flatnonzero(((all_pix >= lo) & (all_pix < hi)).all(axis=1))
        assert a["marker_index"].tolist() == inside.tolist()
        ref, origins = extract_patches(f.image, f.markers[inside], 8, 3.0)
        assert torch.equal(a["patches"], torch.from_numpy(ref))
        off = a["offsets"]
        assert off.dtype == torch.int64 and (off >= 0).all()
        assert ((off + 8) <= torch.tensor(a["mask"].shape)).all()
        assert torch.equal(off + a["canvas_origin"], torch.from_numpy(origins))
        assert off.min(0).values.tolist() == [0, 0]  # the canvas is the patches' bounding box
        seen_fields.add(a["field"])
        seen_areas.add(tuple(lo))
    assert seen_fields == {0, 1} and len(seen_areas) > 3
    other = AreaBatches(fields, size=8, area=20, sigma_px=3.0, length=5, seed=8)
    assert any(not torch.equal(other[k]["area"], ds[k]["area"]) or other[k]["field"] != ds[k]["field"]
               for k in range(5))


def test_area_larger_than_image_and_mask_outside_image():
    f = _field("small", (18, 25), n=6, seed=3)
    f.markers[0] = (0.0, 0.0)     # patch leaves the image at the top left
    f.markers[1] = (17.0, 24.0)   # and at the bottom right
    ds = AreaBatches([f], size=(10, 10), area=640, sigma_px=4.0, length=3, seed=0)
    item = ds[0]
    assert item["area"].tolist() == [[0, 0], [18, 25]]
    assert item["marker_index"].tolist() == list(range(6))
    c0 = item["canvas_origin"].numpy()
    mask = item["mask"].numpy()
    assert c0.tolist() == [-5, -5]
    ref = mask_on_canvas(f.foreground, c0, mask.shape)
    assert np.array_equal(mask, ref)
    assert not mask[:5].any() and not mask[:, :5].any()
    assert mask.shape == (27, 34)   # from -5 to 17 - 5 + 10 = 22 and 24 - 5 + 10 = 29
    assert np.array_equal(mask[5:23, 5:30], f.foreground.astype(np.float32))
    assert not mask[23:].any() and not mask[:, 30:].any()
    assert item["patches"].shape == (6, 2, 10, 10) and item["mask"].dtype == torch.float32
    # through a DataLoader without batching (the intended use)
    batch = next(iter(DataLoader(ds, batch_size=None)))
    assert torch.equal(batch["patches"], item["patches"]) and batch["field"] == 0


def test_empty_areas_are_redrawn_and_empty_fields_never_drawn():
    crowded = _field("corner", (200, 200), n=5, seed=4, corner=12.0)  # markers in the top-left 12 px
    empty = MarkerField("none", np.zeros((1, 30, 30), np.float32), np.zeros((0, 2)), np.zeros((30, 30), bool))
    ds = AreaBatches([empty, crowded], size=8, area=16, sigma_px=3.0, length=4, seed=1)
    first = [ds[k] for k in range(6)]
    for k, item in enumerate(first):
        assert item["field"] == 1 and len(item["patches"]) >= 1
        assert torch.equal(ds[k]["area"], item["area"])  # the redraw is deterministic
        lo, hi = item["area"].numpy()
        pix = _marker_pixels(crowded, item["marker_index"].numpy())
        assert ((pix >= lo) & (pix < hi)).all()
    with pytest.raises(CytogenError, match="no field has any marker"):
        AreaBatches([empty], size=8)


def test_batch_for_area_none_and_3d():
    f = _field("a", (30, 30), n=4, seed=5, corner=5.0)
    assert batch_for_area(f, (20, 20), (30, 30), size=6) is None
    rng = np.random.default_rng(6)
    f3 = MarkerField("v", rng.random((2, 5, 24, 24)).astype(np.float32),
                     rng.uniform(0, 1, (6, 3)) * (np.array([5, 24, 24]) - 1), rng.random((5, 24, 24)) > 0.5)
    ds = AreaBatches([f3], size=(4, 8, 8), area=12, sigma_px=(1.0, 3.0, 3.0), length=2)
    item = ds[0]
    lo, hi = item["area"].numpy()
    assert lo[0] == 0 and hi[0] == 5 and (hi - lo)[1:].tolist() == [12, 12]   # Z taken whole
    assert item["patches"].shape[1:] == (3, 4, 8, 8)
    assert item["mask"].ndim == 3 and (item["offsets"] >= 0).all()


def test_marker_field_validation():
    img = np.zeros((1, 10, 10), np.float32)
    with pytest.raises(CytogenError, match="outside the image"):
        MarkerField("x", img, np.array([[3.0, 10.0]]), np.zeros((10, 10), bool))
    with pytest.raises(CytogenError, match="foreground mask"):
        MarkerField("x", img, np.array([[3.0, 3.0]]), np.zeros((10, 9), bool))
    with pytest.raises(CytogenError, match="NaN"):
        MarkerField("x", np.full((1, 10, 10), np.nan, np.float32), np.array([[3.0, 3.0]]),
                    np.zeros((10, 10), bool))
    f = MarkerField("x", np.zeros((10, 10)), np.array([[3.0, 9.4]]), np.zeros((10, 10)))
    assert f.image.shape == (1, 10, 10) and f.image.dtype == np.float32 and f.foreground.dtype == bool


def test_dihedral_round_trip_and_meaning_of_codes():
    x = torch.randn(8, 3, 6, 6)
    codes = torch.arange(8)
    for c in range(8):
        cc = torch.full((8,), c)
        assert torch.equal(invert_dihedral_batch(dihedral_batch(x, cc), cc), x)
    mixed = dihedral_batch(x, codes)
    assert torch.equal(invert_dihedral_batch(mixed, codes), x)
    one = x[:1].expand(8, -1, -1, -1)
    outs = dihedral_batch(one, codes)
    assert len({tuple(o.flatten().tolist()) for o in outs}) == 8     # 8 distinct transforms
    p = x[0]
    assert torch.equal(outs[0], p)
    assert torch.equal(outs[1], p.flip(-1))                     # flip x
    assert torch.equal(outs[2], p.flip(-2))                     # flip y
    assert torch.equal(outs[4], p.transpose(-2, -1))            # transpose
    assert torch.equal(outs[6], p.transpose(-2, -1).flip(-2))   # transpose, then flip y
    for i in range(8):
        assert torch.equal(mixed[i], dihedral_batch(x[i:i + 1], codes[i:i + 1])[0])


def test_dihedral_moves_the_position_channel_with_the_marker():
    k = 8
    image = np.random.default_rng(7).random((1, 30, 30)).astype(np.float32)
    patches, origins = extract_patches(image, np.array([[12.3, 14.6]]), k, sigma_px=2.0)
    a, b = 12.3 - origins[0, 0], 14.6 - origins[0, 1]
    assert (a, b) == pytest.approx((4.3, 3.6))   # off the patch's symmetry centre 3.5
    for c in range(8):
        out = dihedral_batch(torch.from_numpy(patches), torch.tensor([c]))[0, -1].numpy()
        y, x = (b, a) if c & 4 else (a, b)
        y = k - 1 - y if c & 2 else y
        x = k - 1 - x if c & 1 else x
        assert np.allclose(_subpixel_peak(out), (y, x), atol=1e-3)
        assert np.allclose(out, gaussian_disk(k, (y, x), 2.0), atol=1e-6)


def test_dihedral_3d_acts_on_yx_and_keeps_gradients():
    x = torch.randn(8, 2, 3, 5, 5, requires_grad=True)
    codes = torch.arange(8)
    out = dihedral_batch(x, codes)
    for z in range(3):
        assert torch.equal(out[:, :, z], dihedral_batch(x[:, :, z], codes))
    assert torch.equal(invert_dihedral_batch(out, codes), x)
    w = torch.randn_like(out)
    (out * w).sum().backward()
    assert torch.equal(x.grad, invert_dihedral_batch(w, codes))   # the adjoint of a permutation
    with pytest.raises(ValueError, match="square"):
        dihedral_batch(torch.zeros(1, 1, 4, 5), torch.tensor([4]))
    assert torch.equal(dihedral_batch(torch.arange(20.).reshape(1, 1, 4, 5), torch.tensor([3])),
                       torch.arange(20.).reshape(1, 1, 4, 5).flip(-1).flip(-2))


def test_random_codes_cover_all_eight():
    g = torch.Generator().manual_seed(0)
    c = random_codes(800, g)
    assert c.dtype == torch.long and c.shape == (800,)
    counts = torch.bincount(c, minlength=8)
    assert len(counts) == 8 and (counts > 60).all()
    assert torch.equal(c, random_codes(800, torch.Generator().manual_seed(0)))
    flips = random_codes(400, g, square=False)
    assert set(flips.tolist()) == {0, 1, 2, 3}
