"""``cytogen predict``: apply a model folder to images of any size, tile by tile."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from cytogen.data.manifest import read_manifest
from cytogen.errors import CytogenError
from cytogen.io.images import Image, read_spec, stack_channels, write_image
from cytogen.predict.model_folder import LoadedModel, load_model_folder
from cytogen.predict.tiling import predict_tiled


def default_tile(model: LoadedModel) -> tuple[int, ...]:
    """Tile size: the recipe's ``predict.tile``, else twice the training patch size."""
    tile = (model.meta.get("recipe", {}).get("predict", {}) or {}).get("tile")
    if tile:
        return tuple(int(t) for t in tile)
    return tuple(2 * int(p) for p in model.meta["patch_size"])


def predict_image(model: LoadedModel, image: Image, *, tile: tuple[int, ...] | None = None,
                  overlap: float = 0.25, batch_size: int = 4, blend: str = "gaussian",
                  source: str = "image") -> np.ndarray:
    """Predict the target channels of one image; returns float32 ``(C_out, ...)`` in target units.

    Parameters
    ----------
    model
        From :func:`~cytogen.predict.model_folder.load_model_folder`.
    image
        Source image with the channels the model was trained on.
    source
        Name of the input used in error messages.
    """
    if image.ndim_spatial != model.dims:
        raise CytogenError(
            f"{source}: image is {image.ndim_spatial}D ({image.axes}) but the model is {model.dims}D; "
            f"give {model.dims}D images"
        )
    if image.data.shape[0] != model.in_channels:
        raise CytogenError(
            f"{source}: image has {image.data.shape[0]} channel(s), the model expects "
            f"{model.in_channels} ({', '.join(model.meta.get('source_channels', []))}); "
            "pick channels with path#c=K or list several files separated by ';'"
        )
    if not np.all(np.isfinite(image.data)):
        raise CytogenError(f"{source}: image contains NaN/Inf pixels; replace them before predicting")
    x = model.source_norm.normalize(image.data)
    net = model.net
    device = next(net.parameters()).device
    multiple = getattr(net, "size_multiple", 1)
    tile = tuple(tile or default_tile(model))
    if len(tile) == 1:
        tile = tile * model.dims
    if len(tile) != model.dims:
        raise CytogenError(f"tile {tile} needs {model.dims} sizes for a {model.dims}D model")
    y = predict_tiled(lambda b: net(b), x, tile=tuple(tile), overlap=overlap, batch_size=batch_size,
                      size_multiple=multiple, out_channels=model.out_channels, blend=blend,
                      device=device, dtype=torch.float32)
    return model.target_norm.denormalize(y)


def _stem(path: Path) -> str:
    return path.name.split(".")[0]


def _jobs(files: list[str] | None, data: str | Path | None, split: str | None
          ) -> list[tuple[str, list[str]]]:
    if bool(files) == (data is not None):
        raise CytogenError("give either image FILES or --data manifest.csv, not both or neither")
    if files:
        return [(_stem(Path(f.partition("#")[0])), [f]) for f in files]
    entries = read_manifest(data, require_target=False)
    if split is None:
        split = "test" if any(e.split == "test" for e in entries) else "all"
        print(f"predicting split: {split}", file=sys.stderr)
    chosen = [e for e in entries if split == "all" or e.split == split]
    if not chosen:
        raise CytogenError(f"{data}: no rows with split={split}; use --split all|train|val|test")
    return [(e.name, e.source) for e in chosen]


def predict(model_dir: str | Path, out: str | Path, *, files: list[str] | None = None,
            data: str | Path | None = None, split: str | None = None,
            tile: tuple[int, ...] | None = None, overlap: float = 0.25, batch_size: int = 4,
            blend: str = "gaussian", progress: bool = True) -> list[Path]:
    """Predict fields from files or a manifest and write ``OUT/<name>.tif`` (float32).

    Output files keep the input's pixel size; channels are named after the model's targets.
    """
    model = load_model_folder(model_dir)
    jobs = _jobs(files, data, split)
    out = Path(out)
    inputs = {Path(s.partition("#")[0]).resolve() for _, specs in jobs for s in specs}
    out_r = out.resolve()
    for folder in {p.parent for p in inputs}:
        if out_r == folder or folder in out_r.parents:
            raise CytogenError(f"{out}: output folder is, or is inside, the input folder {folder}; "
                               "choose a separate --out so inputs can never be overwritten")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for i, (name, specs) in enumerate(jobs, 1):
        image = stack_channels([read_spec(s) for s in specs])
        pred = predict_image(model, image, tile=tile, overlap=overlap, batch_size=batch_size,
                             blend=blend, source=specs[0])
        target = out / f"{name}.tif"
        if target.resolve() in inputs:
            raise CytogenError(f"{target}: would overwrite an input image; choose another --out")
        write_image(target, Image(pred, image.axes, image.pixel_size_um,
                                  list(model.meta.get("target_channels") or []) or None))
        written.append(target)
        if progress:
            print(f"[{i}/{len(jobs)}] {name}: {image.spatial_shape} -> {target}", file=sys.stderr)
    return written
