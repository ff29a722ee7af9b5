"""``cytogen predict``: apply a model folder to images of any size, tile by tile.

Both outputs stream: the input is opened lazily and predicted strip by strip into an OME-Zarr
(:func:`predict_image_stream`) or an OME-TIFF (:func:`predict_image_stream_tiff`), so memory does
not grow with the image size. Masks -> image models, which arrange the whole label image at once,
and inputs that cannot be opened lazily are predicted in memory (:func:`predict_image`, TIFF
output).
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from cytogen.data.manifest import read_manifest
from cytogen.errors import CytogenError
from cytogen.io.images import Image, read_spec, stack_channels, write_image
from cytogen.io.atomic import write_json
from cytogen.io.lazy import LazyImage, open_spec_lazy, stack_lazy
from cytogen.io.ome_zarr import create_ome_zarr
from cytogen.io.tiff import create_tiff
from cytogen.predict.defaults import TilingPlan, resolve_tiling
from cytogen.predict.model_folder import LoadedModel, load_model_folder
from cytogen.predict.oom import TileOOMError, smaller_tile
from cytogen.predict.tiling import predict_tiled
from cytogen.predict.uncertainty import Uncertainty
from cytogen.runtime import RuntimeSettings, resolve_runtime
from cytogen.runtime.inference import inference_fn

T = TypeVar("T")
#: ``make(shape, tile)``: a context manager yielding a row writer (``writer.write(start, block)``).
WriterFactory = Callable[[tuple[int, ...], tuple[int, ...]], AbstractContextManager[Any]]


def _settings(model: LoadedModel, settings: RuntimeSettings | None) -> RuntimeSettings:
    """The given run-time settings, else ``precision="auto"`` resolved for the model's device."""
    if settings is None:
        settings = resolve_runtime("auto", accelerator=_device(model).type)
    return settings


def _tile_fn(model: LoadedModel, settings: RuntimeSettings
             ) -> tuple[Callable[[torch.Tensor], torch.Tensor], torch.dtype]:
    """How the network is applied to a batch of tiles, and the dtype the tiles are sent in.

    The one place that decides how the generator runs at prediction time (both the in-memory
    and the streaming path use it): :func:`cytogen.runtime.inference.inference_fn` with the
    run-time ``settings``, built once per model and settings so a compiled graph is reused
    across images. Under ``settings.compile`` the tiling pads short batches to the batch size
    in use (``predict_tiled(..., pad_batches=True)``), so the graph sees one batch shape per
    batch size.
    """
    cache = model.__dict__.setdefault("_tile_fns", {})
    key = (settings.backend, settings.precision, settings.fast, settings.compile)  # layout: decided inside
    if key not in cache and settings.backend == "onnxruntime":  # int8 is checked against float32
        from cytogen.predict.onnx_backend import Float32TileFn, Int8TileFn

        kind = Int8TileFn if settings.precision == "int8" else Float32TileFn
        model.net.to(memory_format=torch.contiguous_format)
        cache[key] = kind(model.net.eval(), settings.threads, model.net.size_multiple,
                          report=settings.probe)
    if key not in cache:  # (inference_fn puts model.net back in the default layout where needed)
        cache[key] = inference_fn(model.net, model.dims, settings)
    return cache[key], torch.float32


def _passes_fn(model: LoadedModel, settings: RuntimeSettings, uncertainty: Uncertainty | None
               ) -> tuple[Callable[[torch.Tensor], torch.Tensor], int]:
    """The tile function and its output channels: the model's own, or with ``uncertainty`` the
    mean and spread of all its passes (``2 x C_out`` channels, see :mod:`cytogen.predict.uncertainty`)."""
    if uncertainty is None or not uncertainty.active:
        return _tile_fn(model, settings)[0], model.out_channels
    if settings.backend == "onnxruntime" and uncertainty.draws > 1:
        raise CytogenError("--mc-dropout / --samples need the PyTorch backend: an exported ONNX graph "
                           "has its dropout removed; drop --backend onnxruntime / --precision int8")
    cache = model.__dict__.setdefault("_spread_fns", {})
    key = (id(uncertainty), settings.backend, settings.precision, settings.fast, settings.compile)
    if key not in cache:
        uncertainty.check(model)
        cache[key] = uncertainty.tile_fn(model, lambda m: _tile_fn(m, settings)[0])
    uncertainty.reseed()  # each image starts its dropout masks from the seed
    return cache[key], 2 * model.out_channels


def _denormalize(model: LoadedModel, y: np.ndarray) -> np.ndarray:
    """Target units: the mean channels through the target statistics; spread channels (after
    the first ``C_out``) scaled by them (an SD has no offset)."""
    c = model.out_channels
    if y.shape[0] == c:
        return model.target_norm.denormalize(y)
    out = np.empty(y.shape, np.float32)
    out[:c] = model.target_norm.denormalize(y[:c])
    scale = np.abs(np.asarray(model.target_norm.scale, np.float64)).reshape((-1,) + (1,) * (y.ndim - 1))
    out[c:] = (y[c:].astype(np.float64) * scale).astype(np.float32)
    return out


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
    if model.mask_channels is not None:
        if n_channels != 1:
            raise CytogenError(f"{source}: image has {n_channels} channels; this model turns one instance "
                               "label image into an image (pick one channel with path#c=K)")
        return
    if n_channels != model.in_channels:
        raise CytogenError(
            f"{source}: image has {n_channels} channel(s), the model expects "
            f"{model.in_channels} ({', '.join(model.meta.get('source_channels', []))}); "
            "pick channels with path#c=K or list several files separated by ';'"
        )


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
                  overlap: float | None = None, batch_size: int | None = None,
                  blend: str | None = None, source: str = "image",
                  settings: RuntimeSettings | None = None,
                  plan: TilingPlan | None = None,
                  progress: Callable[[int, int], None] | None = None) -> np.ndarray:
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
        Tiling, see :func:`~cytogen.predict.tiling.predict_tiled`. None (the default) takes
        the model's recipe (``predict.*``), see :func:`~cytogen.predict.defaults.resolve_tiling`.
    source
        Name of the input used in error messages.
    settings
        Run-time settings (precision, channels-last, compile) from
        :func:`cytogen.runtime.resolve_runtime`; default ``precision="auto"``.
    plan
        A resolved :class:`~cytogen.predict.defaults.TilingPlan` (margin and balance
        included), used instead of ``tile``, ``overlap``, ``batch_size`` and ``blend``.
    progress
        Called as ``progress(done_tiles, total_tiles)`` after each batch of tiles (see
        :func:`~cytogen.predict.tiling.predict_tiled`; an out-of-memory restart counts again
        from 0), e.g. by the napari widget's progress bar.
    """
    return _predict_in_memory(model, image, tile=tile, overlap=overlap, batch_size=batch_size,
                              blend=blend, source=source, settings=settings, plan=plan,
                              progress=progress)


def predict_image_spread(model: LoadedModel, image: Image, uncertainty: Uncertainty, **kwargs: Any
                         ) -> tuple[np.ndarray, np.ndarray]:
    """As :func:`predict_image` with several passes per tile (``uncertainty``, see
    :mod:`cytogen.predict.uncertainty`); returns ``(mean, spread)``, each float32
    ``(C_out, ...)`` in target units (spread: the per-pixel standard deviation of the passes).
    Keyword arguments are those of :func:`predict_image`."""
    y = _predict_in_memory(model, image, uncertainty=uncertainty, **kwargs)
    return y[:model.out_channels], y[model.out_channels:]


def _predict_in_memory(model: LoadedModel, image: Image, *, tile: tuple[int, ...] | None = None,
                       overlap: float | None = None, batch_size: int | None = None,
                       blend: str | None = None, source: str = "image",
                       settings: RuntimeSettings | None = None, plan: TilingPlan | None = None,
                       progress: Callable[[int, int], None] | None = None,
                       uncertainty: Uncertainty | None = None) -> np.ndarray:
    """:func:`predict_image`'s work; with ``uncertainty`` the output has mean then spread channels."""
    _check_input(model, image.axes, image.data.shape[0], source)
    if not np.all(np.isfinite(image.data)):
        raise CytogenError(f"{source}: image contains NaN/Inf pixels; replace them before predicting")
    plan = (plan or resolve_tiling(model, tile=tile, overlap=overlap, batch_size=batch_size,
                                   blend=blend)).for_image(image.spatial_shape)
    enc = model.mask_channels  # a masks -> image model: the label image spread over its channels
    x = enc.encode(image.data, name=source) if enc is not None else model.source_norm.normalize(image.data)
    settings = _settings(model, settings)
    fn, out_channels = _passes_fn(model, settings, uncertainty)
    multiple = model.net.size_multiple  # every generator declares it (models.protocol)

    def run(t: tuple[int, ...]) -> np.ndarray:
        return predict_tiled(fn, x, tile=t, overlap=plan.overlap, batch_size=plan.batch_size,
                             size_multiple=multiple, out_channels=out_channels,
                             blend=plan.blend, device=_device(model), dtype=torch.float32,
                             margin=plan.margin, balance=plan.balance,
                             pad_batches=settings.compile, progress=progress)

    y = _with_tile_backoff(run, plan.tile, image.spatial_shape, multiple, source)
    return _denormalize(model, y)


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


def _stream(model: LoadedModel, image: LazyImage, make_writer: WriterFactory, *,
            tile: tuple[int, ...] | None, overlap: float | None, batch_size: int | None,
            blend: str | None, source: str, settings: RuntimeSettings | None,
            plan: TilingPlan | None = None, uncertainty: Uncertainty | None = None) -> None:
    """Predict a lazily opened image strip by strip into the writers ``make_writer`` opens.

    One writer per attempt: after an out-of-memory fallback to a smaller tile the output is
    started again from scratch (the failed writer's context discards its partial output).
    """
    _check_input(model, image.axes, image.shape[0], source)
    if model.mask_channels is not None:
        raise CytogenError(f"{source}: a masks -> image model arranges the whole label image at once and "
                           "cannot stream it; write TIFF output (--output-format tif), which predicts "
                           "it in memory")
    try:
        stats = model.source_norm.stats_for_lazy(image.data)
    except CytogenError as exc:
        raise CytogenError(f"{source}: {exc}") from None
    plan = (plan or resolve_tiling(model, tile=tile, overlap=overlap, batch_size=batch_size,
                                   blend=blend)).for_image(image.spatial_shape)
    settings = _settings(model, settings)
    fn, out_channels = _passes_fn(model, settings, uncertainty)
    multiple = model.net.size_multiple  # every generator declares it (models.protocol)
    shape = (out_channels, *image.spatial_shape)

    def run(t: tuple[int, ...]) -> None:
        with make_writer(shape, t) as writer:
            try:
                predict_tiled(fn, image.data, tile=t, overlap=plan.overlap,
                              batch_size=plan.batch_size, size_multiple=multiple,
                              out_channels=out_channels, blend=plan.blend,
                              device=_device(model), dtype=torch.float32, sink=writer.write,
                              margin=plan.margin, balance=plan.balance,
                              pad_batches=settings.compile,
                              transform=lambda x: model.source_norm.normalize(x, stats),
                              out_transform=lambda y: _in_pieces(lambda b: _denormalize(model, b), y))
            except TileOOMError:
                raise
            except CytogenError as exc:
                raise CytogenError(f"{source}: {exc}") from None

    _with_tile_backoff(run, plan.tile, image.spatial_shape, multiple, source)


def _target_names(model: LoadedModel) -> list[str] | None:
    return list(model.meta.get("target_channels") or []) or None


def predict_image_stream(model: LoadedModel, image: LazyImage, target: str | Path, *,
                         tile: tuple[int, ...] | None = None, overlap: float | None = None,
                         batch_size: int | None = None, blend: str | None = None,
                         source: str = "image",
                         compression: str | None = "zlib",
                         settings: RuntimeSettings | None = None,
                         plan: TilingPlan | None = None,
                         uncertainty: Uncertainty | None = None) -> Path:
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
        Tiling, as for :func:`predict_image` (None: from the model's recipe).
    source
        Name of the input used in error messages.
    compression : {"zlib", "zstd", None}
        Chunk compressor of the output.
    settings
        Run-time settings, as for :func:`predict_image`.
    uncertainty
        Several passes per tile (:mod:`cytogen.predict.uncertainty`): ``target`` holds their
        mean and :func:`spread_path` of it their per-pixel SD, streamed side by side.

    Returns
    -------
    pathlib.Path
        ``target``.
    """
    target = Path(target)

    def make_at(path: Path) -> WriterFactory:
        def make(shape: tuple[int, ...], t: tuple[int, ...]) -> AbstractContextManager[Any]:
            return create_ome_zarr(path, shape, np.float32, image.axes, image.pixel_size_um,
                                   _target_names(model), compression, chunks=_zarr_chunks(shape, t))
        return make

    _stream(model, image, _writers(model, target, make_at, uncertainty), tile=tile, overlap=overlap,
            batch_size=batch_size, blend=blend, source=source, settings=settings, plan=plan,
            uncertainty=uncertainty)
    return target


def spread_path(target: str | Path) -> Path:
    """Where the spread of a prediction at ``target`` goes: ``<name>_spread`` + the same suffixes."""
    target = Path(target)
    stem, dot, ext = target.name.partition(".")
    return target.with_name(f"{stem}_spread{dot}{ext}")


class _PairWriter:
    """Mean channels to one writer, spread channels to the other."""

    def __init__(self, mean: Any, spread: Any, channels: int) -> None:
        self.mean, self.spread, self.channels = mean, spread, channels

    def write(self, start: int, block: np.ndarray) -> None:
        self.mean.write(start, block[:self.channels])
        self.spread.write(start, block[self.channels:])


@contextmanager
def _pair(make_mean: WriterFactory, make_spread: WriterFactory, shape: tuple[int, ...],
          tile: tuple[int, ...], channels: int) -> Iterator[_PairWriter]:
    one = (channels, *shape[1:])
    with make_mean(one, tile) as mean, make_spread(one, tile) as spread:
        yield _PairWriter(mean, spread, channels)


def _writers(model: LoadedModel, target: Path, make_at: Callable[[Path], WriterFactory],
             uncertainty: Uncertainty | None) -> WriterFactory:
    """The writer factory of one output, or with ``uncertainty`` of the mean and spread pair."""
    if uncertainty is None or not uncertainty.active:
        return make_at(target)
    mean, spread = make_at(target), make_at(spread_path(target))
    return lambda shape, t: _pair(mean, spread, shape, t, model.out_channels)


def predict_image_stream_tiff(model: LoadedModel, image: LazyImage, target: str | Path, *,
                              tile: tuple[int, ...] | None = None, overlap: float | None = None,
                              batch_size: int | None = None, blend: str | None = None,
                              source: str = "image", compression: str | None = "zlib",
                              settings: RuntimeSettings | None = None,
                              plan: TilingPlan | None = None,
                              uncertainty: Uncertainty | None = None) -> Path:
    """Predict a lazily opened image strip by strip into an OME-TIFF at ``target``.

    As :func:`predict_image_stream` (same tiling, subsample normalisation and out-of-memory
    fallback), written with :func:`cytogen.io.tiff.create_tiff`: finished rows are spooled to
    a hidden raw file next to ``target`` (as large as the uncompressed prediction), then the
    tiled OME-TIFF is written from it band by band and renamed into place. Memory stays at
    about one band of tile rows whatever the image size; an error leaves no file.

    Parameters
    ----------
    model, image, tile, overlap, batch_size, blend, source, settings, uncertainty
        As for :func:`predict_image_stream`.
    target
        Destination ``.tif`` file (float32, the image's axes and pixel size, the model's
        target channel names), read back by :func:`cytogen.io.images.read_image` like a
        file of :func:`cytogen.io.images.write_image`.
    compression : {"zlib", "zstd", None}
        Tile compression of the output.

    Returns
    -------
    pathlib.Path
        ``target``.
    """
    target = Path(target)

    def make_at(path: Path) -> WriterFactory:
        def make(shape: tuple[int, ...], t: tuple[int, ...]) -> AbstractContextManager[Any]:
            return create_tiff(path, shape, np.float32, image.axes, image.pixel_size_um,
                               _target_names(model), compression)
        return make

    _stream(model, image, _writers(model, target, make_at, uncertainty), tile=tile, overlap=overlap,
            batch_size=batch_size, blend=blend, source=source, settings=settings, plan=plan,
            uncertainty=uncertainty)
    return target


def _stem(path: Path) -> str:
    return path.name.split(".")[0]


def image_jobs(files: list[str] | None, data: str | Path | None, split: str | None
          ) -> list[tuple[str, list[str], float | None]]:
    """``(name, source specs, manifest pixel size or None)`` per image to predict."""
    if bool(files) == (data is not None):
        raise CytogenError("give either image FILES or --data manifest.csv, not both or neither")
    if files:
        return [(_stem(Path(f.partition("#")[0])), [f], None) for f in files]
    entries = read_manifest(data, require_target=False)
    if split is None:
        split = "test" if any(e.split == "test" for e in entries) else "all"
        print(f"predicting split: {split}", file=sys.stderr)
    chosen = [e for e in entries if split == "all" or e.split == split]
    if not chosen:
        raise CytogenError(f"{data}: no rows with split={split}; use --split all|train|val|test")
    return [(e.name, e.source, e.pixel_size_um) for e in chosen]


def check_out_folder(out: Path, jobs: list[tuple[str, list[str], float | None]]) -> set[Path]:
    """The resolved input files of ``jobs``; refuses an ``out`` that is, or is inside, an input folder."""
    inputs = {Path(s.partition("#")[0]).resolve() for _, specs, _ in jobs for s in specs}
    out_r = Path(out).resolve()
    for folder in {p.parent for p in inputs}:
        if out_r == folder or folder in out_r.parents:
            raise CytogenError(f"{out}: output folder is, or is inside, the input folder {folder}; "
                               "choose a separate --out so inputs can never be overwritten")
    return inputs


def pixel_size(own: tuple[float, ...] | None, manifest_um: float | None, ndim: int
                ) -> tuple[float, ...] | None:
    """The manifest's in-plane ``pixel_size_um`` over the file's own, as training applies it.

    As :func:`cytogen.data.datasets.read_field`: Y and X take the manifest value; a 3D stack
    keeps the file's Z spacing when it has one, else Z takes the manifest value too.
    """
    if manifest_um is None:
        return own
    z = (own[0] if own else manifest_um,) if ndim == 3 else ()
    return (*z, float(manifest_um), float(manifest_um))


OUTPUT_FORMATS = ("tif", "ome-zarr")


def _is_zarr(spec: str) -> bool:
    return Path(spec.partition("#")[0]).name.lower().endswith(".zarr")


def predict(model_dir: str | Path, out: str | Path, *, files: list[str] | None = None,
            data: str | Path | None = None, split: str | None = None,
            tile: tuple[int, ...] | None = None, overlap: float | None = None,
            batch_size: int | None = None, blend: str | None = None, progress: bool = True,
            output_format: str | None = None, precision: str = "auto", fast: bool = True,
            compile: bool = False, accelerator: str = "auto", resume: bool = False,
            memory_budget: float | None = None, backend: str | None = None,
            tta: bool = False, ensemble: list[str | Path] | tuple[str | Path, ...] = (),
            mc_dropout: int | None = None, samples: int | None = None,
            seed: int = 0) -> list[Path]:
    """Predict fields from files or a manifest and write ``OUT/<name>.tif`` or ``.ome.zarr``.

    Output images are float32, carry the input's pixel size (a manifest's ``pixel_size_um``
    column overrides the file's, as in training), and name their channels after the model's
    targets. Inputs are never modified.

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
        Tiling, see :func:`~cytogen.predict.tiling.predict_tiled`. None (the default) takes
        each from the model's training recipe (``predict.tile`` etc.; an unset tile is twice
        the training patch size), see :func:`~cytogen.predict.defaults.resolve_tiling`.
        Out-of-memory errors halve the batch size, then the tile (the image is started again).
    progress
        Print the tiling used, notes and one line per image to stderr.
    output_format : {"tif", "ome-zarr"}, optional
        ``"tif"``: ``OUT/<name>.tif`` (OME-TIFF, see :func:`predict_image_stream_tiff`);
        ``"ome-zarr"``: ``OUT/<name>.ome.zarr`` (see :func:`predict_image_stream`). Both
        open the input lazily (OME-Zarr or TIFF) and predict it strip by strip, so memory
        does not grow with the image size; normalisation statistics then come from a
        subsample of at most about 4 million pixels per channel (every pixel of smaller
        images). Masks -> image models, and inputs that cannot be opened lazily (channels
        on two stored axes, with a warning), are read and predicted in memory (TIFF only).
        Default: ``"ome-zarr"`` for ``.zarr`` / ``.ome.zarr`` inputs, ``"tif"`` otherwise.
    precision, fast, compile, accelerator
        Run-time settings (see :func:`cytogen.runtime.resolve_runtime`): by default
        channels-last, bf16 autocast where the hardware runs it faster, batches of tiles
        under ``inference_mode``; ``fast=False`` is plain float32; ``compile=True`` adds
        ``torch.compile`` (worth it for many or large images); ``precision="int8"`` runs
        the network through ONNX Runtime statically quantised to int8 on CPUs with fast int8
        (refused elsewhere, see :mod:`cytogen.runtime.int8`), calibrated and checked against
        float32 on the first tiles of the first image
        (:class:`~cytogen.predict.onnx_backend.Int8TileFn`; refused above the tolerance, with
        the measured error in ``runtime.json``). Written to
        ``OUT/runtime.json`` with the tiling used and where each setting came from
        (``"tiling"``: values and ``"from"``: given / recipe / default).
    backend : {"torch", "onnxruntime"}, optional
        What runs the network: PyTorch (default), or ONNX Runtime on the CPU in float32 (the
        network exported once with ``torch.onnx``, dynamic batch and tile size; same tiling,
        normalisation and outputs, equal to PyTorch within 1e-4 relative; needs the ``onnx``
        extra). int8 always runs through ONNX Runtime.
    resume
        Skip fields whose output already exists (outputs are written atomically, so an
        existing one is complete) and predict only the missing ones; by default an existing
        output is overwritten.
    memory_budget
        GiB of activation memory per batch of tiles for ``auto`` tiling (the default of new
        recipes; ``tile="auto"`` forces it); default min(2 GiB, 1/4 of free memory).
    tta, ensemble, mc_dropout, samples, seed
        Uncertainty (:mod:`cytogen.predict.uncertainty`): the 8 dihedral transforms of each
        tile (``tta``), further model folders averaged with ``model_dir`` (``ensemble``), ``N``
        passes with the dropout layers on for a model trained with dropout (``mc_dropout``) or
        ``N`` samples of an adversarial generator whose noise is its dropout (``samples``),
        dropout masks seeded by ``seed``. They combine (passes multiply, and so does the time).
        With any of them each output ``OUT/<name>.tif`` (``.ome.zarr``) is the mean of the
        passes and ``OUT/<name>_spread.tif`` (``_spread.ome.zarr``) their per-pixel standard
        deviation, same shape, metadata and units; the tiling and streaming are those of a
        single prediction.

    Returns
    -------
    list of pathlib.Path
        The written predictions, in input order (without the skipped ones).
    """
    if output_format not in (None, *OUTPUT_FORMATS):
        raise CytogenError(f"output format {output_format!r} is not one of {OUTPUT_FORMATS}; "
                           "use --output-format tif or ome-zarr")
    if mc_dropout is not None and samples is not None:
        raise CytogenError("give --mc-dropout or --samples, not both: both draw the dropout masks "
                           "(--samples for adversarial generators, --mc-dropout for the others)")
    for flag, n in (("mc-dropout", mc_dropout), ("samples", samples)):
        if n is not None and n < 2:
            raise CytogenError(f"--{flag} {n}: needs at least 2 draws to give a spread")
    settings = resolve_runtime(precision, fast=fast, compile=compile, accelerator=accelerator,
                               inference=True, backend=backend)
    device = "cuda" if settings.device == "cuda" else "cpu"
    model = load_model_folder(model_dir, device=device)
    uncertainty = Uncertainty(tta=tta, members=[load_model_folder(m, device=device) for m in ensemble],
                              draws=mc_dropout or samples or 1,
                              kind="mc-dropout" if mc_dropout else "samples" if samples else None,
                              seed=seed)
    uncertainty.check(model)
    if settings.backend == "onnxruntime" and uncertainty.draws > 1:
        raise CytogenError("--mc-dropout / --samples need the PyTorch backend: an exported ONNX graph "
                           "has its dropout removed; drop --backend onnxruntime / --precision int8")
    unc = uncertainty if uncertainty.active else None
    plan = resolve_tiling(model, tile=tile, overlap=overlap, batch_size=batch_size, blend=blend,
                          memory_budget=memory_budget)
    jobs = image_jobs(files, data, split)
    out = Path(out)
    inputs = check_out_folder(out, jobs)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    settings.apply()
    try:
        written = _predict_jobs(model, out, jobs, inputs, plan, settings, output_format, progress,
                                skip_existing=resume, uncertainty=unc)
        write_json(out / "runtime.json", {**settings.to_dict(), "tiling": plan.to_dict(),
                                          **({"uncertainty": unc.to_dict()} if unc else {})})
    except BaseException:
        if settings.precision == "int8" and "int8_nrmse" in settings.probe:  # int8 refused: say why
            write_json(out / "runtime.json", {**settings.to_dict(), "tiling": plan.to_dict()})
        if created and not any(out.iterdir()):  # a failed first image leaves no empty --out
            out.rmdir()
        raise
    return written


def _open_lazy(specs: list[str], pixel_um: float | None, stack: ExitStack) -> LazyImage:
    """The job's sources opened lazily as one image (closed with ``stack``), manifest pixel size applied."""
    image = stack_lazy([stack.enter_context(open_spec_lazy(s)) for s in specs])
    image.pixel_size_um = pixel_size(image.pixel_size_um, pixel_um, len(image.axes) - 1)
    return image


def _predict_tiff(model: LoadedModel, target: Path, specs: list[str], pixel_um: float | None,
                  tiling: dict[str, Any], uncertainty: Uncertainty | None = None) -> Image | LazyImage:
    """One job's TIFF output: streamed (:func:`predict_image_stream_tiff`) where it can be.

    Masks -> image models, and inputs the lazy reader refuses (channels stored on two axes),
    are read and predicted in memory (:func:`predict_image`, then ``write_image``); the latter
    with a warning naming why. Returns the input image (for the progress line).
    """
    refused = None
    if model.mask_channels is None:
        with ExitStack() as stack:
            try:
                image = _open_lazy(specs, pixel_um, stack)
            except CytogenError as exc:
                refused = exc
            else:
                predict_image_stream_tiff(model, image, target, source=specs[0],
                                          uncertainty=uncertainty, **tiling)
                return image
    whole = stack_channels([read_spec(s) for s in specs])  # a bad input raises its own error here
    if refused is not None:
        warnings.warn(f"{refused} (reading it whole into memory instead of streaming)",
                      RuntimeWarning, stacklevel=3)
    pred = _predict_in_memory(model, whole, source=specs[0], uncertainty=uncertainty, **tiling)
    pixel = pixel_size(whole.pixel_size_um, pixel_um, len(whole.axes) - 1)
    c = model.out_channels
    if pred.shape[0] > c:  # mean and spread: the spread first, so a complete mean means both exist
        write_image(spread_path(target), Image(pred[c:], whole.axes, pixel, _target_names(model)))
    write_image(target, Image(pred[:c], whole.axes, pixel, _target_names(model)))
    return whole


def _predict_jobs(model: LoadedModel, out: Path, jobs: list[tuple[str, list[str], float | None]],
                  inputs: set[Path], plan: TilingPlan, settings: RuntimeSettings,
                  output_format: str | None, progress: bool, skip_existing: bool = False,
                  uncertainty: Uncertainty | None = None) -> list[Path]:
    """Predict and write each job of :func:`predict`; returns the written paths (with
    ``skip_existing``, a job whose output exists is skipped and not returned)."""
    tiling = dict(plan=plan, settings=settings)  # the plan carries margin and balance too
    written = []
    for i, (name, specs, pixel_um) in enumerate(jobs, 1):
        fmt = output_format or ("ome-zarr" if all(_is_zarr(s) for s in specs) else "tif")
        target = out / (f"{name}.ome.zarr" if fmt == "ome-zarr" else f"{name}.tif")
        if target.resolve() in inputs:
            raise CytogenError(f"{target}: would overwrite an input image; choose another --out")
        if skip_existing and target.exists() and (uncertainty is None or spread_path(target).exists()):
            if progress:
                print(f"[{i}/{len(jobs)}] {name}: skipped (exists) {target}", file=sys.stderr)
            continue
        t0 = time.perf_counter()
        if fmt == "ome-zarr":
            with ExitStack() as stack:
                image = _open_lazy(specs, pixel_um, stack)
                predict_image_stream(model, image, target, source=specs[0], uncertainty=uncertainty,
                                     **tiling)
        else:
            image = _predict_tiff(model, target, specs, pixel_um, tiling, uncertainty)
        written.append(target)
        if progress:
            if len(written) == 1:  # once, after the first input proved valid
                extra = [uncertainty.describe()] if uncertainty is not None else []
                for note in [plan.describe(), *plan.notes, *settings.notes, *extra]:
                    print(f"note: {note}", file=sys.stderr)
            spread = f" + {spread_path(target).name}" if uncertainty is not None else ""
            print(f"[{i}/{len(jobs)}] {name}: {image.spatial_shape} -> {target}{spread} "
                  f"({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    return written
