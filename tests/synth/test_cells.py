"""Tests of the synthetic cell generator (cytogen.synth.cells)."""

from __future__ import annotations

import csv
import time

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.measure import regionprops
from skimage.segmentation import find_boundaries

from cytogen.errors import CytogenError
from cytogen.synth.cells import CHANNELS, SynthField, synth_field, write_synthetic_dataset

SHAPE_3D = (24, 96, 96)


@pytest.fixture(scope="module")
def fields2d() -> list[SynthField]:
    return [synth_field(seed=s, organelles=True) for s in range(4)]


@pytest.fixture(scope="module")
def field3d() -> SynthField:
    return synth_field(SHAPE_3D, seed=3, organelles=True)


def _adjacent_pairs(labels: np.ndarray) -> set[tuple[int, int]]:
    """Pairs of different non-zero labels that touch (8/26-connectivity)."""
    pairs = set()
    pad = np.pad(labels, 1)
    for off in np.ndindex(*(3,) * labels.ndim):
        shifted = pad[tuple(slice(o, o + n) for o, n in zip(off, labels.shape))]
        m = (labels > 0) & (shifted > 0) & (labels != shifted)
        pairs |= {(min(a, b), max(a, b)) for a, b in zip(labels[m], shifted[m])}
    return pairs


def test_deterministic_for_a_seed_and_different_across_seeds():
    a = synth_field((96, 96), seed=5, organelles=True)
    b = synth_field((96, 96), seed=5, organelles=True)
    c = synth_field((96, 96), seed=6, organelles=True)
    for name in ("image", "cells", "nuclei", "organelles"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.image, c.image)
    assert not np.array_equal(a.cells, c.cells)
    g1 = synth_field((64, 64), seed=np.random.default_rng(1))
    g2 = synth_field((64, 64), seed=np.random.default_rng(1))
    np.testing.assert_array_equal(g1.image, g2.image)


def test_organelles_flag_leaves_the_other_channels_unchanged():
    a = synth_field((96, 96), seed=2)
    b = synth_field((96, 96), seed=2, organelles=True)
    np.testing.assert_array_equal(a.image, b.image[:3])
    np.testing.assert_array_equal(a.cells, b.cells)
    assert a.organelles is None and b.organelles is not None


def test_shapes_dtypes_and_metadata_2d(fields2d):
    f = fields2d[0]
    assert f.image.shape == (4, 256, 256) and f.image.dtype == np.float32
    assert f.channel_names == [*CHANNELS, "organelles"] == ["actin", "membrane", "nucleus", "organelles"]
    for lab in (f.cells, f.nuclei, f.organelles):
        assert lab.shape == (256, 256) and lab.dtype == np.int32
    assert f.pixel_size_um == (0.5, 0.5)
    assert np.isfinite(f.image).all()
    assert -0.3 < f.image.min() and f.image.max() < 1.6
    g = synth_field((80, 120), seed=1, pixel_size_um=0.8)
    assert g.image.shape == (3, 80, 120) and g.organelles is None and g.pixel_size_um == (0.8, 0.8)
    # default density: about one cell per 70 x 70 px
    assert 9 <= f.cells.max() <= 14


def test_shapes_dtypes_and_metadata_3d(field3d):
    f = field3d
    assert f.image.shape == (4, *SHAPE_3D) and f.image.dtype == np.float32
    assert f.cells.shape == SHAPE_3D and f.cells.dtype == np.int32
    assert f.nuclei.shape == SHAPE_3D and f.organelles.shape == SHAPE_3D
    assert f.pixel_size_um == (1.0, 0.5, 0.5)
    assert synth_field((8, 64, 64), seed=0, z_step_um=0.5).pixel_size_um == (0.5, 0.5, 0.5)


def test_cell_and_nucleus_sizes_are_physical():
    sizes = {}
    for px in (0.5, 1.0):
        cell_len, nuc_len = [], []
        for s in range(3):
            f = synth_field((int(256 * 0.5 / px),) * 2, seed=s, pixel_size_um=px, noise=0)
            cell_len += [r.axis_major_length * px for r in regionprops(f.cells)]
            nuc_len += [r.axis_major_length * px for r in regionprops(f.nuclei)]
        sizes[px] = (np.median(cell_len), np.median(nuc_len))
        assert 18 < np.median(cell_len) < 45 and 7 < np.median(nuc_len) < 15
        assert 6 <= min(nuc_len) and max(nuc_len) <= 16
    assert abs(sizes[0.5][0] - sizes[1.0][0]) < 8


def test_every_nucleus_lies_inside_its_own_cell(fields2d, field3d):
    for f in [*fields2d, field3d]:
        nuc = f.nuclei > 0
        np.testing.assert_array_equal(f.cells[nuc], f.nuclei[nuc])
        # a margin of cytoplasm: the nucleus grown by one pixel is still in its cell
        grown = ndi.grey_dilation(f.nuclei, size=(3,) * f.nuclei.ndim)
        ring = (grown > 0) & ~nuc
        np.testing.assert_array_equal(f.cells[ring], grown[ring])
        ids_c, ids_n = set(np.unique(f.cells)) - {0}, set(np.unique(f.nuclei)) - {0}
        assert ids_n <= ids_c and len(ids_n) >= 0.9 * len(ids_c)
        for r in regionprops(f.nuclei):  # one connected nucleus per cell
            assert ndi.label(r.image)[1] == 1


def test_nucleus_channel_is_bright_inside_nuclei(fields2d, field3d):
    for f in [*fields2d, field3d]:
        nuc = f.image[f.channel_names.index("nucleus")]
        inside = ndi.binary_erosion(f.nuclei > 0, iterations=1)
        outside = ~ndi.binary_dilation(f.nuclei > 0, iterations=3)
        assert nuc[inside].mean() > 5 * nuc[outside].mean()
        assert nuc[inside].mean() > 0.4


def test_actin_is_dark_over_nuclei_and_bright_in_cytoplasm(fields2d):
    for f in fields2d:
        actin = f.image[0]
        over_nuc = ndi.binary_erosion(f.nuclei > 0, iterations=3)
        cyto = (f.cells > 0) & ~ndi.binary_dilation(f.nuclei > 0, iterations=2)
        background = ~ndi.binary_dilation(f.cells > 0, iterations=3)
        bg = actin[background].mean()
        assert actin[over_nuc].mean() - bg < 0.35 * (actin[cyto].mean() - bg)
        assert actin[over_nuc].mean() > bg + 0.005  # dim, not absent
        # the perinuclear ring: just outside each nucleus is brighter than the cytoplasm average
        shell = ndi.binary_dilation(f.nuclei > 0, iterations=3) & ~ndi.binary_dilation(
            f.nuclei > 0, iterations=1)
        assert actin[shell].mean() > actin[cyto].mean()


def test_membrane_is_bright_on_cell_boundaries(fields2d):
    for f in fields2d:
        mem = f.image[1]
        bnd = find_boundaries(f.cells, mode="inner") & (f.cells > 0)
        interior = ndi.binary_erosion(f.cells > 0, iterations=4)
        assert mem[bnd].mean() > 3 * mem[interior].mean()


def test_stress_fibres_follow_the_long_axis_of_each_cell():
    errors = []
    for s in range(3):
        f = synth_field(seed=s, noise=0.0)
        actin = ndi.gaussian_filter(f.image[0], 1.0)
        gy, gx = np.gradient(actin)
        for r in regionprops(f.cells):
            sl = r.slice
            own = (f.cells[sl] == r.label) & (f.nuclei[sl] == 0)
            own = ndi.binary_erosion(own, iterations=3)
            if r.axis_minor_length == 0 or r.axis_major_length / r.axis_minor_length < 1.5 or own.sum() < 200:
                continue
            yy, xx = np.nonzero(f.cells[sl] == r.label)
            ev, vec = np.linalg.eigh(np.cov(np.stack([yy, xx])))
            cell_dir = vec[:, -1]
            a, b = gy[sl][own], gx[sl][own]
            tensor = np.array([[np.sum(a * a), np.sum(a * b)], [np.sum(a * b), np.sum(b * b)]])
            fib_dir = np.linalg.eigh(tensor)[1][:, 0]  # direction of least intensity change
            errors.append(np.degrees(np.arccos(min(1.0, abs(cell_dir @ fib_dir)))))
    assert len(errors) >= 10
    assert np.median(errors) < 12 and np.mean(np.array(errors) < 25) > 0.8


def test_organelles_are_disjoint_inside_cells_and_out_of_nuclei_except_nucleoli(fields2d, field3d):
    for f in [*fields2d, field3d]:
        org = f.organelles
        assert org.dtype == np.int32
        assert not _adjacent_pairs(org), "two organelles touch"
        assert (f.cells[org > 0] > 0).all()
        n_cyto, nucleolated = 0, set()
        for r in regionprops(org):
            coords = tuple(r.coords.T)
            cells_here, nuc_here = np.unique(f.cells[coords]), np.unique(f.nuclei[coords])
            assert cells_here.size == 1 and cells_here[0] > 0
            if nuc_here[0] == 0:  # cytoplasmic: entirely out of the nucleus
                assert nuc_here.size == 1
                n_cyto += 1
            else:  # nucleolus: entirely inside the nucleus of the same cell
                assert nuc_here.size == 1 and nuc_here[0] == cells_here[0]
                nucleolated.add(int(nuc_here[0]))
        n_cells = len(np.unique(f.cells)) - 1
        assert 5 * n_cells * 0.7 <= n_cyto <= 20 * n_cells
        assert len(nucleolated) >= 0.8 * (len(np.unique(f.nuclei)) - 1)
        chan = f.image[f.channel_names.index("organelles")]
        assert chan[org > 0].mean() > 3 * chan[(f.cells > 0) & (org == 0)].mean()


def test_some_cells_touch_and_some_are_isolated():
    touching_fields, isolated_fields = 0, 0
    for s in range(5):
        cells = synth_field(seed=s).cells
        pairs = _adjacent_pairs(cells)
        touched = {a for p in pairs for a in p}
        isolated = set(np.unique(cells)) - {0} - touched
        touching_fields += bool(pairs)
        isolated_fields += bool(isolated)
    assert touching_fields >= 4 and isolated_fields >= 4


def test_nucleus_is_learnable_from_actin_but_not_trivially():
    def features(actin):
        blurs = [ndi.gaussian_filter(actin, s) for s in (2.0, 8.0)]
        return np.stack([b.ravel() for b in blurs] + [np.ones(actin.size)], 1)

    train = [synth_field((192, 192), seed=s) for s in range(4)]
    test = [synth_field((192, 192), seed=100 + s) for s in range(3)]
    x = np.concatenate([features(f.image[0]) for f in train])
    y = np.concatenate([f.image[2].ravel() for f in train])
    w = np.linalg.solve(x.T @ x + 1e-3 * np.eye(x.shape[1]), x.T @ y)
    r = [np.corrcoef(features(f.image[0]) @ w, f.image[2].ravel())[0, 1] for f in test]
    assert 0.25 < np.mean(r) < 0.8
    # while the target itself is well explained by the nuclei masks (learnable in principle)
    oracle = [np.corrcoef(ndi.gaussian_filter((f.nuclei > 0).astype(float), 1.0).ravel(),
                          f.image[2].ravel())[0, 1] for f in test]
    assert np.mean(oracle) > 0.9


def test_3d_cells_stand_on_glass_with_basal_fibres(field3d):
    f = field3d
    occupied = np.flatnonzero((f.cells > 0).any(axis=(1, 2)))
    base = occupied[0]
    assert base <= SHAPE_3D[0] // 3
    # cells are flattened: 6-12 um tall, much longer than tall
    heights = [(r.bbox[3] - r.bbox[0]) * f.pixel_size_um[0] for r in regionprops(f.cells)]
    assert max(heights) <= 13 and min(heights) >= 1
    # the stress fibres are in the bottom planes: actin and its fine texture peak at the base
    actin = f.image[0]
    texture = actin - ndi.gaussian_filter(actin, (0, 3, 3))
    foot = (f.cells > 0).any(axis=0)
    assert int(np.argmax([actin[z][foot].mean() for z in occupied[:6]])) <= 1
    assert int(np.argmax([texture[z][foot].std() for z in occupied[:6]])) <= 1
    # nuclei float above the glass inside their cells
    assert np.flatnonzero((f.nuclei > 0).any(axis=(1, 2)))[0] > base


def test_noise_and_blur_parameters():
    clean = synth_field((96, 96), seed=4, noise=0.0)
    noisy = synth_field((96, 96), seed=4, noise=0.05)
    diff = (noisy.image - clean.image).std()
    assert 0.02 < diff < 0.06
    sharp = synth_field((96, 96), seed=4, noise=0.0, blur_sigma_px=0.0)
    blurred = synth_field((96, 96), seed=4, noise=0.0, blur_sigma_px=2.0)
    assert np.abs(np.diff(sharp.image[1], axis=1)).mean() > np.abs(np.diff(blurred.image[1], axis=1)).mean()


def test_edge_cases_and_errors():
    empty = synth_field((64, 64), n_cells=0, seed=0)
    assert empty.cells.max() == 0 and empty.nuclei.max() == 0 and np.isfinite(empty.image).all()
    one = synth_field((64, 64), n_cells=1, seed=0, organelles=True)
    assert one.cells.max() == 1
    for bad in [dict(shape=(64,)), dict(shape=(4, 4)), dict(shape=(2, 3, 64, 64)),
                dict(noise=-1.0), dict(pixel_size_um=0.0), dict(n_cells=-2)]:
        kwargs = dict(shape=(64, 64)) | bad
        with pytest.raises(CytogenError):
            synth_field(**kwargs)


def test_speed_of_default_fields():
    synth_field((64, 64), seed=0)
    t0 = time.perf_counter()
    synth_field((256, 256), seed=1)
    t2d = time.perf_counter() - t0
    t0 = time.perf_counter()
    synth_field((32, 128, 128), seed=1)
    t3d = time.perf_counter() - t0
    assert t2d < 1.0 and t3d < 5.0  # targets 0.2 s and 2 s, with slack for busy machines


def _read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_write_synthetic_dataset(tmp_path):
    from cytogen.io.images import read_image

    out = tmp_path / "data"
    manifest = write_synthetic_dataset(out, n_fields=5, shape=(64, 64), organelles=True, seed=3)
    assert manifest == out / "manifest.csv"
    rows = _read_csv(manifest)
    assert list(rows[0]) == ["name", "source", "target", "mask", "split", "pixel_size_um", "group"]
    assert [r["name"] for r in rows] == [f"field_{i:03d}" for i in range(5)]
    splits = [r["split"] for r in rows]
    assert set(splits) <= {"train", "val", "test"} and "val" in splits and "test" in splits
    assert "train" in splits
    for r in rows:
        assert r["source"] == f"images/{r['name']}.tif#c=0"
        assert r["target"] == f"images/{r['name']}.tif#c=2"
        assert r["mask"] == f"masks/{r['name']}_nuclei.tif"
        assert float(r["pixel_size_um"]) == 0.5 and r["group"] == ""
        img = read_image(out / "images" / f"{r['name']}.tif")
        assert img.data.shape == (4, 64, 64) and img.axes == "CYX"
        assert img.channel_names == ["actin", "membrane", "nucleus", "organelles"]
        assert img.pixel_size_um == (0.5, 0.5)
        masks = {k: read_image(out / "masks" / f"{r['name']}_{k}.tif").data[0]
                 for k in ("cells", "nuclei", "organelles")}
        assert masks["nuclei"].shape == (64, 64) and np.issubdtype(masks["nuclei"].dtype, np.integer)
        nuc = masks["nuclei"] > 0
        np.testing.assert_array_equal(masks["cells"][nuc], masks["nuclei"][nuc])
        if nuc.any():
            assert img.data[2][nuc].mean() > 3 * img.data[2][masks["cells"] == 0].mean()
    assert "seed 3" in (out / "README.txt").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no temporary folder left

    # reproducible: same seed -> same splits and pixels
    again = write_synthetic_dataset(tmp_path / "again", n_fields=5, shape=(64, 64), organelles=True,
                                    seed=3)
    assert [r["split"] for r in _read_csv(again)] == splits
    np.testing.assert_array_equal(read_image(out / "images" / "field_004.tif").data,
                                  read_image(tmp_path / "again" / "images" / "field_004.tif").data)

    # refuses a non-empty folder and leaves it untouched
    with pytest.raises(CytogenError, match="choose a new folder or delete it"):
        write_synthetic_dataset(out, n_fields=2, shape=(64, 64))
    assert len(_read_csv(manifest)) == 5


def test_write_synthetic_dataset_3d_into_empty_folder(tmp_path, capsys):
    from cytogen.io.images import read_image

    out = tmp_path / "d3"
    out.mkdir()
    manifest = write_synthetic_dataset(out, n_fields=3, shape=(8, 48, 48), seed=0, progress=True)
    rows = _read_csv(manifest)
    assert sorted(r["split"] for r in rows) == ["test", "train", "val"]
    img = read_image(out / "images" / "field_000.tif")
    assert img.axes == "CZYX" and img.data.shape == (3, 8, 48, 48)
    assert img.pixel_size_um == (1.0, 0.5, 0.5)
    cells = read_image(out / "masks" / "field_000_cells.tif")
    assert cells.data.shape[-3:] == (8, 48, 48)
    assert not (out / "masks" / "field_000_organelles.tif").exists()
    assert "3/3" in capsys.readouterr().err


def test_write_synthetic_dataset_crash_leaves_nothing(tmp_path, monkeypatch):
    """An error half-way (here in the third field) leaves no dataset folder and no temporary one."""
    import cytogen.synth.cells as cells_mod

    real = cells_mod.synth_field
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(cells_mod, "synth_field", failing)
    with pytest.raises(KeyboardInterrupt):
        write_synthetic_dataset(tmp_path / "data", n_fields=4, shape=(48, 48), seed=0)
    assert len(calls) == 3 and list(tmp_path.iterdir()) == []


# ------------------------------------------------------------ segmentation data (issue 12)
def _touching_fraction(labels: np.ndarray) -> float:
    """Fraction of cells that touch another cell."""
    pairs = _adjacent_pairs(labels)
    touching = {a for p in pairs for a in p}
    n = len(np.unique(labels[labels > 0]))
    return len(touching) / n if n else 0.0


def test_segment_csv_columns_and_paths_resolve(tmp_path):
    from cytogen.io.images import read_image, read_spec

    out = tmp_path / "data"
    manifest = write_synthetic_dataset(out, n_fields=3, shape=(64, 64), seed=1)
    seg = _read_csv(out / "segment.csv")
    assert list(seg[0]) == ["name", "source", "nuclei", "cells", "split", "pixel_size_um"]
    assert [r["name"] for r in seg] == [r["name"] for r in _read_csv(manifest)]
    assert [r["split"] for r in seg] == [r["split"] for r in _read_csv(manifest)]
    for r in seg:
        img = read_image(out / "images" / f"{r['name']}.tif")
        actin, nuclei = read_spec(r["source"], out), read_spec(r["nuclei"], out)
        np.testing.assert_array_equal(actin.data[0], img.data[img.channel_names.index("actin")])
        np.testing.assert_array_equal(nuclei.data[0], img.data[img.channel_names.index("nucleus")])
        cells = read_image(out / r["cells"]).data[0]
        nuc = read_image(out / "masks" / f"{r['name']}_nuclei.tif").data[0]
        assert cells.max() >= 1 and np.array_equal(cells[nuc > 0], nuc[nuc > 0])  # whole-cell labels
        assert float(r["pixel_size_um"]) == 0.5


def test_dataset_defaults_unchanged_by_the_new_options(tmp_path):
    from cytogen.io.images import read_image

    plain = tmp_path / "plain"
    write_synthetic_dataset(plain, n_fields=3, shape=(64, 64), seed=4)
    explicit = tmp_path / "explicit"
    write_synthetic_dataset(explicit, n_fields=3, shape=(64, 64), seed=4, pixel_size_um=0.5,
                            cells_per_field=None, crowded_fraction=0.0)
    for i in range(3):
        f = synth_field((64, 64), seed=np.random.default_rng([4, i]))  # what the dataset always held
        for folder in (plain, explicit):
            np.testing.assert_array_equal(read_image(folder / "images" / f"field_{i:03d}.tif").data, f.image)
            np.testing.assert_array_equal(read_image(folder / "masks" / f"field_{i:03d}_cells.tif").data[0],
                                          f.cells)
    for name in ("manifest.csv", "segment.csv", "README.txt"):  # (TIFFs carry a write timestamp)
        assert (plain / name).read_bytes() == (explicit / name).read_bytes()
    assert "Crowded" not in (plain / "README.txt").read_text()


def test_crowded_fields_hold_more_and_more_touching_cells(tmp_path):
    from cytogen.io.images import read_image

    out = tmp_path / "crowd"
    write_synthetic_dataset(out, n_fields=6, shape=(128, 128), seed=2, crowded_fraction=0.34)
    rows = _read_csv(out / "segment.csv")
    line = [t for t in (out / "README.txt").read_text().splitlines() if t.startswith("Crowded")][0]
    crowded = {r["name"] for r in rows if r["name"] in line}
    # one crowded field per split (val 1, test 1, train round(0.34 * 4) = 1)
    assert len(crowded) == 3 and {r["split"] for r in rows if r["name"] in crowded} == {"train", "val", "test"}
    counts, touch = {}, {}
    for r in rows:
        cells = read_image(out / r["cells"]).data[0]
        counts[r["name"]] = len(np.unique(cells[cells > 0])) / cells.size
        touch[r["name"]] = _touching_fraction(cells)
    dense = [counts[n] for n in crowded]
    sparse = [counts[n] for n in counts if n not in crowded]
    assert min(dense) > 1.5 * max(sparse)
    assert np.mean([touch[n] for n in crowded]) > np.mean([touch[n] for n in touch if n not in crowded])


def test_dataset_pixel_size_and_cells_per_field_via_cli(tmp_path):
    from cytogen.cli import main
    from cytogen.io.images import read_image

    out = tmp_path / "cli"
    assert main(["synthesize", "cells", "--out", str(out), "--n-fields", "3", "--size", "96",
                 "--pixel-size-um", "1.0", "--cells-per-field", "4", "--crowded-fraction", "0.5"]) == 0
    rows = _read_csv(out / "segment.csv")
    assert all(float(r["pixel_size_um"]) == 1.0 for r in rows)
    n = [int(np.unique(read_image(out / r["cells"]).data[0]).size - 1) for r in rows]
    assert read_image(out / "images" / "field_000.tif").pixel_size_um == (1.0, 1.0)
    # every split holds one field here, so all are crowded: 2.5 x 4 = 10 wanted, more than 4
    assert "Crowded" in (out / "README.txt").read_text() and all(6 <= k <= 10 for k in n)
    assert main(["synthesize", "cells", "--out", str(tmp_path / "bad"), "--crowded-fraction", "1.5"]) == 2
