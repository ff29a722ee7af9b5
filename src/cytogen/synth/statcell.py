"""Synthetic control fields for the Statistical Cell, with known answers (2D and 3D).

Donovan-Maiye et al. (2022) validate the coupling statistic on *control structures* whose relation
to the reference channels is known: a blank channel, a copy of the membrane, a copy of the DNA and
noise inside the cell. :func:`write_statcell_dataset` writes such a set from
:func:`cytogen.synth.cells.synth_field` fields (membrane and nucleus channels with exact cell and
nucleus labels), where every field carries ONE target structure; the fields cycle through the
requested structures:

========================  =================================================================  ==========================
structure                 target channel                                                     expected coupling
========================  =================================================================  ==========================
``blank``                 exact zeros (no imaging noise floor either)                        neither
``membrane_copy``         the field's membrane image, value for value                        membrane, not nucleus
``dna_copy``              the field's nucleus (DNA) image, value for value                   nucleus, not membrane
``noise``                 i.i.d. uniform [0, 1) noise inside the cells, exact zeros outside  weak (cell support only)
``nucleoli``              only the nucleoli (blobs inside the nuclei), imaged                nucleus > cytoplasmic's
``cytoplasmic``           only the cytoplasmic organelles (outside the nuclei), imaged       less nucleus than nucleoli
========================  =================================================================  ==========================

"Imaged" means the clean render goes through the same PSF blur, gain, background offset and
shot/read noise as the membrane and DNA channels.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np

from cytogen.errors import CytogenError
from cytogen.io.atomic import atomic_dir
from cytogen.synth.cells import _imaging, synth_field

STRUCTURES = ("blank", "membrane_copy", "dna_copy", "noise", "nucleoli", "cytoplasmic")
CELL_AREA_UM2 = 1225.0  # synth_field's default density (one cell per 70 x 70 px at 0.5 um)
FIELDS_COLUMNS = ("name", "dna", "target", "structure", "membrane", "cells", "nuclei", "split",
                  "pixel_size_um", "condition")

__all__ = ["FIELDS_COLUMNS", "STRUCTURES", "render_target", "statcell_splits", "write_statcell_dataset"]


def _check_structures(structures) -> tuple[str, ...]:
    if isinstance(structures, str):
        structures = [s for s in structures.split(",")]
    out = tuple(str(s).strip() for s in structures if str(s).strip())
    unknown = [s for s in out if s not in STRUCTURES]
    if not out or unknown:
        raise CytogenError(f"unknown control structure(s) {unknown or list(structures)}; "
                           f"choose from {', '.join(STRUCTURES)}")
    if len(set(out)) != len(out):
        raise CytogenError(f"structures {list(out)} name one structure twice; give each once")
    return out


def render_target(structure: str, membrane: np.ndarray, dna: np.ndarray, cells: np.ndarray,
                  nuclei: np.ndarray, organelles: np.ndarray, sigma: tuple[float, ...], noise: float,
                  rng: np.random.Generator) -> np.ndarray:
    """The target channel of one control field (float32, the field's spatial shape).

    Parameters
    ----------
    structure
        One of :data:`STRUCTURES`.
    membrane, dna
        The field's imaged membrane and nucleus channels.
    cells, nuclei, organelles
        Its instance labels (``organelles``: cytoplasmic organelles and nucleoli together; a
        nucleolus is an organelle label inside a nucleus).
    sigma, noise
        PSF sigma per axis (pixels) and camera noise, as used for the other channels.
    rng
        Random generator of this target (amplitudes, noise).
    """
    if structure == "blank":
        return np.zeros(cells.shape, np.float32)
    if structure == "membrane_copy":
        return membrane.astype(np.float32, copy=True)
    if structure == "dna_copy":
        return dna.astype(np.float32, copy=True)
    if structure == "noise":
        return (rng.random(cells.shape, dtype=np.float32) * (cells > 0)).astype(np.float32)
    if structure in ("nucleoli", "cytoplasmic"):
        inside = nuclei > 0
        keep = (organelles > 0) & (inside if structure == "nucleoli" else ~inside)
        # blobs of 1-2 px radius lose about 2/3 of their peak to the PSF: this gain brings the
        # imaged peaks near 1, like the membrane and DNA channels
        amp = rng.uniform(1.5, 2.5, int(organelles.max()) + 1).astype(np.float32)
        clean = np.where(keep, amp[organelles], np.float32(0)).astype(np.float32)
        return _imaging(clean, sigma, noise, rng)
    raise CytogenError(f"unknown control structure {structure!r}; choose from {', '.join(STRUCTURES)}")


def statcell_splits(structure_of_field: list[str], val_fraction: float, test_fraction: float,
                    seed: int) -> list[str]:
    """train/val/test per field, drawn within each structure so every split holds every structure.

    A structure with ``k`` fields gets ``max(1, round(k * fraction))`` val and test fields (when the
    fraction is > 0) and at least one training field; CytogenError if ``k`` is too small for that.
    """
    splits = ["train"] * len(structure_of_field)
    for j, s in enumerate(dict.fromkeys(structure_of_field)):
        idx = [i for i, t in enumerate(structure_of_field) if t == s]
        k = len(idx)
        n_val = max(1, int(round(k * val_fraction))) if val_fraction > 0 else 0
        n_test = max(1, int(round(k * test_fraction))) if test_fraction > 0 else 0
        if n_val + n_test > k - 1:
            need = 1 + (val_fraction > 0) + (test_fraction > 0)
            raise CytogenError(
                f"structure {s!r} gets only {k} field(s), too few for a train"
                f"{'/val' if val_fraction > 0 else ''}{'/test' if test_fraction > 0 else ''} split "
                f"with every structure in every split; give n_fields >= {need} x the number of "
                f"structures, or set val_fraction/test_fraction to 0")
        order = np.random.default_rng([int(seed), 11, j]).permutation(idx)
        for i in order[:n_val]:
            splits[int(i)] = "val"
        for i in order[n_val:n_val + n_test]:
            splits[int(i)] = "test"
    return splits


def _write(path: Path, data: np.ndarray, vox: tuple[float, ...], name: str) -> str:
    from cytogen.io.images import Image, write_image

    axes = "CYX" if data.ndim == 2 else "CZYX"
    write_image(path, Image(data=data[None], axes=axes, pixel_size_um=vox, channel_names=[name]))
    return f"{path.parent.name}/{path.name}"


def write_statcell_dataset(
    out: str | Path,
    *,
    n_fields: int = 18,
    shape: tuple[int, ...] = (256, 256),
    structures=STRUCTURES,
    seed: int = 0,
    pixel_size_um: float = 1.0,
    cells_per_field: int | None = None,
    noise: float = 0.03,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    progress: bool = True,
) -> Path:
    """Write synthetic control fields and their FIELDS.csv for ``cytogen cells extract``.

    Field ``i`` is ``synth_field(shape, organelles=True, seed=default_rng([seed, i]))`` and carries
    structure ``structures[i % len(structures)]`` (see the module docstring for what each target
    channel holds; the layout of field ``i`` does not depend on the structures asked for).

    Layout of ``out``: ``images/<name>_membrane.tif``, ``images/<name>_dna.tif``,
    ``images/<name>_target.tif`` (one-channel OME-TIFFs, float32, voxel size in the metadata),
    ``masks/<name>_cells.tif``, ``masks/<name>_nuclei.tif`` (int32 instance labels; nucleus ``i``
    lies in cell ``i``), ``masks/<name>_organelles.tif`` (cytoplasmic organelles and nucleoli, for
    checks; not listed in FIELDS.csv), ``FIELDS.csv`` and ``README.txt``.

    FIELDS.csv columns: :data:`FIELDS_COLUMNS` (``name, dna, target, structure, membrane, cells,
    nuclei, split, pixel_size_um, condition``; paths relative to the CSV; ``pixel_size_um`` is the
    in-plane size; ``condition`` is a metadata column, ``"a"``/``"b"`` alternating over the fields
    of each structure, for pass-through checks). Splits are by field, drawn within each structure.

    Parameters
    ----------
    out
        New (or empty) folder; built next to itself and renamed into place at the end
        (:func:`cytogen.io.atomic.atomic_dir`), never half-written.
    n_fields
        Number of fields (at least 3 per structure with the default val/test fractions).
    shape
        ``(Y, X)`` or ``(Z, Y, X)``.
    structures
        Control structures (names from :data:`STRUCTURES`, a sequence or a comma-separated string).
    seed
        Base seed; the same seed gives the same files.
    pixel_size_um
        In-plane pixel size; cells are 20-45 um long, so at the default 1.0 they fit 64 x 64 crops.
    cells_per_field
        Cells wanted per field (fewer when crowded); default one per 1225 um^2 of field.
    noise
        Camera noise of the imaged channels (0: clean images).
    val_fraction, test_fraction
        Fractions of each structure's fields in val and test.
    progress
        Print a progress line to stderr.

    Returns
    -------
    Path
        ``out/FIELDS.csv``.

    Raises
    ------
    CytogenError
        If ``out`` exists and is not an empty folder, or an argument is invalid.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CytogenError(f"output folder {out} already exists and is not empty; "
                           "choose a new folder or delete it")
    structures = _check_structures(structures)
    if int(n_fields) < 1:
        raise CytogenError(f"n_fields must be >= 1, got {n_fields}")
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise CytogenError("val_fraction and test_fraction must be in [0, 1) with a sum below 1, "
                           f"got {val_fraction} and {test_fraction}")
    if not pixel_size_um > 0:
        raise CytogenError(f"pixel_size_um must be > 0, got {pixel_size_um}")
    shape = tuple(int(s) for s in shape)
    if cells_per_field is None:
        cells_per_field = max(1, int(round(shape[-2] * shape[-1] * pixel_size_um ** 2 / CELL_AREA_UM2)))
    n_fields = int(n_fields)
    kinds = [structures[i % len(structures)] for i in range(n_fields)]
    splits = statcell_splits(kinds, val_fraction, test_fraction, int(seed))
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out) as tmp:
        (tmp / "images").mkdir(parents=True)
        (tmp / "masks").mkdir()
        rows, seen = [], {s: 0 for s in structures}
        vox: tuple[float, ...] = ()
        for i, kind in enumerate(kinds):
            f = synth_field(shape, n_cells=cells_per_field, organelles=True, seed=np.random.default_rng(
                [int(seed), i]), pixel_size_um=pixel_size_um, noise=noise)
            vox = f.pixel_size_um
            sigma = (1.0,) * 2 if len(shape) == 2 else (3.0 * vox[-1] / vox[0], 1.0, 1.0)
            names = f.channel_names
            membrane, dna = f.image[names.index("membrane")], f.image[names.index("nucleus")]
            target = render_target(kind, membrane, dna, f.cells, f.nuclei, f.organelles, sigma, noise,
                                   np.random.default_rng([int(seed), i, 1]))
            name = f"field_{i:03d}"
            img, msk = tmp / "images", tmp / "masks"
            row = {"name": name,
                   "dna": _write(img / f"{name}_dna.tif", dna, vox, "dna"),
                   "target": _write(img / f"{name}_target.tif", target, vox, kind),
                   "structure": kind,
                   "membrane": _write(img / f"{name}_membrane.tif", membrane, vox, "membrane"),
                   "cells": _write(msk / f"{name}_cells.tif", f.cells.astype(np.int32), vox, "cells"),
                   "nuclei": _write(msk / f"{name}_nuclei.tif", f.nuclei.astype(np.int32), vox, "nuclei"),
                   "split": splits[i], "pixel_size_um": f"{vox[-1]:g}",
                   "condition": "ab"[seen[kind] % 2]}
            _write(msk / f"{name}_organelles.tif", f.organelles.astype(np.int32), vox, "organelles")
            seen[kind] += 1
            rows.append(row)
            if progress:
                print(f"\rstatcell control fields: {i + 1}/{n_fields}", end="", file=sys.stderr, flush=True)
        if progress:
            print(file=sys.stderr, flush=True)
        with (tmp / "FIELDS.csv").open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(FIELDS_COLUMNS))
            writer.writeheader()
            writer.writerows(rows)
        (tmp / "README.txt").write_text(
            f"Synthetic control fields for the Statistical Cell (cytogen.synth.statcell): {n_fields} "
            f"fields of shape {shape} (seed {seed}, voxel size {vox} um), about {cells_per_field} "
            f"cells each. Each field's target channel is one control structure, cycling through "
            f"{', '.join(structures)}: blank = exact zeros; membrane_copy / dna_copy = the field's "
            f"membrane / DNA image value for value; noise = i.i.d. uniform noise inside the cells, "
            f"zeros outside; nucleoli = only the nucleoli (inside nuclei), imaged; cytoplasmic = only "
            f"the cytoplasmic organelles (outside nuclei), imaged. FIELDS.csv lists every field for "
            f"`cytogen cells extract --data FIELDS.csv --out CELLS`; masks/*_organelles.tif holds "
            f"all organelle and nucleolus labels (a nucleolus is a label inside a nucleus).\n")
    return out / "FIELDS.csv"
