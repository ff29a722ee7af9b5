"""Do synthetic nuclei train better segmenters? The downstream proof on real DSB 2018 images.

Data: ``../shared/data/dsb2018_nuclei`` (stage-1 test images with released masks), the grey
fluorescence images only (``modality_guess = fluorescence_gray``). Split by image, fixed
(seed 0): the first ``--n-test`` of a seeded permutation are the held-out test images; of the
rest (the pool), the first ``--n-real`` with at least 20 nuclei are the annotated real training
images and the next one the validation image (checkpoint choice of the real-data segmenters).

1. A masks -> image generator (``configs/masks2nuclei.yaml``) on the real training images.
2. ``synthesize from-masks``: ``--n-synth`` images from random layouts of the real training
   images' whole nuclei, at their mean labelled area fraction.
3. The same segmenter recipe (``configs/segment_nuclei2d.yaml``), the same time budget each:
   real only; real + synthetic (fields drawn by area: mostly synthetic); the same with
   ``data.balance_groups`` (half the patches from the real images); synthetic only (its own synthetic validation images: no real
   annotation beyond the generator's); every pool image (the "all training images" reference).
4. ``segment nuclei`` on the test images; AP@0.5 and mean AP 0.5:0.95 pooled over the test
   images (DSB / StarDist AP = tp / (tp + fp + fn)), 95 % bootstrap intervals over images;
   beside them the classical floor: Otsu + distance-transform watershed (``evaluate objects``).
5. Realism: per-object features of the synthetic images vs the annotated real images (KS,
   Frechet distance; null: two halves of the real images).

    python benchmarks/masks_dsb.py [--gen-minutes 8] [--seg-minutes 5] [--n-synth 40] [--out DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from _bench import emit, note
from _cellseg import write_rows

DSB = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "dsb2018_nuclei"


def _split(n_test: int, n_real: int) -> dict[str, list[str]]:
    rows = [r for r in csv.DictReader(open(DSB / "index.csv")) if r["modality_guess"] == "fluorescence_gray"]
    ids = [r["id"] for r in sorted(rows, key=lambda r: r["id"])]
    n_nuc = {r["id"]: int(r["n_nuclei"]) for r in rows}
    order = [ids[i] for i in np.random.default_rng(0).permutation(len(ids))]
    test, pool = order[:n_test], order[n_test:]
    rich = [i for i in pool if n_nuc[i] >= 20]
    return {"test": test, "pool": pool, "real": rich[:n_real], "val": rich[n_real:n_real + 1]}


def _rows(ids: list[str], split: str, *, masks_to_image: bool = False) -> list[dict]:
    out = []
    for i in ids:
        img, lab = str(DSB / "images" / f"{i}.png"), str(DSB / "labels" / f"{i}.tif")
        src, tgt = (lab, img) if masks_to_image else (img, lab)
        out.append({"name": i[:12], "source": src, "target": tgt, "split": split})
    return out


def _train(recipe: str, manifest: Path, out: Path, minutes: float, sets: list[str], label: str,
           steps: int | None = None) -> dict:
    """Train for ``minutes``, or for exactly ``steps`` steps (whatever the time) when given."""
    from cytogen.config import bundled_recipe
    from cytogen.workflows.train import train

    budget = ([f"train.max_time_min={minutes}", "train.max_steps=100000"] if steps is None
              else ["train.max_time_min=100000", f"train.max_steps={steps}"])
    s = train(bundled_recipe(recipe), manifest, out, progress=False, overrides=[*budget, *sets])
    emit({"step": f"train_{label}", "steps": s["steps"], "seconds": s["train_seconds"],
          "best_val_loss": s.get("best_val_loss"), "precision": s.get("precision")})
    return s


def _score(pred: Path, truth_csv: Path, out: Path, label: str) -> dict:
    from cytogen.workflows.evaluate_cells import evaluate_cells

    s = evaluate_cells(pred, truth_csv, out)
    row = {"result": label, "n_true": s["n_true"], "n_pred": s["n_pred"], "ap50": s["ap50"], "ap50_ci95": s["ap50_ci95"],
           "map": s["map"], "map_ci95": s["map_ci95"], "f1_50": s["f1_50"], "miou_matched": s["miou_matched"]}
    emit({"step": "evaluate", **row})
    return row


def paired_ap50_difference(eval_a: Path, eval_b: Path, n_boot: int = 5000, seed: int = 0) -> dict:
    """AP@0.5 of ``b`` minus ``a`` on the same test images, with a paired percentile bootstrap
    over images (both resampled with the same draws) from ``cells_per_field.csv``."""
    def counts(folder):
        rows = {r["name"]: r for r in csv.DictReader(open(folder / "cells_per_field.csv"))}
        out = {}
        for k, r in rows.items():
            n_t, n_p = int(r["n_true"]), int(r["n_pred"])
            tp = round(float(r["recall50"]) * n_t)
            out[k] = (tp, n_t + n_p - tp)  # tp, tp + fp + fn
        return out
    a, b = counts(eval_a), counts(eval_b)
    names = sorted(a)
    ta, da = np.array([a[k][0] for k in names], float), np.array([a[k][1] for k in names], float)
    tb, db = np.array([b[k][0] for k in names], float), np.array([b[k][1] for k in names], float)
    w = np.random.default_rng(seed).multinomial(len(names), np.full(len(names), 1 / len(names)), size=n_boot)
    diff = (w @ tb) / (w @ db) - (w @ ta) / (w @ da)
    lo, hi = np.percentile(diff, [2.5, 97.5])
    return {"difference": float(tb.sum() / db.sum() - ta.sum() / da.sum()), "ci95": [float(lo), float(hi)],
            "fraction_of_draws_above_0": float((diff > 0).mean()), "n_images": len(names)}


def _otsu_floor(test_rows: list[dict], out: Path) -> Path:
    from cytogen.evaluate.objects import segment_nuclei
    from cytogen.io.images import Image, read_spec, write_image

    out.mkdir(parents=True, exist_ok=True)
    for r in test_rows:
        img = read_spec(r["source"])
        lab = segment_nuclei(img.data[0].astype(np.float32), min_area_px=10)
        write_image(out / f"{r['name']}.tif", Image(lab[None].astype(np.uint16), "CYX", None))
    return out


def _realism(real_rows: list[dict], synth_dir: Path) -> dict:
    from cytogen.evaluate.realism import FEATURES, compare_features, object_features, real_halves_frechet
    from cytogen.io.images import read_spec

    real = [object_features(read_spec(r["source"]).data[0], read_spec(r["target"]).data[0]) for r in real_rows]
    synth = [object_features(read_spec(str(synth_dir / r["source"])).data[0],
                             read_spec(str(synth_dir / r["target"])).data[0])
             for r in csv.DictReader(open(synth_dir / "manifest.csv"))]
    pool = lambda fs: {k: np.concatenate([f[k] for f in fs]) for k in FEATURES}  # noqa: E731
    c = compare_features(pool(real), pool(synth))
    c["frechet_real_halves"] = real_halves_frechet(real)
    emit({"step": "realism", "frechet": c["frechet"], "frechet_real_halves": c["frechet_real_halves"],
          "ks": {k: round(v["ks"], 3) for k, v in c["features"].items()}})
    return c


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--n-test", type=int, default=12)
    ap.add_argument("--n-real", type=int, default=3, help="annotated real training images (2-4)")
    ap.add_argument("--n-synth", type=int, default=40)
    ap.add_argument("--synth-size", type=int, default=256)
    ap.add_argument("--gen-minutes", type=float, default=8.0)
    ap.add_argument("--seg-minutes", type=float, default=5.0)
    ap.add_argument("--gen-steps", type=int, default=None, help="train the generator this many steps instead")
    ap.add_argument("--seg-steps", type=int, default=None,
                    help="train every segmenter this many steps instead of --seg-minutes (fair on a busy machine)")
    ap.add_argument("--synth-mix", choices=["pooled", "per-image"], default="pooled",
                    help="synthesize from-masks --mix; per-image also draws each image's area fraction "
                         "between the real training images' lowest and highest")
    ap.add_argument("--synth-scale", default=None, metavar="LOW:HIGH", help="synthesize from-masks --scale")
    ap.add_argument("--synth-dir", default="synth",
                    help="folder name (in WORK) of the synthetic set; with --reuse a new name makes a second set "
                         "from the same generator, and its runs are named <run>_<synth-dir>")
    ap.add_argument("--gen-set", action="append", default=[], metavar="KEY=VALUE", help="generator recipe override")
    ap.add_argument("--seg-set", action="append", default=[], metavar="KEY=VALUE", help="segmenter recipe override")
    ap.add_argument("--runs", default=None, help="comma-separated segmenter runs (default: all five), "
                    "e.g. real_only,real_plus_synthetic_balanced")
    ap.add_argument("--reuse", action="store_true", help="reuse WORK's generator and synthetic images (with --out)")
    ap.add_argument("--figure-from", default=None, metavar="WORK",
                    help="only draw WORK/masks_dsb.png from a finished run (merges the results of "
                         "separate --runs; synthetic tiles from --synth-dir)")
    a = ap.parse_args()
    if a.figure_from:
        note(f"wrote {figure(Path(a.figure_from), a.synth_dir)}")  # merges the results of separate --runs
        return 0
    if not DSB.is_dir():
        note(f"{DSB} not found: this benchmark needs ../shared/data/dsb2018_nuclei")
        return 2
    from cytogen.io.images import read_spec
    from cytogen.workflows.segment_nuclei import segment_nuclei
    from cytogen.workflows.synthesize_masks import synthesize_from_masks

    work = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="masks_dsb_"))
    work.mkdir(parents=True, exist_ok=True)
    sp = _split(a.n_test, a.n_real)
    emit({"step": "split", **{k: [i[:12] for i in v] for k, v in sp.items() if k != "pool"}, "n_pool": len(sp["pool"])})
    real_rows = _rows(sp["real"], "train") + _rows(sp["val"], "val")
    m_gen = write_rows(work / "m_gen.csv", _rows(sp["real"], "train", masks_to_image=True)
                       + _rows(sp["val"], "val", masks_to_image=True))
    m_real = write_rows(work / "m_real.csv", real_rows)
    pool_rows = [r for r in _rows([i for i in sp["pool"] if i not in sp["val"]], "train")] + _rows(sp["val"], "val")
    m_all = write_rows(work / "m_all.csv", pool_rows)
    test_rows = [{"name": r["name"], "source": r["source"], "markers": r["target"], "cells": r["target"], "split": "test"}
                 for r in _rows(sp["test"], "test")]
    m_test = write_rows(work / "m_test.csv", test_rows)  # the truth of 'evaluate cells' (cells column)
    m_test_images = write_rows(work / "m_test_images.csv", _rows(sp["test"], "test"))  # what is segmented

    sdir = work / a.synth_dir
    if a.reuse and (work / "gen" / "train_summary.json").exists():
        gen = json.loads((work / "gen" / "train_summary.json").read_text())
        note(f"reusing the generator ({gen['steps']} steps) in {work}")
    else:
        gen = _train("masks2nuclei", m_gen, work / "gen", a.gen_minutes,
                     ["data.batch_size=4", "model.kwargs.kernel_size=5", *a.gen_set], "generator", a.gen_steps)
    if a.reuse and (sdir / "manifest.csv").exists():
        note(f"reusing the synthetic images in {sdir}")
    else:
        fractions = [float((read_spec(r["target"]).data > 0).mean()) for r in real_rows if r["split"] == "train"]
        fraction = (min(fractions), max(fractions)) if a.synth_mix == "per-image" else float(np.mean(fractions))
        scale = tuple(float(v) for v in a.synth_scale.split(":")) if a.synth_scale else None
        syn = synthesize_from_masks(work / "gen" / "model", [r["target"] for r in real_rows if r["split"] == "train"],
                                    sdir, n_images=a.n_synth, size=a.synth_size, area_fraction=fraction,
                                    clustered=0.3, mix=a.synth_mix, scale=scale, progress=False)
        emit({"step": "synthesize", **{k: syn[k] for k in ("n_images", "n_nuclei", "area_fraction", "seconds")},
              "mix": a.synth_mix, "scale": scale, "area_fraction_setting": fraction})
    synth_rows = list(csv.DictReader(open(sdir / "manifest.csv")))
    for r in synth_rows:
        r["source"], r["target"] = str(sdir / r["source"]), str(sdir / r["target"])
    tag = "" if a.synth_dir == "synth" else f"_{a.synth_dir}"  # runs on another synthetic set are named apart
    m_mix = write_rows(work / f"m_mix{tag}.csv", [{**r, "group": "real"} for r in real_rows]
                       + [{**r, "split": "train", "group": "synthetic"} for r in synth_rows])
    m_syn = write_rows(work / f"m_syn{tag}.csv", synth_rows)

    runs = {"real_only": (m_real, []), "real_plus_synthetic": (m_mix, []),
            "real_plus_synthetic_balanced": (m_mix, ["data.balance_groups=true"]),  # half the patches real
            "synthetic_only": (m_syn, []), "all_training_images": (m_all, [])}
    chosen = a.runs.split(",") if a.runs else list(runs)
    unknown = set(chosen) - set(runs)
    if unknown:
        note(f"unknown --runs {sorted(unknown)}; choose from {list(runs)}")
        return 2
    results = []
    for run in chosen:
        manifest, extra = runs[run]
        label = run + (tag if manifest in (m_mix, m_syn) else "")
        _train("segment_nuclei2d", manifest, work / f"seg_{label}", a.seg_minutes, [*extra, *a.seg_set], label,
               a.seg_steps)
        segment_nuclei(work / f"seg_{label}" / "model", data=m_test_images, split="test", out=work / f"pred_{label}",
                       progress=False)
        results.append(_score(work / f"pred_{label}", m_test, work / f"eval_{label}", label))
    results.append(_score(_otsu_floor(test_rows, work / "pred_otsu"), m_test, work / "eval_otsu",
                          "otsu_watershed_floor"))
    by = {r["result"]: r for r in results}
    if not (work / "eval_real_only").is_dir():
        note("no real_only run in this folder: no paired differences")
    if "real_only" in by:
        real = by["real_only"]
        emit({"step": "verdict", **{f"{k}_beats_real_{m}": by[k][m] > real[m] for k in by
                                    if k.startswith("real_plus") for m in ("ap50", "map")},
              "synthetic_only_vs_real_ap50": (by["synthetic_only" + tag]["ap50"] / real["ap50"])
              if "synthetic_only" + tag in by and real["ap50"] else None})
    evals = {k: work / ("eval_otsu" if k == "otsu_watershed_floor" else f"eval_{k}") for k in by}
    for k in by:
        if k != "real_only" and (work / "eval_real_only").is_dir():
            emit({"step": "paired", "compare": f"{k} - real_only",
                  **paired_ap50_difference(work / "eval_real_only", evals[k])})
    realism = _realism(real_rows, sdir)
    print(_table(results))
    name = "results.json" if not a.runs else f"results_{'_'.join(chosen)}{tag}.json"
    (work / name).write_text(json.dumps({"split": sp, "results": results, "realism": realism,
                                         "generator_steps": gen["steps"]}, indent=2, default=str))
    if not a.runs:
        figure(work, a.synth_dir)
    note(f"outputs in {work} (figure: masks_dsb.png)")
    return 0


def _merged_results(work: Path) -> dict:
    """``results.json``, or the rows of every ``results_*.json`` of separate ``--runs`` (first wins)."""
    files = [work / "results.json"] if (work / "results.json").exists() else sorted(work.glob("results_*.json"))
    if not files:
        raise SystemExit(f"no results*.json in {work}: run the benchmark there first")
    merged, seen = None, set()
    for f in files:
        res = json.loads(f.read_text())
        merged = merged or {**res, "results": []}
        for r in res["results"]:
            if r["result"] not in seen:
                seen.add(r["result"])
                merged["results"].append(r)
    merged["results"].sort(key=lambda r: r["result"] == "otsu_watershed_floor")  # the floor last
    return merged


def figure(work: Path, synth_dir: str = "synth") -> Path:
    """``WORK/masks_dsb.png``: real vs synthetic crops with outlines, and AP with intervals per segmenter."""
    from matplotlib.figure import Figure

    from cytogen.io.images import read_spec
    from cytogen.report.cellseg_figures import outline_rgb
    from cytogen.report.figures import save_figure

    res = _merged_results(work)
    real_ids = res["split"]["real"][:2]
    sdir = work / synth_dir
    synth = list(csv.DictReader(open(sdir / "manifest.csv")))[:2]
    fig = Figure(figsize=(15, 6.5))
    grid = fig.add_gridspec(2, 5)
    tiles = [(f"real {i[:8]}", str(DSB / "images" / f"{i}.png"), str(DSB / "labels" / f"{i}.tif")) for i in real_ids]
    tiles += [(f"synthetic {r['name']}", str(sdir / r["source"]), str(sdir / r["target"]))
              for r in synth]
    for k, (title, img, lab) in enumerate(tiles):
        ax = fig.add_subplot(grid[k // 2, k % 2])
        a, b = read_spec(img).data[0], read_spec(lab).data[0]
        ax.imshow(outline_rgb(a[:256, :256].astype(np.float32), b[:256, :256]), interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    ax = fig.add_subplot(grid[:, 2:])
    rows = res["results"]
    x = np.arange(len(rows))
    for j, (key, name) in enumerate((("ap50", "AP@0.5"), ("map", "mean AP 0.5:0.95"))):
        val = np.array([r[key] for r in rows])
        ci = np.array([r[f"{key}_ci95"] or [v, v] for r, v in zip(rows, val)])
        ax.bar(x + (j - 0.5) * 0.38, val, 0.38, yerr=[val - ci[:, 0], ci[:, 1] - val], capsize=3, label=name)
    ax.set_xticks(x)
    ax.set_xticklabels([r["result"].replace("_", "\n") for r in rows], fontsize=8)
    ax.set_ylabel("pooled over the held-out images (95 % bootstrap CI)")
    ax.set_title(f"segmenters on {rows[0]['n_true']} held-out DSB 2018 nuclei ({len(res['split']['test'])} images)")
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, work / "masks_dsb.png")


def _table(rows: list[dict]) -> str:
    def ci(v):
        return "n/a" if not v else f"{v[0]:.3f}-{v[1]:.3f}"

    lines = ["| segmenter trained on | test nuclei | predicted | AP@0.5 (95 % CI) | mean AP 0.5:0.95 (95 % CI) | F1@0.5 |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['result']} | {r['n_true']} | {r['n_pred']} | {r['ap50']:.3f} ({ci(r['ap50_ci95'])}) | "
                     f"{r['map']:.3f} ({ci(r['map_ci95'])}) | {r['f1_50']:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
