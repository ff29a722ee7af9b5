"""Synthetic fluorescence fields of adherent cells with exact instance masks (2D and 3D).

:func:`synth_field` draws a random layout of elongated cells (some touching, some isolated; see
:mod:`cytogen.synth.layouts`), renders the stains (:mod:`cytogen.synth.stains`) and images them
through a Gaussian PSF with shot and read noise. The actin channel carries the cue that links it
to the nucleus: stress fibres run along each cell's long axis and stop at a dark hole bordered by a
perinuclear ring, so predicting the nucleus channel from actin is learnable but not trivial.

:func:`write_synthetic_dataset` writes a folder of such fields as OME-TIFF images, label masks and
a manifest CSV, ready for ``cytogen train``.
"""

from __future__ import annotations

import csv
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from cytogen.errors import CytogenError
from cytogen.io.atomic import atomic_dir
from cytogen.synth import stains
from cytogen.synth.layouts import make_layout

CHANNELS = ("actin", "membrane", "nucleus")
ORGANELLE_CHANNEL = "organelles"
CELL_AREA_PX = 70 * 70  # default density: about one cell per 70 x 70 pixels of field
CROWDED_FACTOR = 2.5  # crowded fields of write_synthetic_dataset: this many times the cells

__all__ = ["CHANNELS", "SynthField", "synth_field", "write_synthetic_dataset"]


@dataclass
class SynthField:
    """One synthetic field of view.

    Attributes
    ----------
    image
        float32, ``(C, Y, X)`` or ``(C, Z, Y, X)``, roughly in ``[0, 1]`` (noise may leave it).
    channel_names
        ``["actin", "membrane", "nucleus"]`` plus ``"organelles"`` when requested.
    cells
        int32 instance labels of whole cells (0 = background).
    nuclei
        int32 labels; the nucleus of cell ``i`` has label ``i`` and lies inside it.
    organelles
        int32 labels of non-overlapping cytoplasmic organelles followed by the nucleoli, or None.
    pixel_size_um
        ``(y, x)`` or ``(z, y, x)`` in micrometres.
    """

    image: np.ndarray
    channel_names: list[str]
    cells: np.ndarray
    nuclei: np.ndarray
    organelles: np.ndarray | None
    pixel_size_um: tuple[float, ...]


def _check_args(shape, n_cells, pixel_size_um, z_step_um, noise, blur_sigma_px) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise CytogenError(f"shape must be a tuple of 2 or 3 integers, got {shape!r}") from None
    if len(shape) not in (2, 3) or min(shape) < 1 or min(shape[-2:]) < 16:
        raise CytogenError(f"shape must be (Y, X) or (Z, Y, X) with Y, X >= 16, got {shape}")
    if n_cells is not None and int(n_cells) < 0:
        raise CytogenError(f"n_cells must be >= 0, got {n_cells}")
    for name, val in (("pixel_size_um", pixel_size_um), ("z_step_um", z_step_um)):
        if not val > 0:
            raise CytogenError(f"{name} must be > 0, got {val}")
    for name, val in (("noise", noise), ("blur_sigma_px", blur_sigma_px)):
        if not val >= 0:
            raise CytogenError(f"{name} must be >= 0, got {val}")
    return shape


def _imaging(clean: np.ndarray, sigma: tuple[float, ...], noise: float,
             rng: np.random.Generator) -> np.ndarray:
    """Blur with the PSF, apply field gain and background offset, add shot and read noise."""
    img = ndi.gaussian_filter(clean, sigma) if max(sigma) > 0 else clean.copy()
    img *= np.float32(rng.uniform(0.8, 1.1))
    img += np.float32(rng.uniform(0.02, 0.06))
    if noise > 0:
        std = np.float32(noise) * np.sqrt(np.float32(0.25) + 0.75 * np.clip(img, 0, None))
        img += std * rng.standard_normal(img.shape, dtype=np.float32)
    return img.astype(np.float32, copy=False)


def synth_field(
    shape: tuple[int, ...] = (256, 256),
    *,
    n_cells: int | None = None,
    organelles: bool = False,
    seed: int | np.random.Generator = 0,
    pixel_size_um: float = 0.5,
    z_step_um: float = 1.0,
    noise: float = 0.03,
    blur_sigma_px: float = 1.0,
) -> SynthField:
    """Generate one synthetic multichannel field with exact cell, nucleus and organelle masks.

    Parameters
    ----------
    shape
        ``(Y, X)`` for a 2D field, ``(Z, Y, X)`` for a 3D stack.
    n_cells
        Number of cells wanted (fewer when the field is too crowded). Default: one per 70 x 70
        pixels of in-plane area (at least one).
    organelles
        Add a 4th channel ``"organelles"`` and fill :attr:`SynthField.organelles`.
    seed
        Integer seed or a ``numpy.random.Generator``; the same integer always gives the same field.
    pixel_size_um, z_step_um
        In-plane pixel size and z step; cells are 20-45 um long whatever the sampling.
    noise
        Standard deviation of the camera noise at full brightness (0 for a clean image).
    blur_sigma_px
        In-plane PSF sigma in pixels; in 3D the z sigma is three times wider in micrometres.

    Returns
    -------
    SynthField
    """
    shape = _check_args(shape, n_cells, pixel_size_um, z_step_um, noise, blur_sigma_px)
    root = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    r_layout, r_nuc, r_actin, r_mem, r_org, r_noise = root.spawn(6)
    if n_cells is None:
        n_cells = max(1, int(round(shape[-2] * shape[-1] / CELL_AREA_PX)))
    px, dz = float(pixel_size_um), float(z_step_um)
    vox = (px, px) if len(shape) == 2 else (dz, px, px)
    layout = make_layout(shape, int(n_cells), r_layout, px, dz)

    bnd_cells = stains.boundaries(layout.cells)
    bnd_actin = bnd_cells if layout.glass_z is None else stains.boundaries(layout.cells, layout.glass_z)
    nucleus, nucleoli = stains.nucleus_channel(layout, r_nuc, vox)
    planes = [
        stains.actin_channel(layout, r_actin, vox, bnd_actin),
        stains.membrane_channel(layout, r_mem, bnd_cells),
        nucleus,
    ]
    names = list(CHANNELS)
    org_labels = None
    if organelles:
        org_img, org_labels = stains.organelle_channel(layout, r_org, vox, bnd_cells, nucleoli)
        planes.append(org_img)
        names.append(ORGANELLE_CHANNEL)

    sigma = (blur_sigma_px,) * 2
    if len(shape) == 3:
        sigma = (blur_sigma_px * 3.0 * px / dz, *sigma)
    noise_rngs = r_noise.spawn(len(planes))  # channel k's noise does not depend on channel count
    image = np.stack([_imaging(p.astype(np.float32), sigma, noise, r)
                      for p, r in zip(planes, noise_rngs)])
    return SynthField(image=image, channel_names=names, cells=layout.cells,
                      nuclei=layout.nuclei, organelles=org_labels, pixel_size_um=vox)


def _splits(n: int, val_fraction: float, test_fraction: float, seed: int) -> list[str]:
    n_val = int(round(n * val_fraction))
    n_test = int(round(n * test_fraction))
    if n >= 3:
        n_val = max(1, n_val) if val_fraction > 0 else 0
        n_test = max(1, n_test) if test_fraction > 0 else 0
        while n_val + n_test > n - 1:
            if n_val >= n_test and n_val > 1:
                n_val -= 1
            elif n_test > 1:
                n_test -= 1
            else:
                break
    splits = np.array(["train"] * n, dtype=object)
    order = np.random.default_rng([seed, 7]).permutation(n)
    splits[order[:n_val]] = "val"
    splits[order[n_val:n_val + n_test]] = "test"
    return list(splits)


def _write_label(path: Path, labels: np.ndarray, vox: tuple[float, ...], write_image, Image) -> None:
    axes = "CYX" if labels.ndim == 2 else "CZYX"
    write_image(path, Image(data=labels[None].astype(np.int32), axes=axes, pixel_size_um=vox,
                            channel_names=[path.stem.rsplit("_", 1)[-1]]))


def _crowded(splits: list[str], fraction: float, seed: int) -> set[int]:
    """Indices of the crowded fields: ``round(fraction x n)`` of each split (>= 1 when fraction > 0)."""
    if fraction <= 0:
        return set()
    rng = np.random.default_rng([seed, 13])
    out: set[int] = set()
    for split in sorted(set(splits)):
        idx = [i for i, s in enumerate(splits) if s == split]
        k = min(len(idx), max(1, int(round(fraction * len(idx)))))
        out.update(int(i) for i in rng.permutation(idx)[:k])
    return out


def _write_rows(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def write_synthetic_dataset(
    out: str | Path,
    *,
    n_fields: int = 24,
    shape: tuple[int, ...] = (256, 256),
    organelles: bool = False,
    seed: int = 0,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    progress: bool = False,
    pixel_size_um: float = 0.5,
    cells_per_field: int | None = None,
    crowded_fraction: float = 0.0,
) -> Path:
    """Write ``n_fields`` synthetic fields, their masks and a manifest CSV into a new folder.

    Layout of ``out``: ``images/field_000.tif`` (multichannel OME-TIFF, channels actin, membrane,
    nucleus[, organelles]), ``masks/field_000_cells.tif``, ``masks/field_000_nuclei.tif``
    [``masks/field_000_organelles.tif``], ``manifest.csv`` (columns ``name, source, target, mask,
    split, pixel_size_um, group``; source = actin channel, target = nucleus channel) and
    ``README.txt``, plus ``segment.csv``: the M.csv of ``cytogen segment cells`` (columns ``name,
    source, nuclei, cells, split, pixel_size_um``; source = actin channel, nuclei = nucleus
    channel, cells = the exact cell labels, for evaluation). The folder is built next to ``out``
    and renamed into place at the end (:func:`cytogen.io.atomic.atomic_dir`), so a crash never
    leaves a half-written dataset. Field ``i`` is ``synth_field(seed=[seed, i])``.

    Parameters
    ----------
    pixel_size_um
        In-plane pixel size; cells keep their physical size (20-45 um long).
    cells_per_field
        Cells wanted per (non-crowded) field. Default: one per 1225 um^2 (35 x 35 um) of field,
        i.e. one per 70 x 70 px at 0.5 um, the default of :func:`synth_field`.
    crowded_fraction
        Fraction of the fields drawn with 2.5 times as many cells (crowded, mostly touching
        cells; the layout places fewer when no room is left). Each split gets
        ``round(crowded_fraction x its fields)`` crowded fields, at least one when the fraction is
        above 0, chosen with the seed; ``README.txt`` lists them. With the defaults the output is
        the same as without these options.

    Returns
    -------
    Path
        Path of the manifest CSV.

    Raises
    ------
    CytogenError
        If ``out`` exists and is not an empty folder, or if the arguments are invalid.
    """
    from cytogen.io.images import Image, write_image

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CytogenError(f"output folder {out} already exists and is not empty; "
                           "choose a new folder or delete it")
    if int(n_fields) < 1:
        raise CytogenError(f"n_fields must be >= 1, got {n_fields}")
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise CytogenError("val_fraction and test_fraction must be in [0, 1) with a sum below 1, "
                           f"got {val_fraction} and {test_fraction}")
    if not (np.isfinite(pixel_size_um) and pixel_size_um > 0):
        raise CytogenError(f"pixel_size_um must be > 0, got {pixel_size_um}")
    if cells_per_field is not None and int(cells_per_field) < 1:
        raise CytogenError(f"cells_per_field must be >= 1 (or None for the default density), "
                           f"got {cells_per_field}")
    if not 0 <= crowded_fraction <= 1:
        raise CytogenError(f"crowded_fraction must be in [0, 1], got {crowded_fraction}")
    shape = _check_args(shape, cells_per_field, pixel_size_um, 1.0, 0.0, 0.0)
    if cells_per_field is None:  # one cell per 1225 um^2; at 0.5 um exactly synth_field's default
        cells_per_field = max(1, int(round(shape[-2] * shape[-1] * (pixel_size_um / 0.5) ** 2 / CELL_AREA_PX)))
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out) as tmp:
        tmp.mkdir()
        (tmp / "images").mkdir()
        (tmp / "masks").mkdir()
        splits = _splits(int(n_fields), val_fraction, test_fraction, int(seed))
        crowded = _crowded(splits, crowded_fraction, int(seed))
        rows, seg_rows = [], []
        names: list[str] = []
        vox: tuple[float, ...] = ()
        for i in range(int(n_fields)):
            n_cells = int(round(CROWDED_FACTOR * cells_per_field)) if i in crowded else int(cells_per_field)
            f = synth_field(shape, n_cells=n_cells, organelles=organelles, pixel_size_um=pixel_size_um,
                            seed=np.random.default_rng([int(seed), i]))
            name, names, vox = f"field_{i:03d}", f.channel_names, f.pixel_size_um
            axes = "CYX" if f.image.ndim == 3 else "CZYX"
            write_image(tmp / "images" / f"{name}.tif",
                        Image(data=f.image, axes=axes, pixel_size_um=vox, channel_names=names))
            masks = {"cells": f.cells, "nuclei": f.nuclei}
            if f.organelles is not None:
                masks["organelles"] = f.organelles
            for kind, lab in masks.items():
                _write_label(tmp / "masks" / f"{name}_{kind}.tif", lab, vox, write_image, Image)
            rows.append({"name": name, "source": f"images/{name}.tif#c={names.index('actin')}",
                         "target": f"images/{name}.tif#c={names.index('nucleus')}",
                         "mask": f"masks/{name}_nuclei.tif", "split": splits[i],
                         "pixel_size_um": f"{vox[-1]:g}", "group": ""})
            seg_rows.append({"name": name, "source": rows[-1]["source"], "nuclei": rows[-1]["target"],
                             "cells": f"masks/{name}_cells.tif", "split": splits[i],
                             "pixel_size_um": rows[-1]["pixel_size_um"]})
            if progress:
                print(f"\rsynthetic fields: {i + 1}/{n_fields}", end="", file=sys.stderr, flush=True)
        if progress:
            print(file=sys.stderr, flush=True)
        _write_rows(tmp / "manifest.csv", rows)
        _write_rows(tmp / "segment.csv", seg_rows)
        (tmp / "README.txt").write_text(
            f"Synthetic fluorescence dataset written by cytogen.synth.write_synthetic_dataset: "
            f"{n_fields} fields of shape {tuple(shape)} (seed {seed}) of adherent cells with exact "
            f"masks. images/field_NNN.tif are {'CYX' if len(shape) == 2 else 'CZYX'} OME-TIFFs "
            f"with channels {', '.join(names)} (c=0..{len(names) - 1}); masks/ holds int32 "
            f"instance labels of cells, nuclei{' and organelles (plus nucleoli)' if organelles else ''} "
            f"(nucleus i lies in cell i). Voxel size {vox} um ({'y, x' if len(vox) == 2 else 'z, y, x'}). "
            f"manifest.csv pairs the actin channel (source) with the nucleus channel (target) and "
            f"assigns each field to train, val or test. segment.csv is the M.csv of 'cytogen segment "
            f"cells': actin channel (source), nucleus channel (nuclei, markers by blob detection) and the "
            f"exact cell labels (cells, for 'cytogen evaluate cells').\n"
            + (f"Crowded fields ({CROWDED_FACTOR:g} x {cells_per_field} cells wanted instead of "
               f"{cells_per_field}): {', '.join(f'field_{i:03d}' for i in sorted(crowded))}.\n" if crowded else ""))
    return out / "manifest.csv"
