"""``cytogen predict``: apply a model folder to images of any size, tile by tile.

TIFF output predicts each image in memory; OME-Zarr output streams: the input is opened
lazily and predicted strip by strip, so memory does not grow with the image size.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from cytogen.data.manifest import read_manifest
from cytogen.errors import CytogenError
from cytogen.io.images import Image, read_spec, stack_channels, write_image
from cytogen.io.lazy import LazyImage, open_spec_lazy, stack_lazy
from cytogen.io.ome_zarr import create_ome_zarr
from cytogen.predict.model_folder import LoadedModel, load_model_folder
from cytogen.predict.oom import TileOOMError, smaller_tile
from cytogen.predict.tiling import predict_tiled
from cytogen.runtime import RuntimeSettings, resolve_runtime
from cytogen.runtime.inference import inference_fn

T = TypeVar("T")


def default_tile(model: LoadedModel) -> tuple[int, ...]:
    """Tile size: the recipe's ``predict.tile``, else twice the training patch size."""
    tile = (model.meta.get("recipe", {}).get("predict", {}) or {}).get("tile")
    if tile:
        return tuple(int(t) for t in tile)
    return tuple(2 * int(p) for p in model.meta["patch_size"])


def _tile_fn(model: LoadedModel, settings: RuntimeSettings | None, batch_size: int
             ) -> tuple[Callable[[torch.Tensor], torch.Tensor], torch.dtype]:
    """How the network is applied to a batch of tiles, and the dtype the tiles are sent in.

    The one place that decides how the generator runs at prediction time (both the in-memory
    and the streaming path use it): :func:`cytogen.runtime.inference.inference_fn` with the
    run-time ``settings`` (default: resolved for the model's device with ``precision="auto"``),
    built once per model and settings so a compiled graph is reused across images.
    """
    if settings is None:
        settings = resolve_runtime("auto", accelerator=_device(model).type)
    cache = model.__dict__.setdefault("_tile_fns", {})
    key = (settings.precision, settings.channels_last, settings.compile, int(batch_size))
    if key not in cache:
        if not settings.channels_last:  # --no-fast after a fast call: back to the default layout
            model.net.to(memory_format=torch.contiguous_format)
        cache[key] = inference_fn(model.net, model.dims, settings, batch_size=batch_size)
    return cache[key], torch.float32


def _device(model: LoadedModel) -> torch.device:
    param = next(model.net.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _check_input(model: LoadedModel, axes: str, n_channels: int, source: str) -> None:
    dims = len(axes) - 1
    if dims != model.dims:
        raise CytogenError(
            f"{source}: image is {dims}D ({axes}) but the model is {model.dims}D; "
            f"give {model.dims}D images"
        )
    if n_channels != model.in_channels:
        raise CytogenError(
            f"{source}: image has {n_channels} channel(s), the model expects "
            f"{model.in_channels} ({', '.join(model.meta.get('source_channels', []))}); "
            "pick channels with path#c=K or list several files separated by ';'"
        )


def _tile_for(model: LoadedModel, tile: tuple[int, ...] | None) -> tuple[int, ...]:
    tile = tuple(tile or default_tile(model))
    if len(tile) == 1:
        tile = tile * model.dims
    if len(tile) != model.dims:
        raise CytogenError(f"tile {tile} needs {model.dims} sizes for a {model.dims}D model")
    return tile


def _with_tile_backoff(run: Callable[[tuple[int, ...]], T], tile: tuple[int, ...],
                       shape: tuple[int, ...], multiple: Any, source: str) -> T:
    """``run(tile)``, again with half the tile per axis each time a single tile runs out of memory."""
    while True:
        try:
            return run(tile)
        except TileOOMError as exc:
            smaller = smaller_tile(tile, shape, multiple)
            if smaller == exc.tile:
                raise TileOOMError(f"{source}: {exc} (tiles cannot shrink below {exc.tile})",
                                   exc.tile) from None
            warnings.warn(f"{source}: out of memory with tile {exc.tile}; starting the image "
                          f"again with tile {smaller}", RuntimeWarning, stacklevel=2)
            tile = smaller


def predict_image(model: LoadedModel, image: Image, *, tile: tuple[int, ...] | None = None,
                  overlap: float = 0.25, batch_size: int = 4, blend: str = "gaussian",
                  source: str = "image", settings: RuntimeSettings | None = None) -> np.ndarray:
    """Predict the target channels of one image; returns float32 ``(C_out, ...)`` in target units.

    The whole image is normalised and predicted in memory. When the model runs out of memory
    the batch size is halved (down to 1), then the image is predicted again with the tile
    halved per axis (see :func:`cytogen.predict.oom.smaller_tile`).

    Parameters
    ----------
    model
        From :func:`~cytogen.predict.model_folder.load_model_folder`.
    image
        Source image with the channels the model was trained on.
    tile, overlap, batch_size, blend
        Tiling, see :func:`~cytogen.predict.tiling.predict_tiled`; the default tile is
        :func:`default_tile`.
    source
        Name of the input used in error messages.
    settings
        Run-time settings (precision, channels-last, compile) from
        :func:`cytogen.runtime.resolve_runtime`; default ``precision="auto"``.
    """
    _check_input(model, image.axes, image.data.shape[0], source)
    if not np.all(np.isfinite(image.data)):
        raise CytogenError(f"{source}: image contains NaN/Inf pixels; replace them before predicting")
    x = model.source_norm.normalize(image.data)
    fn, dtype = _tile_fn(model, settings, batch_size)
    multiple = getattr(model.net, "size_multiple", 1)

    def run(t: tuple[int, ...]) -> np.ndarray:
        return predict_tiled(fn, x, tile=t, overlap=overlap, batch_size=batch_size,
                             size_multiple=multiple, out_channels=model.out_channels,
                             blend=blend, device=_device(model), dtype=dtype)

    y = _with_tile_backoff(run, _tile_for(model, tile), image.spatial_shape, multiple, source)
    return model.target_norm.denormalize(y)


def _zarr_chunks(shape: tuple[int, ...], tile: tuple[int, ...]) -> tuple[int, ...]:
    """Output chunks one tile high along the first spatial axis (rows are gathered into whole
    chunk rows by the writer, so each chunk is written once)."""
    caps = (256, 256) if len(shape) == 4 else (1024,)
    return (1, min(shape[1], tile[0]), *(min(n, c) for n, c in zip(shape[2:], caps)))


def _in_pieces(fn: Callable[[np.ndarray], np.ndarray], block: np.ndarray,
               rows: int = 32) -> np.ndarray:
    """``fn`` applied elementwise to ``block`` a few rows at a time, in place (bounded temporaries)."""
    for r in range(0, block.shape[1], rows):
        block[:, r:r + rows] = fn(block[:, r:r + rows])
    return block


def predict_image_stream(model: LoadedModel, image: LazyImage, target: str | Path, *,
                         tile: tuple[int, ...] | None = None, overlap: float = 0.25,
                         batch_size: int = 4, blend: str = "gaussian", source: str = "image",
                         compression: str | None = "zlib",
                         settings: RuntimeSettings | None = None) -> Path:
    """Predict a lazily opened image strip by strip into an OME-Zarr image at ``target``.

    Memory stays at about one band of tile rows across the image (plus one batch), whatever
    the image length: the input is read one strip of tiles at a time, each tile is normalised
    with field statistics estimated from a spread subsample of the image
    (:meth:`~cytogen.data.normalize.Normalizer.stats_for_lazy`), and finished rows are
    denormalised and written as soon as no tile can touch them. The OME-Zarr is built in a
    temporary folder next to ``target`` and renamed into place only when complete; after an
    out-of-memory fallback to a smaller tile it is started again from scratch.

    Parameters
    ----------
    model
        From :func:`~cytogen.predict.model_folder.load_model_folder`.
    image
        From :func:`cytogen.io.lazy.open_image_lazy` (or ``open_spec_lazy`` / ``stack_lazy``).
    target
        Destination ``.ome.zarr`` folder (float32, the image's pixel size, the model's target
        channel names).
    tile, overlap, batch_size, blend
        Tiling, see :func:`~cytogen.predict.tiling.predict_tiled`.
    source
        Name of the input used in error messages.
    compression : {"zlib", "zstd", None}
        Chunk compressor of the output.
    settings
        Run-time settings, as for :func:`predict_image`.

    Returns
    -------
    pathlib.Path
        ``target``.
    """
    _check_input(model, image.axes, image.shape[0], source)
    target = Path(target)
    try:
        stats = model.source_norm.stats_for_lazy(image.data)
    except CytogenError as exc:
        raise CytogenError(f"{source}: {exc}") from None
    fn, dtype = _tile_fn(model, settings, batch_size)
    multiple = getattr(model.net, "size_multiple", 1)
    shape = (model.out_channels, *image.spatial_shape)
    names = list(model.meta.get("target_channels") or []) or None

    def run(t: tuple[int, ...]) -> None:
        with create_ome_zarr(target, shape, np.float32, image.axes, image.pixel_size_um, names,
                             compression, chunks=_zarr_chunks(shape, t)) as writer:
            try:
                predict_tiled(fn, image.data, tile=t, overlap=overlap, batch_size=batch_size,
                              size_multiple=multiple, out_channels=model.out_channels,
                              blend=blend, device=_device(model), dtype=dtype, sink=writer.write,
                              transform=lambda x: model.source_norm.normalize(x, stats),
                              out_transform=lambda y: _in_pieces(model.target_norm.denormalize, y))
            except TileOOMError:
                raise
            except CytogenError as exc:
                raise CytogenError(f"{source}: {exc}") from None

    _with_tile_backoff(run, _tile_for(model, tile), image.spatial_shape, multiple, source)
    return target


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


OUTPUT_FORMATS = ("tif", "ome-zarr")


def _is_zarr(spec: str) -> bool:
    return Path(spec.partition("#")[0]).name.lower().endswith(".zarr")


def predict(model_dir: str | Path, out: str | Path, *, files: list[str] | None = None,
            data: str | Path | None = None, split: str | None = None,
            tile: tuple[int, ...] | None = None, overlap: float = 0.25, batch_size: int = 4,
            blend: str = "gaussian", progress: bool = True,
            output_format: str | None = None, precision: str = "auto", fast: bool = True,
            compile: bool = False, accelerator: str = "auto") -> list[Path]:
    """Predict fields from files or a manifest and write ``OUT/<name>.tif`` or ``.ome.zarr``.

    Output images are float32, keep the input's pixel size, and name their channels after
    the model's targets. Inputs are never modified.

    Parameters
    ----------
    model_dir
        Model folder (``RUN/model``).
    out
        Output folder; must not be, or be inside, a folder holding inputs.
    files, data, split
        Image files (``path#c=K`` picks a channel; ``a.tif;b.tif`` stacks channels), or a
        manifest CSV and the split to predict (default: ``test`` when present, else all).
    tile, overlap, batch_size, blend
        Tiling, see :func:`~cytogen.predict.tiling.predict_tiled`. Out-of-memory errors halve
        the batch size, then the tile (the image is started again).
    progress
        Print one line per image to stderr.
    output_format : {"tif", "ome-zarr"}, optional
        ``"tif"``: the image is read and predicted in memory (OME-TIFF output).
        ``"ome-zarr"``: the input is opened lazily (OME-Zarr or TIFF) and predicted strip by
        strip into ``OUT/<name>.ome.zarr`` (see :func:`predict_image_stream`), so memory does
        not grow with the image size; normalisation statistics then come from a subsample.
        Default: ``"ome-zarr"`` for ``.zarr`` / ``.ome.zarr`` inputs, ``"tif"`` otherwise.
    precision, fast, compile, accelerator
        Run-time settings (see :func:`cytogen.runtime.resolve_runtime`): by default
        channels-last, bf16 autocast where the hardware runs it faster, batches of tiles
        under ``inference_mode``; ``fast=False`` is plain float32; ``compile=True`` adds
        ``torch.compile`` (worth it for many or large images). Written to
        ``OUT/runtime.json``.

    Returns
    -------
    list of pathlib.Path
        The written predictions, in input order.
    """
    if output_format not in (None, *OUTPUT_FORMATS):
        raise CytogenError(f"output format {output_format!r} is not one of {OUTPUT_FORMATS}; "
                           "use --output-format tif or ome-zarr")
    settings = resolve_runtime(precision, fast=fast, compile=compile, accelerator=accelerator)
    model = load_model_folder(model_dir, device="cuda" if settings.device == "cuda" else "cpu")
    jobs = _jobs(files, data, split)
    out = Path(out)
    inputs = {Path(s.partition("#")[0]).resolve() for _, specs in jobs for s in specs}
    out_r = out.resolve()
    for folder in {p.parent for p in inputs}:
        if out_r == folder or folder in out_r.parents:
            raise CytogenError(f"{out}: output folder is, or is inside, the input folder {folder}; "
                               "choose a separate --out so inputs can never be overwritten")
    out.mkdir(parents=True, exist_ok=True)
    settings.apply()
    tiling = dict(tile=tile, overlap=overlap, batch_size=batch_size, blend=blend, settings=settings)
    written = []
    for i, (name, specs) in enumerate(jobs, 1):
        fmt = output_format or ("ome-zarr" if all(_is_zarr(s) for s in specs) else "tif")
        target = out / (f"{name}.ome.zarr" if fmt == "ome-zarr" else f"{name}.tif")
        if target.resolve() in inputs:
            raise CytogenError(f"{target}: would overwrite an input image; choose another --out")
        if fmt == "ome-zarr":
            with ExitStack() as stack:
                image = stack_lazy([stack.enter_context(open_spec_lazy(s)) for s in specs])
                predict_image_stream(model, image, target, source=specs[0], **tiling)
        else:
            image = stack_channels([read_spec(s) for s in specs])
            pred = predict_image(model, image, source=specs[0], **tiling)
            write_image(target, Image(pred, image.axes, image.pixel_size_um,
                                      list(model.meta.get("target_channels") or []) or None))
        written.append(target)
        if progress:
            for note in settings.notes if i == 1 else []:  # once, after inputs proved valid
                print(f"note: {note}", file=sys.stderr)
            print(f"[{i}/{len(jobs)}] {name}: {image.spatial_shape} -> {target}", file=sys.stderr)
    settings.write(out / "runtime.json")
    return written
