"""The napari widget: predict with a cytogen model folder on the selected image layer.

Pick a model folder (``RUN/model`` of ``cytogen train``), select an image layer and press
*Predict*. The layer's pixels (level 0 of a multiscale layer) are predicted in memory with
:func:`cytogen.workflows.predict.predict_image` (the model's own tiling and normalisation, the
default run-time settings) in a napari worker thread, so the viewer stays responsive; the progress
bar advances after each batch of tiles. Each target channel becomes an image layer named after it
(``model.json``'s ``target_channels``) with the input layer's scale and translation.

Channels: a layer of a 2D model's field is ``(Y, X)`` (one channel) or ``(C, Y, X)``; of a 3D
model's ``(Z, Y, X)`` or ``(C, Z, Y, X)``; RGB layers give their 3 colours as channels. A layer
whose channel count or dimensionality does not fit the model, or a model folder that cannot be
read, is refused with a napari error notification that says what to change (no traceback). A
layer named after a channel the model was not trained on, or with another pixel size than the
model's, is predicted with a warning.

This module imports napari and Qt; it is loaded only when napari asks for the widget.
"""

from pathlib import Path
from typing import Any

import napari
import numpy as np
from magicgui.widgets import Container, FileEdit, Label, ProgressBar, PushButton
from napari.qt.threading import FunctionWorker, thread_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QObject, Signal

from cytogen.errors import CytogenError


class _TileRelay(QObject):
    """Carries ``(done_tiles, total_tiles)`` from the worker thread to the GUI thread."""

    tiles = Signal(int, int)


def layer_image(layer: Any, dims: int) -> tuple[np.ndarray, tuple[float, ...] | None]:
    """A layer's pixels as ``C[Z]YX`` for a ``dims``-D model, and its pixel size in um.

    Parameters
    ----------
    layer : napari.layers.Image or napari.layers.Labels
        Multiscale layers give their level 0; RGB(A) layers their colours as channels.
    dims : int
        2 or 3, the model's spatial dimensionality.

    Returns
    -------
    data : numpy.ndarray
        ``(C, Y, X)`` or ``(C, Z, Y, X)``.
    pixel_size_um : tuple of float or None
        The layer's spatial ``scale`` (None when it is all ones: no pixel size known).

    Raises
    ------
    CytogenError
        When the layer has neither ``dims`` nor ``dims + 1`` axes.
    """
    data = np.asarray(layer.data[0] if getattr(layer, "multiscale", False) else layer.data)
    shape = data.shape
    if getattr(layer, "rgb", False):
        data = np.moveaxis(data, -1, 0)
    elif data.ndim == dims:
        data = data[np.newaxis]
    if data.ndim != dims + 1:
        raise CytogenError(
            f"layer {layer.name!r} has {len(shape)} axes (shape {shape}) but the model is {dims}D: "
            f"select a layer with {dims} axes (one channel) or {dims + 1} (channels first)")
    scale = tuple(float(s) for s in layer.scale[-dims:])
    return data, (None if all(s == 1.0 for s in scale) else scale)


class PredictWidget(Container):
    """Dock widget: model folder, the selected layer, a *Predict* button and a progress bar.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        Given by napari when the widget is opened from the Plugins menu.
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self.viewer = viewer
        self.model_folder = FileEdit(label="model folder", mode="d")
        self.selected = Label(label="image layer")
        self.button = PushButton(text="Predict")
        self.bar = ProgressBar(label="tiles", value=0, min=0, max=1)
        super().__init__(widgets=[self.model_folder, self.selected, self.button, self.bar])
        self._relay = _TileRelay()
        self._relay.tiles.connect(self._on_tiles)
        self.button.changed.connect(self.predict)
        viewer.layers.selection.events.active.connect(self._on_selection)
        self._on_selection()
        self.worker: FunctionWorker | None = None

    def _on_selection(self, event: Any = None) -> None:
        layer = self.viewer.layers.selection.active
        self.selected.value = layer.name if layer is not None else "(select an image layer)"

    def _on_tiles(self, done: int, total: int) -> None:
        self.bar.max = max(total, 1)
        self.bar.value = done

    def predict(self, *_: Any) -> FunctionWorker | None:
        """Start predicting the selected layer; returns the worker (None after an error).

        Errors a user can fix (no model folder, no image layer selected, wrong channels) are
        shown as napari error notifications.
        """
        layer = self.viewer.layers.selection.active
        folder = self.model_folder.value
        if not isinstance(layer, (napari.layers.Image, napari.layers.Labels)):
            show_error("cytogen: select an image layer to predict (click it in the layer list)")
            return None
        if not folder or not Path(folder, "model.json").is_file():
            show_error(f"cytogen: {folder}: not a cytogen model folder (no model.json); choose the "
                       "RUN/model folder that 'cytogen train' wrote")
            return None
        self.button.enabled = False
        self.bar.value = 0
        # errors go to a notification (given here: otherwise the worker re-raises them)
        worker = thread_worker(_predict_layer, start_thread=False, connect={"errored": _report_error})(
            layer, Path(folder), self._relay.tiles.emit)
        worker.returned.connect(lambda result: self._add_result(layer, result))
        worker.finished.connect(lambda: setattr(self.button, "enabled", True))
        self.worker = worker
        worker.start()
        return worker

    def _add_result(self, layer: Any, result: dict[str, Any]) -> None:
        for note in result["notes"]:
            show_warning(f"cytogen: {note}")
        dims = result["prediction"].ndim - 1  # a (C, Y, X) input layer has a channel scale too
        for name, plane in zip(result["names"], result["prediction"]):
            self.viewer.add_image(plane, name=name, scale=layer.scale[-dims:],
                                  translate=layer.translate[-dims:],
                                  blending="additive",
                                  metadata={"cytogen": {"model": str(result["model"]),
                                                        "source_layer": layer.name,
                                                        "channel": name}})
        show_info(f"cytogen: predicted {', '.join(result['names'])} from {layer.name!r}")


def _report_error(exc: BaseException) -> None:
    if isinstance(exc, CytogenError):
        show_error(f"cytogen: {exc}")
    else:  # a bug, not a user error: say what happened, napari's console keeps the traceback
        show_error(f"cytogen: prediction failed: {type(exc).__name__}: {exc}")


def _predict_layer(layer: Any, folder: Path, tiles: Any) -> dict[str, Any]:
    """Worker body: load the model, check the layer against it, predict (runs off the GUI thread)."""
    from cytogen.io.images import Image
    from cytogen.predict.model_folder import load_model_folder
    from cytogen.workflows.predict import predict_image

    model = load_model_folder(folder)
    data, pixel = layer_image(layer, model.dims)
    wanted = model.input_channels
    names = list(model.meta.get("source_channels") or [])
    if data.shape[0] != wanted:
        raise CytogenError(
            f"layer {layer.name!r} has {data.shape[0]} channel(s) (shape {data.shape[1:]} per "
            f"channel) but the model {folder} expects {wanted}"
            + (f" ({', '.join(names)})" if names else "")
            + ("; select one layer per channel" if wanted == 1 else
               f"; select a layer holding the {wanted} channels as its first axis, in this order"))
    notes = []
    channel = ((layer.metadata or {}).get("cytogen") or {}).get("channel")
    if channel is not None and names and wanted == 1 and channel not in names:
        notes.append(f"layer {layer.name!r} holds channel {channel!r}; the model was trained on "
                     f"{', '.join(names)}")
    trained = model.meta.get("pixel_size_um")
    if pixel is not None and trained and not np.allclose(pixel[-2:], trained[-2:], rtol=0.02):
        notes.append(f"layer {layer.name!r} has pixel size {pixel} um, the model was trained at "
                     f"{tuple(trained)} um; resample the image for a faithful prediction")
    axes = "CYX" if model.dims == 2 else "CZYX"
    if not np.issubdtype(data.dtype, np.number) or data.dtype == bool:
        data = data.astype(np.float32)
    image = Image(data, axes, pixel, names if len(names) == data.shape[0] else None)
    pred = predict_image(model, image, source=f"layer {layer.name!r}", progress=tiles)
    targets = list(model.meta.get("target_channels") or [])
    if len(targets) != pred.shape[0]:
        targets = [f"prediction {k}" for k in range(pred.shape[0])]
    return {"prediction": pred, "names": targets, "notes": notes, "model": folder}
