"""Unsupervised cell segmentation on real fields: U2OS cells, FKHR-GFP cytoplasm + Hoechst nuclei.

``../shared/data/sbs_translocation`` (48 fields of 640x640, plate rows A, C, E, G; no pixel size
recorded, nuclei 8-16 px across). The cell image is the GFP channel; no manual labels exist, so
the figures are marker errors and agreements between segmentations:

1. With ``--bin 2`` the fields are binned 2 x 2 first (the cells, 40-100 px across, then fit
   the paper's 64 px patches; not yet measured). M.csv: source = GFP, nuclei = Hoechst; rows A, C, E train the segmenter (unsupervised: no
   labels, only markers and a graph-cut foreground), row G (12 fields) is segmented.
2. A GFP -> Hoechst translator (``translate_unet2d``) trained on rows A, C, E (E01-E03 validate)
   predicts the Hoechst image of row G; blob detection on it gives the paper's synthetic markers
   (``nucleus_model`` marker source), compared with the Hoechst markers at 15 px of the binned
   fields (no pixel size).
3. ``segment cells`` of row G: the model with Hoechst markers, with translator markers, and the
   propagation baseline with each.
4. ``evaluate cells`` of pairs: agreement (mIoU of matched cells, AP@0.5) between the two marker
   sources, and between the model and the baseline.

    python benchmarks/cellseg_sbs.py [--minutes 5] [--translator-minutes 5] [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from _bench import SHARED, emit, note
from _cellseg import score, segment, table, train_segmenter, train_translator, write_rows

DATA = SHARED / "sbs_translocation"


def binned(path: Path, folder: Path, k: int) -> Path:
    """``path`` binned k x k (mean of blocks, float32) into ``folder``."""
    import tifffile
    from skimage.transform import downscale_local_mean

    img = tifffile.imread(path).astype(np.float32)
    h, w = (s // k * k for s in img.shape[-2:])
    out = folder / path.name
    folder.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(out, downscale_local_mean(img[..., :h, :w], (k, k)).astype(np.float32))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=5.0, help="training budget of the segmenter")
    ap.add_argument("--translator-minutes", type=float, default=5.0)
    ap.add_argument("--out", default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--bin", type=int, default=1,
                    help="bin fields BIN x BIN first (2: the 40-100 px cells fit the paper's "
                         "64 px patches; default 1, measured: the patches cut the cells)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="segmenter recipe override")
    a = ap.parse_args()
    if not DATA.is_dir():
        note(f"{DATA} not found: this benchmark needs ../shared/data")
        return 1
    work = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="cellseg_sbs_"))
    work.mkdir(parents=True, exist_ok=True)
    translator = work / "translator" / "model"
    seg_rows, tr_rows = [], []
    for gfp in sorted(DATA.glob("Channel1-*.tif")):
        _, _, row, col = gfp.stem.split("-")
        hoechst = DATA / gfp.name.replace("Channel1", "Channel2")
        if a.bin > 1:
            gfp, hoechst = (binned(f, work / "fields", a.bin) for f in (gfp, hoechst))
        split = "test" if row == "G" else "train"
        seg_rows.append({"name": f"{row}{col}", "source": str(gfp), "nuclei": str(hoechst), "split": split})
        tr_rows.append({"name": f"{row}{col}", "source": str(gfp), "target": str(hoechst),
                        "split": "test" if row == "G" else ("val" if row == "E" and col in ("01", "02", "03")
                                                            else "train")})
    m = write_rows(work / "M.csv", seg_rows)
    m_pred = write_rows(work / "M_predicted.csv", [{**r, "nucleus_model": str(translator)} for r in seg_rows])
    manifest = write_rows(work / "translate.csv", tr_rows)
    nucleus_px = 12.0 / a.bin  # nuclei are 8-16 px across in the original fields
    common = [f"cellseg.nucleus_diameter_px={nucleus_px}", *a.set]
    emit({"step": "data", "train_fields": sum(r["split"] == "train" for r in seg_rows),
          "test_fields": sum(r["split"] == "test" for r in seg_rows), "pixel_size_um": None, "bin": a.bin})

    train_segmenter(m, work / "cellseg", a.minutes, common)
    train_translator(manifest, work / "translator", a.translator_minutes)
    model = work / "cellseg" / "model"
    segment(model, m, work / "seg_hoechst", "model_hoechst_markers", split="test")
    segment(model, m_pred, work / "seg_pred", "model_translator_markers", split="test",
            markers_from="nucleus_model")
    same = {"nucleus_diameter_px": nucleus_px}  # the baseline gets the model's markers
    segment(None, m, work / "seg_prop_hoechst", "propagate_hoechst_markers", method="propagate", split="test",
            settings=same)
    segment(None, m_pred, work / "seg_prop_pred", "propagate_translator_markers", method="propagate",
            split="test", markers_from="nucleus_model", settings=same)
    rows = [
        score(work / "seg_pred", work / "seg_hoechst", work / "agree_markers",
              "model: translator vs Hoechst markers"),
        score(work / "seg_prop_hoechst", work / "seg_hoechst", work / "agree_baseline",
              "propagation vs model (Hoechst markers)"),
        score(work / "seg_prop_pred", work / "seg_prop_hoechst", work / "agree_prop_markers",
              "propagation: translator vs Hoechst markers"),
    ]
    print(table(rows))
    note(f"outputs in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
