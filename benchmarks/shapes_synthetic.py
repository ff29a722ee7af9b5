"""Does the kNN-purity shape test find organelles that are too large, and leave alone a set of
the same distribution? cytogen's synthetic cells (2D), known shapes.

Organelle labels of :func:`cytogen.synth.cells.synth_field` (``organelles=True``) hold the
cytoplasmic organelles followed by the nucleoli; the nucleoli are the labels inside nuclei
(``nuclei > 0``) and are left out. Real: fields of seeds ``0..n-1``; same distribution: seeds
``100..100+n-1``; too large: the same-distribution fields with every organelle grown by 1 or 2 px
(:func:`skimage.segmentation.expand_labels`, never into a neighbour). Pixel 0.2 um (organelles
0.4-1 um in radius: 2-5 px). Prints one JSON line per (degree, generated set, k).

    python benchmarks/shapes_synthetic.py [--fields 6] [--degrees 8,16] [--permutations 999]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _bench import emit


def organelles(seed: int, shape=(256, 256), pixel_um: float = 0.2) -> np.ndarray:
    """Cytoplasmic organelle labels of one synthetic field (nucleoli removed)."""
    from cytogen.synth.cells import synth_field

    f = synth_field(shape, organelles=True, seed=seed, pixel_size_um=pixel_um, noise=0.0)
    return np.where(f.nuclei > 0, 0, f.organelles)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fields", type=int, default=6)
    ap.add_argument("--degrees", default="8,16")
    ap.add_argument("--permutations", type=int, default=999)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    from skimage.segmentation import expand_labels

    from cytogen.evaluate.purity import purity_test
    from cytogen.evaluate.shapes import object_descriptors, shape_pca

    real = [organelles(s) for s in range(a.fields)]
    same = [organelles(100 + s) for s in range(a.fields)]
    sets = {"same_distribution": same, "grown_1px": [expand_labels(o, 1) for o in same],
            "grown_2px": [expand_labels(o, 2) for o in same]}
    for deg in [int(v) for v in a.degrees.split(",")]:
        def describe(fields):
            tabs = [object_descriptors(o, 0.2, degree=deg) for o in fields]
            ids = np.concatenate([[i] * len(t) for i, t in enumerate(tabs)])
            return np.vstack([t.descriptors for t in tabs]), ids, np.concatenate([t.size for t in tabs])

        xr, ids, size_r = describe(real)
        for name, fields in sets.items():
            t0 = time.time()
            xg, _, size_g = describe(fields)
            pca = shape_pca(xr, xg)
            res = purity_test(*pca.scores, ks=(4, 8, 16, 32), n_permutations=a.permutations, seed=a.seed,
                              real_image_ids=ids)
            for r in res:
                emit({"degree": deg, "generated": name, "k": r["k"], "n_real": r["n_real"],
                      "n_generated": r["n_generated"], "score": r["score"], "p_permutation": r["p_permutation"],
                      "p_real_vs_real": r["p_real_vs_real"], "median_area_um2": [float(np.median(size_r)),
                                                                               float(np.median(size_g))],
                      "seconds": round(time.time() - t0, 1)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
