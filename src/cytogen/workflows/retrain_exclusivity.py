"""``cytogen retrain exclusivity``: greedy retraining of one-structure models with the exclusivity
loss (Sun et al. 2022, sections 2.4 and 3.2, Eq 1).

1. Every model predicts every field of the manifest; predictions and truths are kept in each
   model's *target-normalised units* (the network's own output scale: with the recipes' percentile
   normalisation ``(x - p1) / (p99.8 - p1)`` of the truth field), the common scale on which
   exclusivity (:mod:`cytogen.evaluate.exclusivity`) and MSE are measured.
2. The initial per-structure exclusivity on the **validation** split orders the structures. The
   paper is inconsistent: section 2.4 retrains "in the reverse order of the initial organelle
   exclusivity", section 3.2 "in the order of decreasing exclusivity". cytogen's default is
   ``increasing`` (the least exclusive, most overlapping structure first, so it is retrained
   against the others' original predictions and the others then adapt to it); ``decreasing``
   (section 3.2) and ``given`` (the ``--models`` order) are options.
3. For each structure in turn and each weight p (p = 0 included: the same fine-tuning without the
   term, so the comparison is fair), its model is fine-tuned from its current weights with
   ``loss.exclusivity_weight = p`` for ``steps`` steps, the frozen reference being the per-pixel
   maximum of the other structures' *current* predictions (written as ``reference`` images in
   those units). p is chosen by the ratio overall exclusivity / overall MSE (mean over structures
   of the per-structure MSE) on the validation split; that model and its predictions replace the
   structure's, and the next structure follows.
4. Before/after overall and per-structure exclusivity and MSE are reported on the **test** split.
"""

from __future__ import annotations

import math
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cytogen.config import apply_overrides, recipe_from_dict
from cytogen.data.manifest import FieldEntry, read_manifest, write_manifest
from cytogen.errors import CytogenError
from cytogen.evaluate.exclusivity import pool_exclusivity
from cytogen.io.atomic import atomic_dir, write_json
from cytogen.io.images import Image, read_spec, stack_channels, write_image
from cytogen.losses.exclusivity import max_of_others
from cytogen.predict.model_folder import LoadedModel, load_model_folder
from cytogen.workflows.evaluate import write_csv

__all__ = ["DEFAULT_WEIGHTS", "ORDERS", "retrain_exclusivity"]

DEFAULT_WEIGHTS = (0.0, 0.5, 1.0, 2.0, 4.0)
ORDERS = ("increasing", "decreasing", "given")


@dataclass
class _Field:
    entry: FieldEntry
    image: Image                                               # the source, as read
    truth: dict[str, np.ndarray] = field(default_factory=dict)  # structure -> (1, ...) normalised
    spec: dict[str, str] = field(default_factory=dict)         # structure -> target spec of that channel


def _log(progress: bool, msg: str) -> None:
    if progress:
        print(msg, file=sys.stderr, flush=True)


def _load_models(models: list[str | Path]) -> tuple[list[str], list[LoadedModel]]:
    if len(models) < 2:
        raise CytogenError(f"retrain exclusivity needs at least 2 models (one per structure), got {len(models)}; "
                           "exclusivity compares structures with each other")
    loaded = [load_model_folder(m) for m in models]
    for m, lm in zip(models, loaded):
        if lm.out_channels != 1:
            raise CytogenError(f"{m}: predicts {lm.out_channels} channels; retraining fine-tunes one model per "
                               "structure, give single-structure models (one 'cytogen train' run per target)")
    names = [str((lm.meta.get("target_channels") or ["?"])[0]) for lm in loaded]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise CytogenError(f"models {list(map(str, models))} predict the same structure(s) {dup}; give one model "
                           "per structure")
    ref = loaded[0]
    for m, lm in zip(models[1:], loaded[1:]):
        same = (lm.dims == ref.dims and lm.in_channels == ref.in_channels
                and lm.meta.get("source_channels") == ref.meta.get("source_channels"))
        if not same:
            raise CytogenError(
                f"{m} takes {lm.dims}D input {lm.meta.get('source_channels')} but {models[0]} takes {ref.dims}D "
                f"{ref.meta.get('source_channels')}; all models must predict from the same input channels")
    return names, loaded


def _read_fields(data: Path, names: list[str], models: list[LoadedModel]) -> list[_Field]:
    from cytogen.workflows.train import channel_names

    entries = read_manifest(data)
    out = []
    for e in entries:
        image = stack_channels([read_spec(s) for s in e.source])
        tgt_imgs = [read_spec(s) for s in e.target]
        tgt = stack_channels(tgt_imgs)
        tnames = channel_names(tgt.channel_names, e.target, tgt.data.shape[0])
        if tgt.spatial_shape != image.spatial_shape:
            raise CytogenError(f"{data}: field {e.name!r}: target {tgt.spatial_shape} and source "
                               f"{image.spatial_shape} differ in size")
        specs = [f"{s}#c={c}" if "#" not in s and img.data.shape[0] > 1 else s
                 for s, img in zip(e.target, tgt_imgs) for c in range(img.data.shape[0])]
        f = _Field(e, image)
        for name, lm in zip(names, models):
            if name not in tnames:
                raise CytogenError(f"{data}: field {e.name!r} has no target {name!r} (its targets: {tnames}); the "
                                   f"manifest needs one target per structure, named like the models' outputs")
            k = tnames.index(name)
            f.truth[name] = lm.target_norm.normalize(tgt.data[k:k + 1])
            f.spec[name] = specs[k]
        out.append(f)
    return out


def _predict(model: LoadedModel, f: _Field) -> np.ndarray:
    """(1, ...) prediction in the model's target-normalised units (its network's output)."""
    from cytogen.runtime import resolve_runtime
    from cytogen.workflows.predict import predict_image

    y = predict_image(model, f.image, source=f.entry.name, settings=resolve_runtime("32"))
    stats = (np.asarray(model.target_norm.offset), np.asarray(model.target_norm.scale))
    return model.target_norm.normalize(y, stats=stats)


def _metrics(names: list[str], fields: list[_Field], preds: dict[str, dict[str, np.ndarray]]) -> dict[str, Any]:
    """Overall / per-structure exclusivity and MSE per structure, pooled over the given fields."""
    stacks = [np.concatenate([preds[n][f.entry.name] for n in names]) for f in fields]
    res = pool_exclusivity(stacks, names=names)
    mse = {}
    for n in names:
        sq = sum(float(((preds[n][f.entry.name] - f.truth[n]) ** 2).sum()) for f in fields)
        mse[n] = sq / sum(f.truth[n].size for f in fields)
    overall_mse = float(np.mean(list(mse.values())))
    return {"overall_exclusivity": float(res.overall), "exclusivity": dict(res.per_structure),
            "mse": mse, "overall_mse": overall_mse,
            "ratio": float(res.overall) / overall_mse if overall_mse > 0 else math.inf}


def _order(names: list[str], per: dict[str, float], order: str) -> list[str]:
    if order not in ORDERS:
        raise CytogenError(f"order {order!r} is not one of {ORDERS}")
    if order == "given":
        return list(names)
    key = {n: (-math.inf if not np.isfinite(per[n]) else per[n]) for n in names}  # never highest: least exclusive
    return sorted(names, key=lambda n: key[n], reverse=order == "decreasing")


def _fine_tune_manifest(folder: Path, name: str, fields: list[tuple[_Field, str]],
                        reference: dict[str, np.ndarray]) -> Path:
    """Manifest of the fine-tuning run: train and validation rows with this structure's target and
    the reference images (written next to it)."""
    entries = []
    for f, split in fields:
        ref = folder / "references" / f"{f.entry.name}.tif"
        write_image(ref, Image(reference[f.entry.name].astype(np.float32), f.image.axes, None, [f"max_not_{name}"]))
        e = f.entry
        entries.append(FieldEntry(e.name, e.source, [f.spec[name]], e.mask, split, e.pixel_size_um, e.group,
                                  str(ref)))
    return write_manifest(folder / "manifest.csv", entries)


def _copy_model(src: Path, dst: Path) -> None:
    with atomic_dir(dst) as tmp:
        shutil.copytree(src, tmp)


def _write_trajectory(path: Path, rows: list[dict[str, Any]], names: list[str]) -> None:
    cols = ["step", "structure", "p", "split", "overall_exclusivity", "overall_mse", "ratio", "chosen"]
    write_csv(path, [{**{k: r[k] for k in cols}, **{f"exclusivity_{n}": r["exclusivity"][n] for n in names},
                      **{f"mse_{n}": r["mse"][n] for n in names}} for r in rows])


def retrain_exclusivity(models: list[str | Path], data: str | Path, out: str | Path, *,
                        weights: tuple[float, ...] = DEFAULT_WEIGHTS, steps: int = 500,
                        order: str = "increasing", splits: tuple[str, str] = ("val", "test"),
                        overrides: list[str] | None = None, progress: bool = True) -> dict[str, Any]:
    """Retrain single-structure models one after another with the exclusivity loss.

    Parameters
    ----------
    models
        Model folders (``RUN/model``), one per structure, all from the same input channels.
    data
        Manifest with ``train``, ``val`` and ``test`` rows whose targets include every structure
        (named as the models' ``target_channels``; e.g. ``target = dapi.tif;map2.tif;nfh.tif``).
    out
        New folder: ``trajectory.csv``, ``summary.json``, ``models/<structure>/``,
        ``trajectory.png``, ``before_after.png``, ``report.html`` and ``work/`` (fine-tuning runs).
    weights
        The p values scanned per structure (0 is added when missing).
    steps
        Fine-tuning steps per structure and p.
    order
        ``increasing`` (default), ``decreasing`` (initial validation exclusivity) or ``given``.
    splits
        (validation, test) manifest splits: p is chosen on the first, before/after reported on the
        second; the fine-tuning runs train on ``train`` and validate on the first.
    overrides
        ``key=value`` recipe overrides for the fine-tuning runs (on top of each model's recipe).

    Returns
    -------
    dict
        What ``OUT/summary.json`` holds.
    """
    from cytogen.workflows.train import train

    t0 = time.time()
    out, data = Path(out), Path(data)
    weights = tuple(sorted({0.0, *(float(w) for w in weights)}))
    if any(w < 0 or not np.isfinite(w) for w in weights):
        raise CytogenError(f"--weights must be finite and >= 0, got {list(weights)}")
    if steps < 1:
        raise CytogenError(f"--steps must be >= 1, got {steps}")
    if order not in ORDERS:
        raise CytogenError(f"--order {order!r} is not one of {ORDERS}")
    if out.exists() and any(out.iterdir()):
        raise CytogenError(f"{out} exists and is not empty; choose a new --out")
    names, loaded = _load_models(models)
    fields = _read_fields(data, names, loaded)
    val_split, test_split = splits
    if val_split == test_split or "train" in splits:
        raise CytogenError(f"--split {val_split},{test_split}: give two different splits other than train")
    by_split = {"train": [f for f in fields if f.entry.split == "train"],
                "val": [f for f in fields if f.entry.split == val_split],
                "test": [f for f in fields if f.entry.split == test_split]}
    for s, label in (("train", "train"), ("val", val_split), ("test", test_split)):
        if not by_split[s]:
            raise CytogenError(f"{data}: no split={label} rows; retraining fine-tunes on train, chooses p on "
                               f"{val_split} and reports on {test_split}")
    out.mkdir(parents=True, exist_ok=True)
    current = {n: Path(m) for n, m in zip(names, models)}
    _log(progress, f"retrain exclusivity: {len(names)} structures {names}, {len(fields)} fields, p in {list(weights)}, "
                   f"{steps} steps each; predicting with the initial models")
    preds = {n: {f.entry.name: _predict(lm, f) for f in fields} for n, lm in zip(names, loaded)}
    before_val, before_test = _metrics(names, by_split["val"], preds), _metrics(names, by_split["test"], preds)
    seq = _order(names, before_val["exclusivity"], order)
    per = ", ".join(f"{n} {before_val['exclusivity'][n]:.4f}" for n in names)
    _log(progress, f"initial validation exclusivity {before_val['overall_exclusivity']:.4f} ({per}); "
                   f"order {seq} ({order})")
    rows: list[dict[str, Any]] = [{"step": 0, "structure": "", "p": "", "split": val_split, "chosen": True, **before_val}]
    chosen: dict[str, float] = {}
    for step, name in enumerate(seq, 1):
        idx = names.index(name)
        work = out / "work" / f"step{step}_{name}"
        ref = {f.entry.name: max_of_others(np.concatenate([preds[n][f.entry.name] for n in names]), idx)[None]
               for f in fields}
        manifest = _fine_tune_manifest(work, name, [(f, "train") for f in by_split["train"]]
                                       + [(f, "val") for f in by_split["val"]], ref)
        base = load_model_folder(current[name])
        trials = []
        for p in weights:
            run = work / f"p{p:g}"
            rec = apply_overrides(recipe_from_dict(base.meta.get("recipe") or {}, str(current[name])),
                                  [f"loss.exclusivity_weight={p}", "train.export=last", *(overrides or [])])
            train(rec, manifest, run, max_steps=steps, progress=False, init_model=current[name])
            model = load_model_folder(run / "model")
            trial = {n: dict(preds[n]) for n in names}
            trial[name] = {f.entry.name: _predict(model, f) for f in by_split["val"]}  # the others once chosen
            m = _metrics(names, by_split["val"], trial)
            trials.append((p, model, trial, m))
            _log(progress, f"[{step}/{len(seq)}] {name} p={p:g}: val overall exclusivity {m['overall_exclusivity']:.4f}, "
                           f"MSE {m['mse'][name]:.5f} (overall {m['overall_mse']:.5f}), ratio {m['ratio']:.3f} "
                           f"({time.time() - t0:.0f} s)")
        best = max(range(len(trials)), key=lambda i: trials[i][3]["ratio"])
        for i, (p, _, _, m) in enumerate(trials):
            rows.append({"step": step, "structure": name, "p": p, "split": val_split, "chosen": i == best, **m})
        p, model, preds, _ = trials[best]
        val_names = {f.entry.name for f in by_split["val"]}
        preds[name].update({f.entry.name: _predict(model, f) for f in fields if f.entry.name not in val_names})
        chosen[name] = p
        _copy_model(model.folder, out / "models" / name)
        current[name] = out / "models" / name
        _write_trajectory(out / "trajectory.csv", rows, names)
        _log(progress, f"[{step}/{len(seq)}] {name}: chose p={p:g} (highest validation ratio)")
    after_test = _metrics(names, by_split["test"], preds)
    summary = _summary(names, seq, order, weights, steps, chosen, before_test, after_test, before_val, current,
                       time.time() - t0)
    write_json(out / "summary.json", summary)
    _report(out, names, rows, summary)
    _log(progress, f"test overall exclusivity {before_test['overall_exclusivity']:.4f} -> "
                   f"{after_test['overall_exclusivity']:.4f}; wrote {out / 'report.html'}")
    return summary


def _summary(names: list[str], seq: list[str], order: str, weights: tuple[float, ...], steps: int,
             chosen: dict[str, float], before: dict[str, Any], after: dict[str, Any], before_val: dict[str, Any],
             current: dict[str, Path], seconds: float) -> dict[str, Any]:
    gain = (after["overall_exclusivity"] / before["overall_exclusivity"] - 1.0) * 100 \
        if before["overall_exclusivity"] > 0 else None
    return {
        "structures": names, "order": seq, "order_rule": f"{order} initial validation exclusivity",
        "weights_scanned": list(weights), "steps_per_fine_tuning": steps, "chosen_p": chosen,
        "choice_rule": "max overall exclusivity / overall MSE (mean of per-structure MSE) on the validation split",
        "units": "each structure in its model's target-normalised units ((x - p1) / (p99.8 - p1) of the truth "
                 "field for the percentile recipes); predictions likewise (the network output)",
        "test": {"before": before, "after": after, "overall_exclusivity_gain_percent": gain},
        "val_before": before_val, "models": {n: str(current[n]) for n in names}, "seconds": round(seconds, 1),
    }


def _report(out: Path, names: list[str], rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    from cytogen.report.figures import save_figure
    from cytogen.report.html import Section, write_report
    from cytogen.report.retrain_figures import before_after_figure, trajectory_figure

    t = summary["test"]
    fig_t = trajectory_figure(rows, summary["order"])
    fig_b = before_after_figure(t["before"], t["after"], names)
    save_figure(fig_t, out / "trajectory.png")
    save_figure(fig_b, out / "before_after.png")
    table = [{"structure": n, "chosen p": summary["chosen_p"].get(n, ""),
              "exclusivity before": t["before"]["exclusivity"][n], "exclusivity after": t["after"]["exclusivity"][n],
              "MSE before": t["before"]["mse"][n], "MSE after": t["after"]["mse"][n]} for n in names]
    table.append({"structure": "overall", "exclusivity before": t["before"]["overall_exclusivity"],
                  "exclusivity after": t["after"]["overall_exclusivity"], "MSE before": t["before"]["overall_mse"],
                  "MSE after": t["after"]["overall_mse"]})
    traj = [{k: r[k] for k in ("step", "structure", "p", "overall_exclusivity", "overall_mse", "ratio", "chosen")}
            for r in rows]
    gain = t["overall_exclusivity_gain_percent"]
    write_report(out / "report.html", "Exclusivity retraining", [
        Section("Test split: before and after", [
            f"Order: {summary['order']} ({summary['order_rule']}); p scanned {summary['weights_scanned']}, "
            f"{summary['steps_per_fine_tuning']} fine-tuning steps each; chosen by {summary['choice_rule']}.",
            f"Overall exclusivity gain on test: {gain:.1f} %." if gain is not None else "",
            f"Units: {summary['units']}."], [("Test split", table)], [("MSE and exclusivity per structure, before "
                                                                        "(blue) and after (red)", fig_b)]),
        Section("Greedy trajectory (validation split)", [], [("trajectory.csv", traj)],
                [("Overall exclusivity / MSE per p, structure by structure (chosen p marked)", fig_t)]),
    ])
