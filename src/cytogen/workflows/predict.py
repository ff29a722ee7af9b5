"""``cytogen predict``: apply a model folder to images of any size, tile by tile.

Both outputs stream: the input is opened lazily and predicted strip by strip into an OME-Zarr
(:func:`predict_image_stream`) or an OME-TIFF (:func:`predict_image_stream_tiff`), so memory does
not grow with the image size. Masks -> image models, which arrange the whole label image at once,
and inputs that cannot be opened lazily are predicted in memory (:func:`predict_image`, TIFF
output).
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
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
    _check_input(model, image.axes, image.data.shape[0], source)
    if not np.all(np.isfinite(image.data)):
        raise CytogenError(f"{source}: image contains NaN/Inf pixels; replace them before predicting")
    plan = (plan or resolve_tiling(model, tile=tile, overlap=overlap, batch_size=batch_size,
                                   blend=blend)).for_image(image.spatial_shape)
    enc = model.mask_channels  # a masks -> image model: the label image spread over its channels
    x = enc.encode(image.data, name=source) if enc is not None else model.source_norm.normalize(image.data)
    settings = _settings(model, settings)
    fn, dtype = _tile_fn(model, settings)
    multiple = model.net.size_multiple  # every generator declares it (models.protocol)

    def run(t: tuple[int, ...]) -> np.ndarray:
        return predict_tiled(fn, x, tile=t, overlap=plan.overlap, batch_size=plan.batch_size,
                             size_multiple=multiple, out_channels=model.out_channels,
                             blend=plan.blend, device=_device(model), dtype=dtype,
                             margin=plan.margin, balance=plan.balance,
                             pad_batches=settings.compile, progress=progress)

    y = _with_tile_backoff(run, plan.tile, image.spatial_shape, multiple, source)
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


def _stream(model: LoadedModel, image: LazyImage, make_writer: WriterFactory, *,
            tile: tuple[int, ...] | None, overlap: float | None, batch_size: int | None,
            blend: str | None, source: str, settings: RuntimeSettings | None,
            plan: TilingPlan | None = None) -> None:
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
    fn, dtype = _tile_fn(model, settings)
    multiple = model.net.size_multiple  # every generator declares it (models.protocol)
    shape = (model.out_channels, *image.spatial_shape)

    def run(t: tuple[int, ...]) -> None:
        with make_writer(shape, t) as writer:
            try:
                predict_tiled(fn, image.data, tile=t, overlap=plan.overlap,
                              batch_size=plan.batch_size, size_multiple=multiple,
                              out_channels=model.out_channels, blend=plan.blend,
                              device=_device(model), dtype=dtype, sink=writer.write,
                              margin=plan.margin, balance=plan.balance,
                              pad_batches=settings.compile,
                              transform=lambda x: model.source_norm.normalize(x, stats),
                              out_transform=lambda y: _in_pieces(model.target_norm.denormalize, y))
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
                         plan: TilingPlan | None = None) -> Path:
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

    Returns
    -------
    pathlib.Path
        ``target``.
    """
    target = Path(target)

    def make(shape: tuple[int, ...], t: tuple[int, ...]) -> AbstractContextManager[Any]:
        return create_ome_zarr(target, shape, np.float32, image.axes, image.pixel_size_um,
                               _target_names(model), compression, chunks=_zarr_chunks(shape, t))

    _stream(model, image, make, tile=tile, overlap=overlap, batch_size=batch_size, blend=blend,
            source=source, settings=settings, plan=plan)
    return target


def predict_image_stream_tiff(model: LoadedModel, image: LazyImage, target: str | Path, *,
                              tile: tuple[int, ...] | None = None, overlap: float | None = None,
                              batch_size: int | None = None, blend: str | None = None,
                              source: str = "image", compression: str | None = "zlib",
                              settings: RuntimeSettings | None = None,
                              plan: TilingPlan | None = None) -> Path:
    """Predict a lazily opened image strip by strip into an OME-TIFF at ``target``.

    As :func:`predict_image_stream` (same tiling, subsample normalisation and out-of-memory
    fallback), written with :func:`cytogen.io.tiff.create_tiff`: finished rows are spooled to
    a hidden raw file next to ``target`` (as large as the uncompressed prediction), then the
    tiled OME-TIFF is written from it band by band and renamed into place. Memory stays at
    about one band of tile rows whatever the image size; an error leaves no file.

    Parameters
    ----------
    model, image, tile, overlap, batch_size, blend, source, settings
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

    def make(shape: tuple[int, ...], t: tuple[int, ...]) -> AbstractContextManager[Any]:
        return create_tiff(target, shape, np.float32, image.axes, image.pixel_size_um,
                           _target_names(model), compression)

    _stream(model, image, make, tile=tile, overlap=overlap, batch_size=batch_size, blend=blend,
            source=source, settings=settings, plan=plan)
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
            memory_budget: float | None = None, backend: str | None = None) -> list[Path]:
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

    Returns
    -------
    list of pathlib.Path
        The written predictions, in input order (without the skipped ones).
    """
    if output_format not in (None, *OUTPUT_FORMATS):
        raise CytogenError(f"output format {output_format!r} is not one of {OUTPUT_FORMATS}; "
                           "use --output-format tif or ome-zarr")
    settings = resolve_runtime(precision, fast=fast, compile=compile, accelerator=accelerator,
                               inference=True, backend=backend)
    model = load_model_folder(model_dir, device="cuda" if settings.device == "cuda" else "cpu")
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
                                skip_existing=resume)
        write_json(out / "runtime.json", {**settings.to_dict(), "tiling": plan.to_dict()})
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
                  tiling: dict[str, Any]) -> Image | LazyImage:
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
                predict_image_stream_tiff(model, image, target, source=specs[0], **tiling)
                return image
    whole = stack_channels([read_spec(s) for s in specs])  # a bad input raises its own error here
    if refused is not None:
        warnings.warn(f"{refused} (reading it whole into memory instead of streaming)",
                      RuntimeWarning, stacklevel=3)
    pred = predict_image(model, whole, source=specs[0], **tiling)
    pixel = pixel_size(whole.pixel_size_um, pixel_um, len(whole.axes) - 1)
    write_image(target, Image(pred, whole.axes, pixel, _target_names(model)))
    return whole


def _predict_jobs(model: LoadedModel, out: Path, jobs: list[tuple[str, list[str], float | None]],
                  inputs: set[Path], plan: TilingPlan, settings: RuntimeSettings,
                  output_format: str | None, progress: bool, skip_existing: bool = False) -> list[Path]:
    """Predict and write each job of :func:`predict`; returns the written paths (with
    ``skip_existing``, a job whose output exists is skipped and not returned)."""
    tiling = dict(plan=plan, settings=settings)  # the plan carries margin and balance too
    written = []
    for i, (name, specs, pixel_um) in enumerate(jobs, 1):
        fmt = output_format or ("ome-zarr" if all(_is_zarr(s) for s in specs) else "tif")
        target = out / (f"{name}.ome.zarr" if fmt == "ome-zarr" else f"{name}.tif")
        if target.resolve() in inputs:
            raise CytogenError(f"{target}: would overwrite an input image; choose another --out")
        if skip_existing and target.exists():
            if progress:
                print(f"[{i}/{len(jobs)}] {name}: skipped (exists) {target}", file=sys.stderr)
            continue
        if fmt == "ome-zarr":
            with ExitStack() as stack:
                image = _open_lazy(specs, pixel_um, stack)
                predict_image_stream(model, image, target, source=specs[0], **tiling)
        else:
            image = _predict_tiff(model, target, specs, pixel_um, tiling)
        written.append(target)
        if progress:
            if len(written) == 1:  # once, after the first input proved valid
                for note in [plan.describe(), *plan.notes, *settings.notes]:
                    print(f"note: {note}", file=sys.stderr)
            print(f"[{i}/{len(jobs)}] {name}: {image.spatial_shape} -> {target}", file=sys.stderr)
    return written
