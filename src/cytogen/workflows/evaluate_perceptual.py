"""``cytogen evaluate perceptual``: how realistic are predicted images, as distributions?

Predictions ``PRED/<name>.tif`` (``cytogen predict`` outputs; ``<name>_spread.tif`` files are not
read) are compared with the manifest targets of the same fields by distances between the real and
the generated sets (lower is better):

- object-feature Frechet distance: nuclei are detected in truth and prediction alike, as
  ``cytogen evaluate objects`` does by default (:func:`cytogen.evaluate.pipeline.measure_field`),
  then measured by :func:`cytogen.evaluate.realism.object_features`;
- patch-statistics Frechet distance (:func:`cytogen.evaluate.distribution.patch_statistics`);
- FID and KID on crops with InceptionV3 (:mod:`cytogen.evaluate.inception`, the ``fid`` extra);
- LPIPS, paired (each prediction against its own truth), when an LPIPS backbone file is given.

Each microscopy-native distance has a paired bootstrap interval over fields and a real-vs-real
baseline (two halves of the real fields, see :mod:`cytogen.evaluate.distribution`). Writes
``OUT/perceptual.json``, ``fields.csv``, ``objects.csv``, ``distances.png``, ``features.png`` and
``report.html``, swapped in as one folder.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from cytogen.data.manifest import read_manifest
from cytogen.errors import CytogenError
from cytogen.evaluate.distribution import (PATCH_DESCRIPTIONS, PERCENTILES, bootstrap_frechet,
                                           patch_statistics, real_halves)
from cytogen.evaluate.pipeline import FieldPair, ObjectSettings, measure_field
from cytogen.evaluate.realism import FEATURES, compare_features, object_features
from cytogen.io.atomic import atomic_dir
from cytogen.io.images import read_image, read_spec, stack_channels
from cytogen.report.figures import save_figure
from cytogen.report.html import Section, write_report
from cytogen.workflows.evaluate import check_out, find_prediction, write_csv, write_json
from cytogen.workflows.evaluate_realism import _figure as features_figure

__all__ = ["OUTPUTS", "distance_rows", "distances_figure", "evaluate_perceptual", "perceptual_sections",
           "read_pairs"]

OUTPUTS = ("perceptual.json", "fields.csv", "objects.csv", "distances.png", "features.png", "report.html")
FID_MISSING = "not computed: pip install 'cytogen[fid]'"
LPIPS_NETS = ("alex", "vgg")
PATCH = 32
NORMALISATION = (f"each image (truth and prediction alike) scaled to its own {PERCENTILES[0]:g}-"
                 f"{PERCENTILES[1]:g} percentile range before measuring")
BOOTSTRAP = ("paired percentile bootstrap over fields: fields drawn with replacement, the same fields on the "
             "real and the generated side, rows (objects, patches) of a field kept together; 95 % interval")
BASELINE = ("real vs real: the same distance between two random halves of the real fields (split by field, "
            "median and 2.5-97.5 percentiles over splits). Halves hold half the fields and these distances grow "
            "as samples shrink, so the baseline is a conservative (lenient) reference: a distance at or below it "
            "is as close as real data are to themselves at this size; well above it is a real difference")


def _progress(on: bool, line: str) -> None:
    if on:
        print(line, file=sys.stderr)


def read_pairs(pred: Path, truth: Path, split: str | None) -> list[tuple[FieldPair, str]]:
    """The manifest's fields (of ``split``) with their predictions, and each field's split; every
    field must have a prediction."""
    if not pred.is_dir():
        raise CytogenError(f"{pred}: prediction folder not found; run 'cytogen predict' first")
    entries = [e for e in read_manifest(truth) if split in (None, "all") or e.split == split]
    if not entries:
        raise CytogenError(f"{truth}: no rows{'' if split in (None, 'all') else f' with split={split}'}")
    pairs = []
    for e in entries:
        p = find_prediction(pred, e.name)
        if p is None:
            raise CytogenError(f"{pred}: no prediction {e.name}.tif for field {e.name!r} of {truth}; predict it "
                               f"(cytogen predict) or choose the split that was predicted with --split")
        t, q = stack_channels([read_spec(s) for s in e.target]), read_image(p)
        if t.ndim_spatial != 2 or q.ndim_spatial != 2:
            raise CytogenError(f"{p}: perceptual distances are for 2D fields, got {q.data.shape} (prediction) and "
                               f"{t.data.shape} (truth of {e.name!r}); evaluate a 2D model's predictions")
        if t.data.shape[1:] != q.data.shape[1:]:
            raise CytogenError(f"{p}: prediction is {q.data.shape} but the target of field {e.name!r} is "
                               f"{t.data.shape}; was it predicted from this manifest?")
        pairs.append((FieldPair(e.name, t, q, None, e.pixel_size_um), e.split))
    return pairs


def _load_fid(fid: bool | str):
    if fid is False:
        return None, "skipped (--no-fid)"
    try:
        from cytogen.evaluate import inception
        return (inception, inception.load_inception()), None
    except (ImportError, CytogenError) as exc:
        if fid is True:
            raise CytogenError(f"--fid: FID and KID need the InceptionV3 network of the fid extra "
                               f"({exc}); pip install 'cytogen[fid]' or pass --no-fid") from None
        return None, FID_MISSING


def _check_lpips(backbone, lin, net) -> None:
    if net not in LPIPS_NETS:
        raise CytogenError(f"--lpips-net {net!r}: use one of {', '.join(LPIPS_NETS)}")
    if backbone is None:
        if lin is not None:
            raise CytogenError("--lpips-lin given without --lpips-backbone: LPIPS needs the backbone file too")
        return
    for flag, p in (("--lpips-backbone", backbone), ("--lpips-lin", lin)):
        if p is not None and not Path(p).is_file():
            raise CytogenError(f"{flag} {p}: file not found; give the path of the downloaded LPIPS {flag[8:]} "
                               "weights, or leave LPIPS out")


def _crops(mod, image: np.ndarray, size: int, name: str) -> list[np.ndarray]:
    if min(image.shape) < size:
        raise CytogenError(f"field {name!r}: --crop {size} is larger than the field {image.shape}; give "
                           f"--crop {min(image.shape)} or less (or --no-fid without LPIPS)")
    return list(mod.crops(np.asarray(image, np.float32), size=size))


def _fid_kid(mod, model, truth_crops: list[list], pred_crops: list[list], seed: int, splits: int) -> dict[str, Any]:
    feats_t = [np.asarray(mod.inception_features(c, model=model)) for c in truth_crops]
    feats_p = [np.asarray(mod.inception_features(c, model=model)) for c in pred_crops]
    a, b = np.concatenate(feats_t), np.concatenate(feats_p)
    out = {"fid": float(mod.fid_from_features(a, b)), "kid": mod.kid_from_features(a, b, seed=seed),
           "n_real_crops": len(a), "n_generated_crops": len(b)}
    if splits == 0:
        none = {"median": None, "ci_low": None, "ci_high": None, "n_splits": 0,
                "note": "not computed (fid_splits=0, --fid-splits 0)"}
        out["fid_real_halves"], out["kid_real_halves"] = none, dict(none)
        return out
    out["fid_real_halves"] = real_halves(feats_t, n_splits=splits, seed=seed, distance=mod.fid_from_features)
    out["kid_real_halves"] = real_halves(feats_t, n_splits=splits, seed=seed,
                                         distance=lambda x, y: mod.kid_from_features(x, y, seed=seed)["mean"])
    return out


def _lpips(backbone, lin, net, truth_crops, pred_crops, names, n_boot, seed) -> dict[str, Any]:
    from cytogen.evaluate.lpips import LPIPS
    metric = LPIPS(backbone, lin=lin, net=net)
    per = [float(np.mean([metric.distance(p, t) for p, t in zip(pc, tc)])) for pc, tc in zip(pred_crops, truth_crops)]
    rng = np.random.default_rng(seed)
    boot = [np.median(rng.choice(per, len(per))) for _ in range(n_boot)]
    lo, hi = np.quantile(boot, [0.025, 0.975])
    return {"median": float(np.median(per)), "ci_low": float(lo), "ci_high": float(hi), "n_fields": len(per),
            "per_field": dict(zip(names, per)), "net": net, "backbone": str(backbone),
            "lin": None if lin is None else str(lin), "metric": metric.name,
            "meaning": (f"{metric.name} of each prediction against its own truth (each crop scaled to its own 1-99.8 "
                        "percentile range, clipped to [0, 1], as cytogen.evaluate.lpips does), mean over the field's "
                        "crops; median over fields with a percentile bootstrap interval over fields (lower is better)"
                        + ("" if lin is not None else "; without --lpips-lin this is the paper's baseline (equal "
                           "channel weights): not LPIPS and not on LPIPS' scale"))}


def _row(label: str, d: dict, base: dict | None, value_key: str = "distance") -> dict[str, Any]:
    base = base or {}
    return {"distance": label, "generated vs real": d.get(value_key), "ci_low": d.get("ci_low"),
            "ci_high": d.get("ci_high"), "real vs real (median)": base.get("median"),
            "baseline low": base.get("ci_low"), "baseline high": base.get("ci_high")}


def distance_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per computed distance: value, interval, real-vs-real baseline (for the table and figure)."""
    rows = [_row("object-feature Frechet", result["object_frechet"], result["object_frechet"]["real_halves"]),
            _row("patch-statistics Frechet", result["patch_frechet"], result["patch_frechet"]["real_halves"])]
    f = result["fid"]
    if isinstance(f, dict):
        rows.append(_row("FID (InceptionV3, crops)", {"distance": f["fid"]}, f["fid_real_halves"]))
        kid = f["kid"]
        rows.append(_row("KID (InceptionV3, crops)", {"distance": kid["mean"], "ci_low": kid["mean"] - 2 * kid["sd"],
                                                      "ci_high": kid["mean"] + 2 * kid["sd"]}, f["kid_real_halves"]))
    if isinstance(result["lpips"], dict):
        rows.append(_row("LPIPS (paired, median of fields)", result["lpips"], None, "median"))
    return rows


def distances_figure(rows: list[dict[str, Any]]) -> Figure:
    """Each distance with its interval beside the real-vs-real baseline (separate axes: own scales)."""
    fig = Figure(figsize=(3.2 * len(rows), 3.4))
    axes = np.atleast_1d(fig.subplots(1, len(rows)))
    for ax, r in zip(axes, rows):
        for x, key, lo, hi, colour in ((0, "generated vs real", "ci_low", "ci_high", "C3"),
                                       (1, "real vs real (median)", "baseline low", "baseline high", "C0")):
            v = r[key]
            if v is None:
                ax.text(x, 0, "n/a", ha="center")
                continue
            err = None
            if r[lo] is not None and r[hi] is not None and np.isfinite([r[lo], r[hi]]).all():
                err = [[max(v - r[lo], 0)], [max(r[hi] - v, 0)]]
            ax.errorbar([x], [v], yerr=err, fmt="o", color=colour, capsize=5)
        ax.set_xticks([0, 1], ["generated\nvs real", "real vs real\n(halves)"])
        ax.set_xlim(-0.6, 1.6)
        ax.set_ylim(bottom=0)
        ax.set_title(r["distance"], fontsize=9)
    axes[0].set_ylabel("distance (lower is better)")
    fig.tight_layout()
    return fig


def perceptual_sections(result: dict[str, Any], rows: list[dict[str, Any]], fields: list[dict[str, Any]],
                        figures: dict[str, Figure]) -> list[Section]:
    """Report sections: what was compared, the distances table, the figures, the fields."""
    o, p = result["object_frechet"], result["patch_frechet"]
    text = [f"{result['n_fields']} field(s); {o['n_real_rows']} real and {o['n_fake_rows']} generated nuclei "
            f"({result['detection']}); {p['n_real_rows']} patches of {PATCH} px per side. {NORMALISATION}.",
            "All distances: lower is better, 0 = the generated set is distributed like the real one. Frechet "
            "distances on features standardised by the real set's mean and SD. Intervals: " + BOOTSTRAP + ".",
            "Baseline: " + BASELINE + ".",
            f"FID/KID: {result['fid'] if isinstance(result['fid'], str) else result['fid']['meaning']}",
            f"LPIPS: {result['lpips'] if isinstance(result['lpips'], str) else result['lpips']['meaning']}"]
    return [Section("Perceptual realism", text, tables=[("distances (lower is better)", rows)]),
            Section("Distances beside the real-vs-real baseline", figures=[("distances", figures["distances"])]),
            Section("Object features, real vs generated", figures=[("feature histograms", figures["features"])]),
            Section("Per field", tables=[("fields", fields)])]


def evaluate_perceptual(pred: str | Path, truth: str | Path, out: str | Path, *, split: str | None = None,
                        fid: bool | str = "auto", lpips_backbone: str | Path | None = None,
                        lpips_lin: str | Path | None = None, lpips_net: str = "alex", crop: int = 256,
                        n_boot: int = 200, fid_splits: int = 3, seed: int = 0, channel: int = 0, progress: bool = False) -> dict[str, Any]:
    """Compare predictions with their truths as distributions; writes ``OUT/`` (see the module docstring).

    Parameters
    ----------
    fid
        ``"auto"``: FID/KID when the ``fid`` extra is installed (else the JSON says how to get it);
        ``True``: required (CytogenError without the extra); ``False``: skipped.
    lpips_backbone, lpips_lin, lpips_net
        LPIPS weights (backbone file, optional linear-layer file) and network; LPIPS only with a backbone.
    crop
        Crop side in pixels for FID, KID and LPIPS.
    n_boot
        Bootstrap resamples of the intervals.
    fid_splits
        Random real-vs-real splits of the FID/KID baseline (each FID on 2048 features costs
        10-30 s of CPU; 0: no FID baseline, said so in the JSON).
    channel
        Channel of truth and prediction compared.

    Returns
    -------
    dict
        ``perceptual.json``'s dict.
    """
    if fid not in ("auto", True, False):
        raise CytogenError(f"fid={fid!r}: use 'auto', True or False")
    if crop < 32 or n_boot < 1 or fid_splits < 0:
        raise CytogenError(f"--crop must be >= 32, --n-boot >= 1 and --fid-splits >= 0, got {crop}, {n_boot} "
                           f"and {fid_splits}")
    _check_lpips(lpips_backbone, lpips_lin, lpips_net)
    out = check_out(out, OUTPUTS, "a perceptual evaluation")
    pairs_splits = read_pairs(Path(pred), Path(truth), split)
    pairs = [p for p, _ in pairs_splits]
    settings = ObjectSettings(region="none", channel=channel)
    real_o, fake_o, real_p, fake_p, obj_rows, field_rows, truth_imgs, pred_imgs = [], [], [], [], [], [], [], []
    for pair, field_split in pairs_splits:
        f = measure_field(pair, settings)
        _progress(progress, f"{pair.name}: {f.labels_true.max()} real, {f.labels_pred.max()} predicted nuclei")
        for side, img, lab, store in (("real", f.truth_image, f.labels_true, real_o),
                                      ("generated", f.pred_image, f.labels_pred, fake_o)):
            feats = object_features(img, lab)
            store.append(np.stack([feats[k] for k in FEATURES], axis=1))
            obj_rows += [{"field": pair.name, "set": side, **{k: float(feats[k][i]) for k in FEATURES}}
                         for i in range(len(feats[FEATURES[0]]))]
        real_p.append(patch_statistics(f.truth_image, PATCH))
        fake_p.append(patch_statistics(f.pred_image, PATCH))
        truth_imgs.append(f.truth_image)
        pred_imgs.append(f.pred_image)
        field_rows.append({"name": pair.name, "split": field_split, "n_nuclei_truth": int(f.labels_true.max()),
            "n_nuclei_pred": int(f.labels_pred.max()), "n_patches": len(real_p[-1])})
    names = [p.name for p in pairs]
    if sum(map(len, real_o)) < 2 or sum(map(len, fake_o)) < 2:
        raise CytogenError(f"{pred}: fewer than two nuclei detected in the truth ({sum(map(len, real_o))}) or the "
                           f"predictions ({sum(map(len, fake_o))}); give more or larger fields")
    obj = bootstrap_frechet(real_o, fake_o, n_boot=n_boot, seed=seed, paired=True)
    obj["real_halves"] = real_halves(real_o, seed=seed)
    cmp = compare_features({k: np.concatenate([m[:, j] for m in real_o]) for j, k in enumerate(FEATURES)},
                           {k: np.concatenate([m[:, j] for m in fake_o]) for j, k in enumerate(FEATURES)})
    obj.update(features=list(FEATURES), per_feature=cmp["features"],
               meaning="Frechet distance between Gaussians fitted to the per-nucleus features (intensity, contrast, "
                       "texture, area, shape), standardised by the real nuclei's mean and SD")
    pat = bootstrap_frechet(real_p, fake_p, n_boot=n_boot, seed=seed, paired=True)
    pat["real_halves"] = real_halves(real_p, seed=seed)
    pat.update(features=PATCH_DESCRIPTIONS, patch_px=PATCH, patches="non-overlapping grid of each field",
               meaning="Frechet distance between Gaussians fitted to the per-patch statistics, standardised by the "
                       "real patches' mean and SD")
    fid_mod, fid_note = _load_fid(fid)
    need_crops = fid_mod is not None or lpips_backbone is not None
    crop_mod = fid_mod[0] if fid_mod is not None else None
    if need_crops and crop_mod is None:
        from cytogen.evaluate import inception as crop_mod  # crops() lives there (no network needed)
    t_crops = [_crops(crop_mod, t, crop, n) for t, n in zip(truth_imgs, names)] if need_crops else []
    p_crops = [_crops(crop_mod, p, crop, n) for p, n in zip(pred_imgs, names)] if need_crops else []
    fid_result: dict[str, Any] | str = fid_note
    if fid_mod is not None:
        _progress(progress, "FID/KID: InceptionV3 features of the crops")
        fid_result = _fid_kid(*fid_mod, t_crops, p_crops, seed, fid_splits)
        fid_result.update(crop_px=crop, meaning=(
            f"FID and KID between InceptionV3 pool features of {crop} px crops of the real and the generated "
            f"fields ({fid_mod[0].PREPROCESSING}); KID: mean and SD over subsets (the SD is the spread of one "
            f"subset's estimate, not a standard error); baselines: the same between the crops of two halves of "
            f"the real fields ({fid_splits} splits); FID is biased upward for few crops, so compare only numbers "
            "from sets of one size; no bootstrap (cost)"), preprocessing=fid_mod[0].PREPROCESSING,
            weights_sha256=getattr(fid_mod[1], "sha256", None))
    lp: dict[str, Any] | str = "not computed: give --lpips-backbone FILE (and --lpips-lin FILE)"
    if lpips_backbone is not None:
        _progress(progress, "LPIPS: paired crops")
        lp = _lpips(lpips_backbone, lpips_lin, lpips_net, t_crops, p_crops, names, n_boot, seed)
        lp["crop_px"] = crop
        for r in field_rows:
            r["lpips"] = lp["per_field"][r["name"]]
    for r, tc in zip(field_rows, t_crops):
        r["n_crops"] = len(tc)
    result = {
        "what": "distances between the real (manifest targets) and the generated (predictions) images as sets; "
                "lower is better",
        "lower_is_better": True,
        "inputs": {"pred": str(Path(pred).resolve()), "truth": str(Path(truth).resolve()), "split": split,
                   "channel": channel},
        "n_fields": len(pairs), "normalisation": NORMALISATION,
        "detection": "nuclei segmented as cytogen evaluate objects does by default (Gaussian sigma 1 px, Otsu "
                     "threshold, touching nuclei split), the same on truth and prediction",
        "bootstrap": BOOTSTRAP, "n_boot": n_boot, "seed": seed, "baseline": BASELINE,
        "object_frechet": obj, "patch_frechet": pat, "fid": fid_result, "lpips": lp,
    }
    rows = distance_rows(result)
    real_pool = {k: np.concatenate([m[:, j] for m in real_o]) for j, k in enumerate(FEATURES)}
    fake_pool = {k: np.concatenate([m[:, j] for m in fake_o]) for j, k in enumerate(FEATURES)}
    med = obj["real_halves"]["median"]
    figs = {"distances": distances_figure(rows),
            "features": features_figure(real_pool, fake_pool, {**cmp, "frechet_real_halves": {
                "median": float("nan") if med is None else med}})}
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out) as tmp:
        tmp.mkdir()
        write_json(tmp / "perceptual.json", result)
        write_csv(tmp / "fields.csv", field_rows)
        write_csv(tmp / "objects.csv", obj_rows)
        save_figure(figs["distances"], tmp / "distances.png")
        save_figure(figs["features"], tmp / "features.png")
        write_report(tmp / "report.html", "cytogen: perceptual realism",
                     perceptual_sections(result, rows, field_rows, figs),
                     subtitle=f"predictions: {pred}; truth: {truth}")
    return result

