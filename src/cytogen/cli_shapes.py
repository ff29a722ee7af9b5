"""Command line of ``cytogen evaluate shapes`` and ``cytogen evaluate positions`` (registered by :mod:`cytogen.cli`). PLACEHOLDER: being written."""

from __future__ import annotations


def _cmd_evaluate_shapes(a) -> None:
    import json

    from cytogen.errors import CytogenError
    from cytogen.workflows.evaluate_shapes import evaluate_shapes

    try:
        ks = [int(v) for v in str(a.k).split(",") if v.strip()]
    except ValueError:
        raise CytogenError(f"--k {a.k!r}: give neighbour counts separated by commas, e.g. 4,8,16,32") from None
    if not ks or min(ks) < 1:
        raise CytogenError(f"--k {a.k!r}: give positive neighbour counts, e.g. 4,8,16,32")
    s = evaluate_shapes(a.real, a.pred, a.out, pixel_size_um=a.pixel_size_um, degree=a.degree, ks=ks,
                        n_permutations=a.permutations, align=a.align, exclude_border=a.exclude_border,
                        min_size=a.min_size, seed=a.seed, split_real_by=a.split_real_by)
    print(json.dumps({"out": s["out"], "n_objects": s["n_objects"], "units": s["units"],
                      "pixel_size_source": s["pixel_size_source"], "descriptor_kind": s["descriptor_kind"],
                      "purity": [{k: r.get(k) for k in ("k", "score", "p_permutation", "p_real_vs_real")}
                                 for r in s["purity"]], "seconds": s["seconds"]}))


def add_evaluate_shapes_parser(esub) -> None:
    """``cytogen evaluate shapes``: object shapes (spherical harmonics / Fourier), real vs generated."""
    import argparse

    e = esub.add_parser("shapes", help="object shapes as a distribution: SPHARM (3D) or contour Fourier (2D) "
                        "descriptors, 3 PCs, kNN-purity divergence per k with permutation and real-vs-real p")
    e.add_argument("--real", required=True, help="folder of real instance label images (.tif, 2D or 3D)")
    e.add_argument("--pred", required=True, help="folder of generated (predicted) instance label images")
    e.add_argument("--out", required=True, help="new folder: summary.json, objects.csv, shapes_*.png, report.html")
    e.add_argument("--pixel-size-um", type=float, nargs="+", default=None,
                   help="pixel size (one value, or z y x / y x); wins over the files' metadata (else 1 px: px units)")
    e.add_argument("--degree", type=int, default=None,
                   help="spherical-harmonic degree (3D, default 31) or Fourier harmonics (2D, default 16)")
    e.add_argument("--k", default="4,8,16,32", help="neighbour counts of the kNN-purity score (default 4,8,16,32)")
    e.add_argument("--permutations", type=int, default=999, help="label shuffles and real-vs-real splits")
    e.add_argument("--align", action=argparse.BooleanOptionalAction, default=False,
                   help="principal-axis frame and coefficients (default: rotation-invariant amplitudes)")
    e.add_argument("--exclude-border", action="store_true", help="leave out objects touching the image border")
    e.add_argument("--min-size", type=int, default=None, help="smallest object in px/voxels (default 9 2D, 27 3D)")
    e.add_argument("--split-real-by", choices=("auto", "image", "object"), default="auto",
                   help="real-vs-real null: split whole images or single objects (auto: by image from 10 images, else by object)")
    e.add_argument("--seed", type=int, default=0)
    e.set_defaults(func=_cmd_evaluate_shapes)


def _cmd_evaluate_positions(a) -> None:
    import json

    from cytogen.workflows.evaluate_positions import evaluate_positions

    s = evaluate_positions(a.real, a.pred, a.cells, a.nuclei, a.out, pred_cells=a.pred_cells,
                           pred_nuclei=a.pred_nuclei, pixel_size_um=a.pixel_size_um, n_permutations=a.permutations,
                           bandwidth=a.bandwidth, seed=a.seed, exclude_border=a.exclude_border, radius=a.radius,
                           align=a.align, permute_by=a.permute_by, real_splits=a.real_splits,
                           shape_vs_position=a.shape_vs_position, centre=a.centre, real_split_by=a.real_split_by)
    print(json.dumps({k: s.get(k) for k in ("out", "n_objects_real", "n_objects_generated", "n_cells_real",
                                            "n_cells_generated", "kl", "p_permutation", "p_real_vs_real",
                                            "median_rho_real", "median_rho_generated", "seconds")}))


def add_evaluate_positions_parser(esub) -> None:
    """``cytogen evaluate positions``: object positions in the normalised cell frame, real vs generated."""
    e = esub.add_parser("positions", help="object positions in a normalised cell frame (nucleus centre 0, "
                        "membrane 1): kernel densities, KL divergence, permutation p, real-vs-real null")
    lab = "folder, glob pattern ('masks/*_organelles.tif') or files of instance labels"
    e.add_argument("--real", required=True, nargs="+", help=f"real objects: {lab}")
    e.add_argument("--pred", required=True, nargs="+", help=f"generated objects: {lab}")
    e.add_argument("--cells", required=True, nargs="+",
                   help="cell labels of the real fields, paired by file name ('a.tif' or 'a_cells.tif' for 'a_x.tif')")
    e.add_argument("--nuclei", nargs="+", default=None,
                   help="nucleus labels of the real fields, paired likewise (needed unless --centre cell)")
    e.add_argument("--pred-cells", nargs="+", default=None, help="cell labels of the generated fields (default --cells)")
    e.add_argument("--pred-nuclei", nargs="+", default=None,
                   help="nucleus labels of the generated fields (default --nuclei)")
    e.add_argument("--out", required=True, help="new folder: summary.json, objects.csv, positions.png, report.html")
    e.add_argument("--pixel-size-um", type=float, nargs="+", default=None,
                   help="pixel size (one value, or z y x); wins over the files' metadata")
    e.add_argument("--permutations", type=int, default=1000, help="label shuffles of the permutation test")
    e.add_argument("--bandwidth", type=float, default=None,
                   help="kernel SD in frame units (membrane = 1); default Scott's rule on both sets pooled")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--exclude-border", action="store_true",
                   help="drop cells touching the image's Y/X border and their objects")
    e.add_argument("--radius", choices=("shell", "fraction"), default="shell",
                   help="shell (default): 0 nucleus centre, 0.5 nucleus boundary, 1 membrane; fraction: the "
                        "paper's distance from the nucleus centre over the distance to the membrane")
    e.add_argument("--centre", choices=("nucleus", "cell"), default="nucleus",
                   help="frame origin: each cell's nucleus centroid (default) or its cell centroid (e.g. to place "
                        "the nuclei themselves in their cells; --radius is then the fraction)")
    e.add_argument("--align", choices=("xy", "full"), default="xy",
                   help="3D: turn cells about z only (default) or by their three principal axes")
    e.add_argument("--permute-by", choices=("object", "cell"), default="object",
                   help="shuffle single objects (the paper) or whole cells (objects of a cell are not independent)")
    e.add_argument("--real-splits", type=int, default=10,
                   help="random halves of the real set for the null (0: none)")
    e.add_argument("--real-split-by", choices=("cell", "image"), default="cell",
                   help="the real-vs-real null splits whole cells (default) or whole images into halves")
    e.add_argument("--shape-vs-position", action="store_true",
                   help="also regress the first shape PC (cytogen evaluate shapes' descriptors) on position")
    e.set_defaults(func=_cmd_evaluate_positions)

