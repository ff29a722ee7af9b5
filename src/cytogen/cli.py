"""Command line: ``cytogen <verb> ...``. Parses arguments and calls workflows, nothing more.

User mistakes (:class:`~cytogen.errors.CytogenError`) are printed as one line without a
traceback and the process exits with status 2; cytogen's own warnings print as one line too.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from cytogen import __version__
from cytogen.errors import CytogenError


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.replace("x", ",").split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 256 or 256,256, got {text!r}") from None


def _auto_or(parse):
    """An argparse type accepting ``auto`` or what ``parse`` accepts."""
    def parse_or_auto(text: str):
        if text.strip().lower() == "auto":
            return "auto"
        try:
            return parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected auto or a number, got {text!r}") from None
    parse_or_auto.__name__ = getattr(parse, "__name__", "value")
    return parse_or_auto


def _cmd_demo(a: argparse.Namespace) -> None:
    from cytogen.workflows.demo import demo

    m = demo(a.out, n_fields=a.n_fields, size=a.size, seed=a.seed, max_steps=a.max_steps,
             max_minutes=a.max_minutes, overrides=a.set)
    print(json.dumps({k: m[k] for k in ("median_pearson_r", "passes_bar", "n_test_fields", "seconds")}))


def _cmd_synth_cells(a: argparse.Namespace) -> None:
    from cytogen.synth.cells import write_synthetic_dataset

    shape = (a.z, a.size, a.size) if a.three_d else (a.size, a.size)
    path = write_synthetic_dataset(a.out, n_fields=a.n_fields, shape=shape, organelles=a.organelles,
                                   seed=a.seed, pixel_size_um=a.pixel_size_um,
                                   cells_per_field=a.cells_per_field, crowded_fraction=a.crowded_fraction,
                                   progress=True)
    print(path)


def _cmd_synth_statcell(a: argparse.Namespace) -> None:
    from cytogen.synth.statcell import write_statcell_dataset

    shape = (a.z, a.size, a.size) if a.three_d else (a.size, a.size)
    path = write_statcell_dataset(a.out, n_fields=a.n_fields, shape=shape, structures=a.structures,
                                  seed=a.seed, pixel_size_um=a.pixel_size_um,
                                  cells_per_field=a.cells_per_field, progress=True)
    print(path)


def two_numbers(text: str, sep: str, problem: str) -> tuple[float, float]:
    """``"a<sep>b"`` -> (a, b) for argparse; ``problem`` is the error shown otherwise."""
    try:
        lo, hi = (float(v) for v in text.split(sep))
    except ValueError:
        raise argparse.ArgumentTypeError(problem) from None
    return lo, hi


def _range(text: str) -> tuple[float, float]:
    """``LOW:HIGH`` -> (low, high) for argparse."""
    return two_numbers(text, ":", f"{text!r} is not LOW:HIGH (two numbers, e.g. 0.8:1.25)")


def _number_or_range(text: str) -> float | tuple[float, float]:
    """A number, or ``LOW:HIGH`` for a per-image uniform draw."""
    if ":" in text:
        return _range(text)
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number or LOW:HIGH") from None


def _cmd_synth_from_masks(a: argparse.Namespace) -> None:
    from cytogen.workflows.synthesize_masks import synthesize_from_masks

    s = synthesize_from_masks(a.model, a.shapes or [], a.out, n_images=a.n_images, size=a.size, depth=a.depth,
                              density=a.density, area_fraction=a.area_fraction, pixel_size_um=a.pixel_size_um,
                              max_overlap=a.max_overlap, clustered=a.clustered, scale=a.scale, mix=a.mix,
                              shape_model=a.shape_model, n_shapes=a.n_shapes, shape_channel=a.shape_channel,
                              val_fraction=a.val_fraction, seed=a.seed, precision=a.precision)
    print(json.dumps({k: s[k] for k in ("out", "n_images", "n_nuclei", "nuclei_per_100x100um", "area_fraction",
                                          "seconds")}))


def _cmd_manifest(a: argparse.Namespace) -> None:
    from cytogen.data.manifest import build_manifest, read_manifest

    path = build_manifest(a.root, a.source, a.target, a.out, mask=a.mask, test_match=a.test_match,
                          val_fraction=a.val_fraction, test_fraction=a.test_fraction, seed=a.seed,
                          pixel_size_um=a.pixel_size_um, group_regex=a.group_regex)
    entries = read_manifest(path)
    counts = {s: sum(e.split == s for e in entries) for s in ("train", "val", "test")}
    print(f"{path}: {len(entries)} fields {counts}")


def _cmd_train(a: argparse.Namespace) -> None:
    from cytogen.workflows.train import train

    s = train(a.recipe, a.data, a.out, overrides=(a.set or []) + _speed_overrides(a),
              max_steps=a.max_steps, resume=a.resume)
    if "rank" not in s:  # other DDP ranks stay quiet
        print(json.dumps(s))


def _speed_overrides(a: argparse.Namespace) -> list[str]:
    """Recipe overrides for the hardware flags of ``train`` (flags win over ``--set``)."""
    out = []
    for flag, key in (("precision", "precision"), ("accelerator", "accelerator"), ("devices", "devices"),
                      ("num_nodes", "num_nodes"), ("strategy", "strategy")):
        value = getattr(a, flag, None)
        if value is not None:
            out.append(f"train.{key}={value}")
    if getattr(a, "no_fast", False):
        out.append("train.fast=false")
    if getattr(a, "compile", False):
        out.append("train.compile=true")
    return out


def _add_speed_flags(p: argparse.ArgumentParser, training: bool) -> None:
    g = p.add_argument_group("speed and hardware")
    g.add_argument("--precision", default=None,
                   help="auto (default: bf16 autocast where supported and faster, else float32), "
                        "32, bf16-mixed or 16-mixed (GPU)" + ("" if training else
                        "; int8: ONNX Runtime int8 on CPUs with AMX/VNNI, checked against float32 "
                        "(pip install 'cytogen[onnx]'; CYTOGEN_INT8_ANYWAY=1 on other CPUs)"))
    g.add_argument("--no-fast", action="store_true",
                   help="plain float32 in the default memory layout (bit-exact reference runs)")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the network (slow first steps, faster afterwards)")
    g.add_argument("--accelerator", default=None, help="auto (default), cpu, gpu")
    if training:
        g.add_argument("--devices", default=None,
                       help="devices per node: 1 (default), N, -1 for all, or a list like 0,1")
        g.add_argument("--num-nodes", type=int, default=None, help="machines (DDP across nodes)")
        g.add_argument("--strategy", default=None,
                       help="Lightning strategy: auto (default), ddp, ddp_spawn, fsdp, ...")


def _cmd_predict(a: argparse.Namespace) -> None:
    kwargs = dict(files=a.files or None, data=a.data, split=a.split, tile=a.tile, overlap=a.overlap,
                  batch_size=a.batch_size, blend=a.blend, output_format=a.output_format,
                  precision=a.precision or "auto", fast=not a.no_fast, compile=a.compile,
                  accelerator=a.accelerator or "auto", memory_budget=a.memory_budget, resume=a.resume,
                  backend=a.backend)
    spread = dict(tta=a.tta, ensemble=a.ensemble or (), mc_dropout=a.mc_dropout, samples=a.samples,
                  seed=a.seed)
    uncertain = a.tta or a.ensemble or a.mc_dropout is not None or a.samples is not None
    if a.devices == 1 and a.num_nodes == 1:
        from cytogen.workflows.predict import predict

        written = predict(a.model, a.out, **kwargs, **spread)
        print(f"wrote {len(written)} prediction(s){' with their spread' if uncertain else ''} to {a.out}")
        return
    if uncertain:
        raise CytogenError("--tta / --ensemble / --mc-dropout / --samples run in one process; drop "
                           "--devices / --num-nodes (or shard the fields yourself with --data and --split)")
    from cytogen.workflows.predict_shard import RankStopped, predict_sharded

    try:
        s = predict_sharded(a.model, a.out, devices=a.devices, num_nodes=a.num_nodes, **kwargs)
    except RankStopped:  # rank 0 prints why
        raise SystemExit(2) from None
    if s.rank == 0:  # other ranks stay quiet
        done = f" ({len(s.skipped)} already there, skipped)" if s.skipped else ""
        print(f"wrote {len(s.written)} prediction(s) to {a.out} with {s.world_size} processes{done}")


def _cmd_eval_pixels(a: argparse.Namespace) -> None:
    from cytogen.workflows.evaluate import evaluate_pixels

    r = evaluate_pixels(a.pred, a.truth, a.out, split=a.split, normalize=a.normalize)
    print(f"note: {r['units']}; calibrated_* = {r['families']['calibrated']}", file=sys.stderr)
    print(json.dumps({"n_fields": r["n_fields"], "normalize": r["normalize"],
                      **{f"median_{k}": v.get("median") for k, v in r["metrics"].items()}}))


def _radii(text: str) -> list[str | float]:
    out: list[str | float] = []
    for t in text.split(","):
        t = t.strip()
        if not t:
            continue
        try:
            out.append(float(t))
        except ValueError:
            if t.lower() != "nuclear":
                raise argparse.ArgumentTypeError(f"radius {t!r}: give numbers in um or 'nuclear'") from None
            out.append("nuclear")
    return out


def _threshold(text: str) -> str | float:
    try:
        return float(text)
    except ValueError:
        return text


def _cmd_eval_realism(a: argparse.Namespace) -> None:
    from cytogen.workflows.evaluate_realism import evaluate_realism

    r = evaluate_realism(a.real, a.synthetic, a.out, real_split=a.real_split, synthetic_split=a.synthetic_split)
    print(json.dumps({"n_real": r["n_real"], "n_synthetic": r["n_synthetic"], "frechet": round(r["frechet"], 3),
                      "frechet_real_halves": r["frechet_real_halves"].get("median")}))


def _cmd_eval_objects(a: argparse.Namespace) -> None:
    from cytogen.workflows.evaluate_objects import ObjectSettings, evaluate_objects

    s = ObjectSettings(pixel_size_um=a.pixel_size_um, radii=a.radius_um, labels=a.labels, match=a.match,
                       max_distance_um=a.max_distance_um, threshold=a.threshold, sigma_px=a.sigma_px,
                       min_area_um2=a.min_area_um2, min_area_px=a.min_area_px,
                       exclude_border=a.exclude_border, region=a.region,
                       marker_distance_um=a.marker_distance_um, channel=a.channel)
    r = evaluate_objects(a.pred, a.truth, a.out, settings=s, split=a.split, segmenter=a.segmenter)["summary"]
    print(json.dumps({"n_true": r["n_true"], "n_pred": r["n_pred"], "recall": r["recall"],
                      "within": {w["radius"]: round(w["fraction"], 4) for w in r["within"]},
                      "report": str(Path(a.out) / "report.html")}))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used to document the CLI)."""
    p = argparse.ArgumentParser(prog="cytogen", description="Deep generative models of microscopy cell images.")
    p.add_argument("--version", action="version", version=f"cytogen {__version__}")
    sub = p.add_subparsers(dest="verb", required=True)

    d = sub.add_parser("demo", help="synthesise cells, train actin->nucleus, predict, evaluate, report")
    d.add_argument("--out", required=True, help="new folder for data, run, predictions and report.html")
    d.add_argument("--n-fields", type=int, default=24)
    d.add_argument("--size", type=int, default=256)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--max-steps", type=int, default=None)
    d.add_argument("--max-minutes", type=float, default=None, help="training time budget")
    d.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a recipe key")
    d.set_defaults(func=_cmd_demo)

    s = sub.add_parser("synthesize", help="make synthetic data")
    ssub = s.add_subparsers(dest="what", required=True)
    c = ssub.add_parser("cells", help="fields of cells with exact masks and a manifest")
    c.add_argument("--out", required=True)
    c.add_argument("--n-fields", type=int, default=24)
    c.add_argument("--size", type=int, default=256, help="field size in pixels (Y = X)")
    c.add_argument("--3d", dest="three_d", action="store_true", help="3D fields")
    c.add_argument("--z", type=int, default=32, help="number of z planes for --3d")
    c.add_argument("--organelles", action="store_true", help="add an organelles channel and masks")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--pixel-size-um", type=float, default=0.5,
                   help="in-plane pixel size (default 0.5); cells stay 20-45 um long")
    c.add_argument("--cells-per-field", type=int, default=None,
                   help="cells per field (default: one per 1225 um^2, 13 in a 256 x 256 field at 0.5 um)")
    c.add_argument("--crowded-fraction", type=float, default=0.0,
                   help="fraction of the fields (of each split) with 2.5x the cells: crowded, touching cells "
                        "(default 0); segment.csv is always written for 'cytogen segment cells'")
    c.set_defaults(func=_cmd_synth_cells)
    sc = ssub.add_parser("statcell", help="Statistical Cell control fields (blank, membrane/DNA copies, "
                                          "noise, nucleoli, cytoplasmic organelles) and FIELDS.csv")
    sc.add_argument("--out", required=True, help="new folder (FIELDS.csv, images/, masks/)")
    sc.add_argument("--n-fields", type=int, default=18, help="fields; at least 3 per structure (default 18)")
    sc.add_argument("--size", type=int, default=256, help="field size in pixels (Y = X)")
    sc.add_argument("--structures", default="blank,membrane_copy,dna_copy,noise,nucleoli,cytoplasmic",
                    help="comma-separated control structures the fields cycle through")
    sc.add_argument("--pixel-size-um", type=float, default=1.0,
                    help="in-plane pixel size (default 1.0: the 20-45 um cells fit 64 x 64 crops)")
    sc.add_argument("--cells-per-field", type=int, default=None,
                    help="cells per field (default: one per 1225 um^2)")
    sc.add_argument("--3d", dest="three_d", action="store_true", help="3D fields")
    sc.add_argument("--z", type=int, default=32, help="number of z planes for --3d")
    sc.add_argument("--seed", type=int, default=0)
    sc.set_defaults(func=_cmd_synth_statcell)
    fm = ssub.add_parser("from-masks", help="random layouts of real nucleus shapes turned into images by a "
                                            "masks -> image generator: images, exact labels and a manifest")
    fm.add_argument("--model", required=True, help="GEN/model of 'cytogen train configs/masks2nuclei.yaml'")
    fm.add_argument("--shapes", nargs="+", default=None, help="label images whose whole nuclei are the shapes")
    fm.add_argument("--shape-model", default=None,
                    help="REF/model of 'cytogen train configs/statcell_reference2d.yaml': sample new shapes from it")
    fm.add_argument("--n-shapes", type=int, default=200, help="shapes sampled from --shape-model (default 200)")
    fm.add_argument("--shape-channel", default="dna", help="decoded channel of --shape-model: dna (default) or cell")
    fm.add_argument("--out", required=True, help="new folder: images/, labels/, manifest.csv, summary.json")
    fm.add_argument("--n-images", type=int, default=8)
    fm.add_argument("--size", type=int, default=512, help="canvas side in pixels (default 512)")
    fm.add_argument("--depth", type=int, default=None, help="z planes per canvas (3D generators and shapes)")
    dens = fm.add_mutually_exclusive_group(required=True)
    dens.add_argument("--density", type=_number_or_range,
                      help="nuclei per 100 x 100 um (needs a pixel size); LOW:HIGH draws one per image")
    dens.add_argument("--area-fraction", type=_number_or_range,
                      help="labelled fraction of the canvas, e.g. 0.3; LOW:HIGH draws one per image")
    fm.add_argument("--scale", type=_range, default=None,
                    help="LOW:HIGH: each image's nuclei scaled by one uniform draw (default: their own size)")
    fm.add_argument("--mix", choices=["pooled", "per-image"], default="pooled",
                    help="pooled: every image uses all shapes; per-image: each image the shapes of one label "
                         "image (or of the shape model), chosen at random")
    fm.add_argument("--pixel-size-um", type=float, default=None,
                    help="pixel size of the label images where their files record none")
    fm.add_argument("--max-overlap", type=float, default=0.0,
                    help="fraction of a shape that may lie under earlier ones (default 0: touching only)")
    fm.add_argument("--clustered", type=float, default=0.0,
                    help="fraction of the nuclei placed around random cluster centres (default 0: uniform)")
    fm.add_argument("--val-fraction", type=float, default=0.1, help="images marked split=val (default 0.1)")
    fm.add_argument("--seed", type=int, default=0)
    fm.add_argument("--precision", default="auto", help="auto (bf16 where faster), 32 or bf16-mixed")
    fm.set_defaults(func=_cmd_synth_from_masks)

    m = sub.add_parser("manifest", help="pair image files into a manifest CSV")
    m.add_argument("root", help="folder the patterns are relative to")
    m.add_argument("--source", required=True, help="glob, e.g. 'Channel1-*.tif' (';' joins several)")
    m.add_argument("--target", required=True, help="glob, e.g. 'Channel2-*.tif'")
    m.add_argument("--mask", default=None, help="glob of mask images")
    m.add_argument("--out", required=True, help="manifest CSV to write")
    m.add_argument("--test-match", default=None, help="regex: matching field names go to test")
    m.add_argument("--val-fraction", type=float, default=0.15)
    m.add_argument("--test-fraction", type=float, default=0.15)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--pixel-size-um", type=float, default=None)
    m.add_argument("--group-regex", default=None, help="regex whose first group is a field's group")
    m.set_defaults(func=_cmd_manifest)

    t = sub.add_parser("train", help="train a model from a recipe")
    t.add_argument("recipe", help="YAML recipe, e.g. configs/translate_unet2d.yaml")
    t.add_argument("--data", required=True, help="manifest CSV (CELLS/cells.csv for statcell recipes)")
    t.add_argument("--out", required=True, help="run folder")
    t.add_argument("--max-steps", type=int, default=None)
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a recipe key")
    t.add_argument("--resume", action="store_true", help="continue an interrupted run")
    _add_speed_flags(t, training=True)
    t.set_defaults(func=_cmd_train)

    pr = sub.add_parser("predict", help="predict target channels for images of any size")
    pr.add_argument("model", help="model folder (RUN/model)")
    pr.add_argument("files", nargs="*", help="image files (path#c=K picks a channel)")
    pr.add_argument("--data", default=None, help="manifest CSV instead of FILES")
    pr.add_argument("--split", default=None, help="manifest split to predict (default: test if any)")
    pr.add_argument("--out", required=True)
    pr.add_argument("--tile", type=_auto_or(_ints), default=None,
                    help="tile size, e.g. 256 or 256,256, or auto: the largest tile in the memory "
                         "budget (default: the model's recipe predict.tile)")
    pr.add_argument("--overlap", type=_auto_or(float), default=None,
                    help="fraction of a tile shared with its neighbours, in [0, 1), or auto: "
                         "twice the model's effective receptive-field radius in pixels "
                         "(default: the model's recipe predict.overlap)")
    pr.add_argument("--batch-size", type=_auto_or(int), default=None,
                    help="tiles per model call, or auto: as many as fit the memory budget "
                         "(default: the model's recipe predict.batch_size)")
    pr.add_argument("--memory-budget", type=float, default=None, metavar="GIB",
                    help="GiB of activation memory per batch of tiles for auto tiling "
                         "(default: min(2, 1/4 of the free memory of the device))")
    pr.add_argument("--blend", choices=("gaussian", "linear", "constant"), default=None,
                    help="tile blend window (default: the model's recipe predict.blend)")
    pr.add_argument("--output-format", choices=("tif", "ome-zarr"), default=None,
                    help="OME-TIFF or OME-Zarr output; both stream strip by strip with bounded "
                         "memory (default: ome-zarr for .zarr inputs, else tif)")
    pr.add_argument("--resume", action="store_true",
                    help="skip fields whose output exists (complete: outputs are written atomically) "
                         "and predict only the missing ones (default: overwrite)")
    _add_speed_flags(pr, training=False)
    pr.add_argument("--backend", choices=("torch", "onnxruntime"), default=None,
                    help="what runs the network: torch (default) or onnxruntime (CPU, float32 unless "
                         "--precision int8; same tiling and outputs; pip install 'cytogen[onnx]')")
    u = pr.add_argument_group("uncertainty (OUT/<name>.tif = mean, OUT/<name>_spread.tif = per-pixel SD; "
                              "passes multiply, and so does the time)")
    u.add_argument("--tta", action="store_true",
                   help="average the 8 dihedral transforms (rotations and flips, inverted exactly): 8x the time")
    u.add_argument("--ensemble", nargs="+", metavar="RUN/model", default=None,
                   help="further model folders trained alike, averaged with MODEL: (1 + n)x the time")
    u.add_argument("--mc-dropout", type=int, default=None, metavar="N",
                   help="N passes with the dropout layers on (models trained with dropout): Nx the time")
    u.add_argument("--samples", type=int, default=None, metavar="N",
                   help="N samples of an adversarial generator (its dropout is its noise): Nx the time")
    u.add_argument("--seed", type=int, default=0, help="seed of the dropout masks (default 0)")
    pr.add_argument("--devices", type=int, default=1,
                    help="processes per node, one per GPU (or CPU processes with --accelerator cpu); "
                         "the fields are shared among them, each written once (default: 1)")
    pr.add_argument("--num-nodes", type=int, default=1,
                    help="machines of a SLURM (srun) or torchrun job sharing the fields (default: 1)")
    pr.set_defaults(func=_cmd_predict)

    e = sub.add_parser("evaluate", help="score predictions")
    esub = e.add_subparsers(dest="what", required=True)
    ep = esub.add_parser("pixels", help="Pearson r, raw and calibrated L1/MSE/SSIM/PSNR per field")
    ep.add_argument("--pred", required=True, help="folder of <name>.tif predictions")
    ep.add_argument("--truth", required=True, help="manifest CSV whose targets are the truth")
    ep.add_argument("--out", required=True)
    ep.add_argument("--split", default=None)
    ep.add_argument("--normalize", choices=("percentile", "none"), default="percentile",
                    help="percentile (default): prediction and truth both mapped by the truth's "
                         "(x - p1) / (p99.8 - p1), errors in units of that range; none: target units")
    ep.set_defaults(func=_cmd_eval_pixels)
    eo = esub.add_parser("objects", help="nuclei found, matched and measured, with intervals and p-values")
    eo.add_argument("--pred", required=True, help="folder of <name>.tif predicted nucleus images")
    eo.add_argument("--truth", required=True, help="manifest CSV (targets) or a folder of same-named images")
    eo.add_argument("--out", required=True)
    eo.add_argument("--split", default=None)
    eo.add_argument("--pixel-size-um", type=float, default=None,
                    help="in-plane pixel size in um; wins over the manifest's pixel_size_um column, "
                         "which wins over the image metadata")
    eo.add_argument("--radius-um", type=_radii, default=None,
                    help="radii, e.g. 4,1 or 4,1,nuclear (default: 4,1,nuclear; nuclear only without pixel size)")
    eo.add_argument("--labels", action="store_true", help="inputs are instance label images, not intensities")
    eo.add_argument("--segmenter", default=None, metavar="SEG/model",
                    help="segment real and predicted nuclei with this trained nucleus segmenter "
                         "(cytogen train configs/segment_nuclei2d.yaml) instead of a threshold")
    eo.add_argument("--match", choices=("centroid", "bbox", "bbox-best"), default="centroid",
                    help="centroid (default): one-to-one optimal centroid assignment within "
                         "--max-distance-um; bbox: one-to-one bounding-box assignment maximising the "
                         "total overlap (IoU); bbox-best: the actin->nucleus paper's rule (Vasudevan "
                         "et al.), each prediction paired with the real box it overlaps most, so "
                         "several predictions may share one real nucleus")
    eo.add_argument("--max-distance-um", type=float, default=None, help="matching cut-off (default: largest radius)")
    eo.add_argument("--threshold", type=_threshold, default="otsu", help="otsu, li, triangle or a value")
    eo.add_argument("--sigma-px", type=float, default=1.0, help="smoothing before thresholding")
    eo.add_argument("--min-area-um2", type=float, default=None)
    eo.add_argument("--min-area-px", type=int, default=20)
    eo.add_argument("--exclude-border", action="store_true", help="drop objects cut by the image border")
    eo.add_argument("--region", choices=("source", "none"), default="source",
                    help="cell region for the restricted chance: from the manifest's source image")
    eo.add_argument("--marker-distance-um", type=float, default=15.0)
    eo.add_argument("--channel", type=int, default=0, help="channel of multi-channel images to evaluate")
    eo.set_defaults(func=_cmd_eval_objects)
    er = esub.add_parser("realism", help="synthetic vs real objects: features, KS tests, Frechet distance")
    er.add_argument("--real", required=True, help="manifest of real images (source) and their labels (target)")
    er.add_argument("--synthetic", required=True, help="manifest of synthetic images and labels (synthesize from-masks)")
    er.add_argument("--out", required=True, help="new folder: realism.json, objects.csv, features.png")
    er.add_argument("--real-split", default=None, help="only these rows of --real (default: all)")
    er.add_argument("--synthetic-split", default=None, help="only these rows of --synthetic (default: all)")
    er.set_defaults(func=_cmd_eval_realism)

    from cytogen.cli_cellseg import add_evaluate_cells_parser, add_segment_parser

    add_evaluate_cells_parser(esub)
    add_segment_parser(sub)

    from cytogen.cli_statcell import add_cells_parser, add_statcell_parser

    add_cells_parser(sub)
    add_statcell_parser(sub)

    from cytogen.cli_exclusivity import add_evaluate_exclusivity_parser
    from cytogen.cli_retrain import add_retrain_parser
    from cytogen.cli_shapes import add_evaluate_positions_parser, add_evaluate_shapes_parser

    add_evaluate_exclusivity_parser(esub)
    add_evaluate_shapes_parser(esub)
    add_evaluate_positions_parser(esub)

    from cytogen.cli_perceptual import add_evaluate_perceptual_parser

    add_evaluate_perceptual_parser(esub)

    from cytogen.cli_uncertainty import add_evaluate_uncertainty_parser

    add_evaluate_uncertainty_parser(esub)
    add_retrain_parser(sub)

    from cytogen.cli_export import add_export_parser

    add_export_parser(sub)
    return p


_DEFAULT_FORMATWARNING = warnings.formatwarning


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """cytogen's warnings as ``cytogen: warning: ...`` (no source line); other libraries' as usual."""
    if "cytogen" in Path(filename).parts:
        return f"cytogen: warning: {message}\n"
    return _DEFAULT_FORMATWARNING(message, category, filename, lineno, line)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    warnings.formatwarning = _format_warning
    try:
        args.func(args)
    except CytogenError as exc:
        message = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        print(f"cytogen: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cytogen: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = _DEFAULT_FORMATWARNING  # main() may be called in-process (tests, scripts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
