"""Command line of the Statistical Cell: ``cytogen cells extract`` and ``cytogen statcell <analysis>``.

Parses arguments and calls :mod:`cytogen.workflows.cells_extract`, :mod:`cytogen.workflows.statcell`
and :mod:`cytogen.workflows.statcell_stats`, nothing more (registered by :mod:`cytogen.cli`).
"""

from __future__ import annotations

import argparse
import json

from cytogen.cli import _ints


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 0.1,0.5,0.9, got {text!r}") from None


def _print(summary: dict, keys: tuple[str, ...] | None = None) -> None:
    shown = {k: summary[k] for k in keys if k in summary} if keys else summary
    print(json.dumps(shown, default=str))


def _cmd_cells_extract(a: argparse.Namespace) -> None:
    from cytogen.workflows.cells_extract import extract_cells

    size = a.size * 2 if len(a.size) == 1 else a.size  # one number: a square 2D crop
    s = extract_cells(a.data, a.out, size=size, projection=a.projection, rescale=a.rescale,
                      crop_pixel_size_um=a.crop_pixel_size_um, pixel_size_um=a.pixel_size_um,
                      min_cell_area_px=a.min_cell_area_px, progress=True)
    _print(s, ("out", "n_cells", "n_border_dropped", "n_fields", "dims", "size", "seconds"))


def _cmd_embed(a: argparse.Namespace) -> None:
    from cytogen.workflows.statcell import embed

    _print(embed(a.reference, a.data, a.out, target=a.target, split=a.split, batch_size=a.batch_size,
                 pca=a.pca))


def _cmd_sample(a: argparse.Namespace) -> None:
    from cytogen.workflows.statcell import sample

    _print(sample(a.reference, a.out, target=a.target, structure=a.structure, n=a.n, data=a.data,
                  cell=a.cell, seed=a.seed))


def _cmd_walk(a: argparse.Namespace) -> None:
    from cytogen.workflows.statcell import walk

    _print(walk(a.reference, a.data, a.out, target=a.target, n_dims=a.n_dims, steps=a.steps,
                span_sd=a.span_sd, split=a.split))


def _cmd_features(a: argparse.Namespace) -> None:
    from cytogen.workflows.statcell import features

    _print(features(a.reference, a.data, a.out, split=a.split, n_generated=a.n_generated,
                    kl_threshold=a.kl_threshold, seed=a.seed),
           ("out", "split", "n_real", "n_generated", "regression", "seconds"))


def _cmd_sweep(a: argparse.Namespace) -> None:
    from cytogen.workflows.statcell_stats import sweep

    _print(sweep(a.recipe, a.data, a.out, betas=a.betas, max_steps=a.max_steps, overrides=a.set,
                 split=a.split))


def _cmd_coupling(a: argparse.Namespace) -> None:
    from cytogen.workflows.statcell_stats import coupling

    _print(coupling(a.target, a.data, a.out, split=a.split, n_swaps=a.n_swaps, condition=a.condition,
                    seed=a.seed, n_samples=a.n_samples))


def _cmd_perturbation(a: argparse.Namespace) -> None:
    from cytogen.workflows.statcell_stats import perturbation

    _print(perturbation(a.embeddings, a.out, condition=a.condition, control=a.control, treated=a.treated,
                        group_by=a.group_by, spaces=tuple(a.spaces.split(",")),
                        baseline_columns=tuple(c for c in (a.baseline or "").split(",") if c),
                        learn_on=a.learn_on, n_permutations=a.n_permutations, seed=a.seed))


def add_cells_parser(sub: argparse._SubParsersAction) -> None:
    """``cytogen cells extract``."""
    c = sub.add_parser("cells", help="single-cell crops for the Statistical Cell")
    csub = c.add_subparsers(dest="what", required=True)
    e = csub.add_parser("extract", help="crop, align and normalise every whole cell of a set of fields")
    e.add_argument("--data", required=True,
                   help="FIELDS.csv: name, dna, target, structure[, membrane, cells, nuclei, split, "
                        "pixel_size_um]; other columns are metadata passed to every cell")
    e.add_argument("--out", required=True, help="new CELLS folder (cells.csv, crops.npy, cells.json)")
    e.add_argument("--size", type=_ints, default=(64, 64),
                   help="crop size in pixels: 64 (= 64,64), 64,96 (Y,X; aligned cells lie along X) or "
                        "32,64,64 (3D) (default 64,64)")
    e.add_argument("--projection", action="store_true", help="3D fields -> 2D maximum projections")
    e.add_argument("--rescale", action="store_true",
                   help="shrink cells that do not fit the crop instead of dropping them")
    e.add_argument("--crop-pixel-size-um", type=float, default=None,
                   help="resample every cell to this pixel size first (needs a known pixel size)")
    e.add_argument("--pixel-size-um", type=float, default=None,
                   help="in-plane pixel size in um; wins over the CSV column and the image metadata")
    e.add_argument("--min-cell-area-px", type=int, default=30, help="drop smaller cells (segmentation debris)")
    e.set_defaults(func=_cmd_cells_extract)


def add_statcell_parser(sub: argparse._SubParsersAction) -> None:
    """``cytogen statcell embed|sample|walk|features|sweep|coupling|perturbation``."""
    s = sub.add_parser("statcell", help="analyses with Statistical Cell models (beta-VAEs of cells)")
    ssub = s.add_subparsers(dest="analysis", required=True)

    e = ssub.add_parser("embed", help="latent posterior means z_r, z_t of every cell -> embeddings.csv")
    e.add_argument("--reference", required=True, help="reference model folder (REF/model)")
    e.add_argument("--target", default=None, help="target model folder (TGT/model)")
    e.add_argument("--data", required=True, help="CELLS/cells.csv from 'cytogen cells extract'")
    e.add_argument("--out", required=True)
    e.add_argument("--split", default=None, help="only the cells of this split (default: all)")
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--pca", type=int, default=0,
                   help="also write pca_0.. columns: a linear baseline, PCA of the target crops with "
                        "this many components")
    e.set_defaults(func=_cmd_embed)

    sm = ssub.add_parser("sample", help="new cells from the prior, or structures drawn in a real cell")
    sm.add_argument("--reference", required=True)
    sm.add_argument("--target", default=None)
    sm.add_argument("--structure", default=None, help="structure name for the target model")
    sm.add_argument("--n", type=int, default=16, help="cells (or draws per cell) to generate")
    sm.add_argument("--data", default=None, help="CELLS/cells.csv, with --cell")
    sm.add_argument("--cell", default=None, help="cell_id of a real cell: draw the structure in its reference")
    sm.add_argument("--out", required=True)
    sm.add_argument("--seed", type=int, default=0)
    sm.set_defaults(func=_cmd_sample)

    w = ssub.add_parser("walk", help="walks along the top-ranked latent dimensions")
    w.add_argument("--reference", required=True)
    w.add_argument("--target", default=None)
    w.add_argument("--data", required=True)
    w.add_argument("--out", required=True)
    w.add_argument("--n-dims", type=int, default=4, help="top dimensions by mean absolute deviation")
    w.add_argument("--steps", type=int, default=9)
    w.add_argument("--span-sd", type=float, default=2.0, help="walk from -span to +span sd")
    w.add_argument("--split", default=None)
    w.set_defaults(func=_cmd_walk)

    f = ssub.add_parser("features", help="14 shape/intensity features of real vs generated cells; "
                                         "latent -> feature-PC regression")
    f.add_argument("--reference", required=True)
    f.add_argument("--data", required=True)
    f.add_argument("--out", required=True)
    f.add_argument("--split", default="test")
    f.add_argument("--n-generated", type=int, default=None, help="generated cells (default: as many as real)")
    f.add_argument("--kl-threshold", type=float, default=0.6, help="informative dimensions: mean KL above this")
    f.add_argument("--seed", type=int, default=0)
    f.set_defaults(func=_cmd_features)

    sw = ssub.add_parser("sweep", help="train at evenly spaced beta; rate/distortion and features per beta")
    sw.add_argument("recipe", help="statcell recipe, e.g. configs/statcell_reference2d.yaml")
    sw.add_argument("--data", required=True)
    sw.add_argument("--out", required=True)
    sw.add_argument("--betas", type=_floats, default=(0.1, 0.3, 0.5, 0.7, 0.9))
    sw.add_argument("--max-steps", type=int, default=None)
    sw.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a recipe key")
    sw.add_argument("--split", default="test")
    sw.set_defaults(func=_cmd_sweep)

    c = ssub.add_parser("coupling", help="coupling of each structure to the membrane and the nucleus (Eq 4, 5)")
    c.add_argument("--target", required=True)
    c.add_argument("--data", required=True)
    c.add_argument("--out", required=True)
    c.add_argument("--split", default=None)
    c.add_argument("--n-swaps", type=int, default=16, help="other cells whose channel is swapped in")
    c.add_argument("--condition", default=None, help="cells.csv column to report coupling per value of")
    c.add_argument("--n-samples", type=int, default=10, help="samples of each ELBO estimate")
    c.add_argument("--seed", type=int, default=0)
    c.set_defaults(func=_cmd_coupling)

    p = ssub.add_parser("perturbation", help="condition shifts in latent space, permutation tests, Z'")
    p.add_argument("--embeddings", required=True, help="EMB/embeddings.csv from 'cytogen statcell embed'")
    p.add_argument("--out", required=True)
    p.add_argument("--condition", required=True, help="column of the condition, e.g. dose")
    p.add_argument("--control", required=True, help="its control value, e.g. 0")
    p.add_argument("--treated", default=None, help="treated value for the direction and Z' (default: the largest)")
    p.add_argument("--group-by", default="structure")
    p.add_argument("--spaces", default="zr,zt", help="latent column prefixes to compare, e.g. zr,zt,pca")
    p.add_argument("--baseline", default=None, help="per-cell columns to score alike, e.g. target_nc_ratio")
    p.add_argument("--learn-on", default=None,
                   help="COL=V1,V2: learn the control->treated direction on these cells, measure on the rest")
    p.add_argument("--n-permutations", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_perturbation)
