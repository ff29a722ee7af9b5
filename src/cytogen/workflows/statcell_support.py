"""Helpers of :mod:`cytogen.workflows.statcell`: loading and checking models against a cell set,
output folders, and the per-feature comparison and latent regression of ``statcell features``.

The analyses of :mod:`cytogen.workflows.statcell_stats` may use them too.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from cytogen.errors import CytogenError
from cytogen.evaluate import latent
from cytogen.io.atomic import atomic_file
from cytogen.report.html import Section, write_report
from cytogen.workflows.evaluate import write_json

# ---------------------------------------------------------------------------------------------
# models, cell sets, output folders
# ---------------------------------------------------------------------------------------------
def say(msg: str) -> None:
    print(f"[statcell] {msg}", file=sys.stderr, flush=True)


def check_out(out: str | Path) -> Path:
    out = Path(out)
    if out.is_file() or (out.is_dir() and any(out.iterdir())):
        raise CytogenError(f"{out}: already exists and is not empty; give a new --out folder "
                           "(results are never written over)")
    return out


def load_model(folder: str | Path, kind: str):
    from cytogen.predict.model_folder import load_statcell_folder

    return load_statcell_folder(folder, kind=kind)


def crop_size_of(model) -> tuple[int, ...]:
    size = model.meta.get("crop_size") or model.meta["architecture"]["kwargs"]["size"]
    return tuple(int(s) for s in size)


def _same_pixel_size(a, b) -> bool:
    """Pixel sizes agree to 1 % (or one of them is unknown)."""
    if a is None or b is None:
        return True
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=0.01))


def check_pair(ref, tgt) -> None:
    """Reference and target models must come from the same kind of cell set (crop size, channels,
    pixel size); a CytogenError names both folders otherwise."""
    if tgt is None:
        return
    same = (crop_size_of(ref) == crop_size_of(tgt)
            and list(ref.meta.get("channels") or []) == list(tgt.meta.get("channels") or [])
            and _same_pixel_size(ref.meta.get("pixel_size_um"), tgt.meta.get("pixel_size_um")))
    if not same:
        raise CytogenError(
            f"{ref.folder} (crop {crop_size_of(ref)}, channels {ref.meta.get('channels')}, pixel size "
            f"{ref.meta.get('pixel_size_um')} um) and {tgt.folder} (crop {crop_size_of(tgt)}, channels "
            f"{tgt.meta.get('channels')}, pixel size {tgt.meta.get('pixel_size_um')} um) were trained on "
            "different cell sets; give a reference and a target model of one set")


def check_cells(cs, *models) -> None:
    """Each model must fit the cell set: crop size, channel names and pixel size of the crops."""
    names_ref = [cs.channels[i] for i in cs.reference_channels]
    for m in models:
        if m is None:
            continue
        chans = list(m.meta.get("channels") or [])
        if (crop_size_of(m) != cs.size or (chans and chans not in (cs.channels, names_ref))
                or not _same_pixel_size(m.meta.get("pixel_size_um"), cs.pixel_size_um)):
            raise CytogenError(
                f"{m.folder}: trained on crops {crop_size_of(m)} with channels {chans} at "
                f"{m.meta.get('pixel_size_um')} um, but {cs.root} has crops {cs.size} with channels "
                f"{cs.channels} at {cs.pixel_size_um} um; use a model trained on this cell set (or cells "
                "extracted the same way)")


def open_cells_and_models(data: str | Path, reference: str | Path, target: str | Path | None = None):
    """``(cellset, reference model, target model or None)``, checked to belong together
    (:func:`check_pair`, :func:`check_cells`)."""
    from cytogen.data.cellset import read_cellset

    cs = read_cellset(data)
    ref = load_model(reference, "statcell_reference")
    tgt = load_model(target, "statcell_target") if target is not None else None
    check_pair(ref, tgt)
    check_cells(cs, ref, tgt)
    return cs, ref, tgt


def cell_indices(cs, split: str | None) -> np.ndarray:
    idx = cs.indices(split)
    if len(idx) == 0:
        splits = sorted({r.get("split", "") for r in cs.rows})
        raise CytogenError(f"{cs.root / 'cells.csv'}: no cells in split {split!r}; splits present: {splits}")
    return idx


def kl_mean(model) -> np.ndarray:
    kl = model.meta.get("kl_per_dim")
    return np.full(model.latent_dim, np.nan) if kl is None else np.asarray(kl, dtype=np.float64)


def fmt(v: float) -> str:
    return "nan" if not np.isfinite(v) else f"{float(v):.7g}"


def save_npy(path: Path, a: np.ndarray) -> None:
    with atomic_file(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, np.asarray(a, dtype=np.float32))


def finish(tmp: Path, summary: dict, title: str, sections: list[Section], subtitle: str) -> None:
    write_json(tmp / "summary.json", summary)
    write_report(tmp / "report.html", title, sections, subtitle=subtitle)


def structure_id(tgt, structure: str | None) -> int:
    if structure not in tgt.structures:
        raise CytogenError(f"structure {structure!r} is not one the target model {tgt.folder} knows; "
                           f"choose one of {list(tgt.structures)} (--structure)")
    return list(tgt.structures).index(structure)


# ---------------------------------------------------------------------------------------------
# features: measure, compare, regress
# ---------------------------------------------------------------------------------------------
def measure(crops, names: tuple[str, ...], pixel_size_um, what: str) -> np.ndarray:
    """Features ``(n, len(names))`` of crops (a sequence of ``(C, *size)``), with progress."""
    from cytogen.evaluate.features import crop_features

    out = np.full((len(crops), len(names)), np.nan)
    for k in range(len(crops)):
        f = crop_features(np.asarray(crops[k], np.float32), pixel_size_um)
        out[k] = [f[n] for n in names]
        if (k + 1) % 250 == 0 or k + 1 == len(crops):
            say(f"features of {what} cells: {k + 1}/{len(crops)}")
    return out


def compare_features(names, real: np.ndarray, gen: np.ndarray, units: dict) -> list[dict[str, Any]]:
    from scipy.stats import ks_2samp

    rows = []
    for j, n_ in enumerate(names):
        a, b = real[:, j][np.isfinite(real[:, j])], gen[:, j][np.isfinite(gen[:, j])]
        ks = ks_2samp(a, b) if len(a) and len(b) else None
        rows.append({"feature": n_, "unit": units.get(n_, ""), "n_real": int(len(a)), "n_generated": int(len(b)),
                     "real_mean": float(a.mean()) if len(a) else float("nan"),
                     "generated_mean": float(b.mean()) if len(b) else float("nan"),
                     "real_sd": float(a.std()) if len(a) else float("nan"),
                     "generated_sd": float(b.std()) if len(b) else float("nan"),
                     "ks": float(ks.statistic) if ks else float("nan"),
                     "ks_pvalue": float(ks.pvalue) if ks else float("nan")})
    return rows


def latent_regression(ref, zr: np.ndarray, real: np.ndarray, names, kl_threshold: float, seed: int) -> dict[str, Any]:
    """The paper's S8: informative z_r dims -> top-5 PCs of the z-scored real features, held-out R^2."""
    kl = kl_mean(ref)
    notes = []
    if np.isfinite(kl).any():
        dims = latent.informative_dims(kl, kl_threshold)
        if len(dims) == 0:
            dims = np.argsort(-np.nan_to_num(kl, nan=-np.inf), kind="stable")[:5]
            notes.append(f"no dimension has mean KL > {kl_threshold:g}; used the top {len(dims)} by KL")
    else:
        dims = latent.rank_by_mad(zr)[0][:5]
        notes.append("the model folder has no kl_per_dim; used the top 5 dimensions by MAD")
    ok = np.isfinite(real).all(axis=1)
    f = real[ok]
    sd = f.std(axis=0) if len(f) else np.zeros(len(names))
    keep = sd > 0
    if (~keep).any():
        notes.append(f"constant features left out of the PCA: {[n for n, k in zip(names, keep) if not k]}")
    if ok.sum() < 10 or keep.sum() == 0:
        notes.append(f"too few cells with all features ({int(ok.sum())}) for the regression")
        return {"dims": [int(d) for d in dims], "notes": notes, "rows": []}
    fz = (f[:, keep] - f[:, keep].mean(axis=0)) / sd[keep]
    n_pc = int(min(5, fz.shape[1], len(fz) - 1))
    mean, comps, ratio = latent.pca_fit(fz, n_pc)
    pcs = latent.pca_transform(fz, mean, comps)
    r2 = latent.regression_r2(zr[ok][:, dims], pcs, holdout=0.1, seed=seed)
    kept = [n for n, k in zip(names, keep) if k]
    rows = [{"pc": f"PC{i + 1}", "explained_variance_ratio": float(ratio[i]), "r2_heldout": float(r2[i]),
             "n_dims": int(len(dims)), "n_cells": int(ok.sum()),
             **{f"loading_{n}": float(comps[i, j]) for j, n in enumerate(kept)}} for i in range(n_pc)]
    return {"dims": [int(d) for d in dims], "notes": notes, "rows": rows,
            "explained_total": float(ratio.sum()),
            # the paper's S8D total: sum over PCs of variance ratio x R^2 (a PC predicted worse than
            # its held-out mean, R^2 < 0, counts as explaining nothing)
            "explained_by_latent": float(np.nansum(ratio * np.clip(np.asarray(r2), 0.0, None)))}


class CropRows:
    """Lazy float32 crops of some rows of a cell set (a sequence for :func:`measure`)."""

    def __init__(self, cs, idx: np.ndarray) -> None:
        self.cs, self.idx = cs, idx

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, k: int) -> np.ndarray:
        return np.asarray(self.cs.images[int(self.idx[k])], np.float32)
