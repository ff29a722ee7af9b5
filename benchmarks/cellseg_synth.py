"""Unsupervised cell segmentation on cytogen's synthetic cells (exact masks: the accuracy figure).

1. ``synthesize cells``: fields at 1 um/px (cells 20-45 px long), a quarter of them crowded
   (touching cells), split train / val / test by field; ``segment.csv`` is the M.csv (source =
   actin, nuclei = nucleus channel, cells = exact masks).
2. ``train configs/cellseg_consistency2d.yaml`` on the train fields (markers: DoG blobs of the
   nucleus channel; foreground: graph cut of the actin image; no labels used).
3. ``segment cells`` on the test fields: the model, and the propagation baseline on the same
   markers and foreground.
4. A translator actin -> nucleus (``translate_unet2d``) trained on the train fields gives
   predicted nucleus images of the test fields; markers by blob detection on them
   (``nucleus_model`` marker source, the paper's synthetic markers); segment again; marker
   false negatives / positives at 15 um against the real nucleus channel's markers.
5. ``evaluate cells`` of each against the exact masks.

    python benchmarks/cellseg_synth.py [--minutes 10] [--out DIR] [--n-fields 16] [--pixel-size-um 1]
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from pathlib import Path

from _bench import emit, note
from _cellseg import score, segment, table, train_segmenter, train_translator, write_rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="training budget of the segmenter")
    ap.add_argument("--translator-minutes", type=float, default=3.0)
    ap.add_argument("--out", default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--n-fields", type=int, default=16)
    ap.add_argument("--size", type=int, default=256, help="field size in pixels")
    ap.add_argument("--pixel-size-um", type=float, default=1.0,
                    help="1.0 (default): cells 20-45 px long, 64 px patches (the paper's); at 0.5 or 0.75 "
                         "the cells need 96-128 px patches and several times the training")
    ap.add_argument("--patch", type=int, default=64, help="segmenter patch size in pixels")
    ap.add_argument("--source", default="actin", choices=("actin", "actin+membrane"),
                    help="cell image channel(s) of M.csv")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="segmenter recipe override")
    a = ap.parse_args()
    from cytogen.synth.cells import write_synthetic_dataset

    work = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="cellseg_synth_"))
    work.mkdir(parents=True, exist_ok=True)
    write_synthetic_dataset(work / "synth", n_fields=a.n_fields, shape=(a.size, a.size), seed=0,
                            pixel_size_um=a.pixel_size_um, crowded_fraction=0.25)
    m = work / "synth" / "segment.csv"
    rows = list(csv.DictReader(open(m)))
    if a.source == "actin+membrane":
        for r in rows:
            r["source"] = r["source"] + ";" + r["source"].replace("#c=0", "#c=1")
        m = write_rows(work / "synth" / "segment_am.csv", rows)
    # the same fields with the translator as a second marker source (the nucleus channel stays as
    # the reference markers of the false negative / positive counts)
    m_pred = write_rows(work / "synth" / "segment_predicted_markers.csv",
                        [{**r, "nucleus_model": str(work / "translator" / "model")} for r in rows])
    counts = {s: sum(r["split"] == s for r in rows) for s in ("train", "val", "test")}
    emit({"step": "data", "fields": counts, "size": a.size, "pixel_size_um": a.pixel_size_um, "source": a.source})

    seg_set = [f"data.patch_size=[{a.patch},{a.patch}]", "cellseg.nucleus_diameter_um=12", *a.set]
    train_segmenter(m, work / "cellseg", a.minutes, seg_set)
    train_translator(work / "synth" / "manifest.csv", work / "translator", a.translator_minutes,
                     ["data.patch_size=[128,128]"])
    results = []
    segment(work / "cellseg" / "model", m, work / "seg_model", "model", split="test")
    # the baseline gets the model's markers and foreground (the foreground settings given to --set)
    from cytogen.config import parse_overrides
    from cytogen.workflows.segment_cells import INFERENCE_KEYS

    given = parse_overrides(a.set).get("cellseg", {})
    same = {"nucleus_diameter_um": 12.0, **{k: v for k, v in given.items() if k in INFERENCE_KEYS}}
    segment(None, m, work / "seg_propagate", "propagate", method="propagate", split="test", settings=same)
    segment(work / "cellseg" / "model", m_pred, work / "seg_model_pred", "model_predicted_markers",
            split="test", markers_from="nucleus_model")
    segment(None, m_pred, work / "seg_propagate_pred", "propagate_predicted_markers", method="propagate",
            split="test", markers_from="nucleus_model", settings=same)
    for label in ("model", "propagate", "model_pred", "propagate_pred"):
        results.append(score(work / f"seg_{label}", m, work / f"eval_{label}", label, split="test"))
    print(table(results))
    note(f"outputs in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
