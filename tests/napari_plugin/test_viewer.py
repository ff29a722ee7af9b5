"""The plugin in a real (hidden) napari viewer: open cytogen outputs, predict with the widget,
load the sample data. Needs a display with OpenGL (pytest-xvfb's Xvfb; see conftest.py)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari", reason="the napari extra is not installed (pip install -e '.[napari]')")
pytest.importorskip("pytestqt", reason="pytest-qt is not installed (pip install -e '.[test]')")

pytestmark = pytest.mark.usefixtures("needs_display")

PX = 0.5


def _errors() -> list[str]:
    from napari.utils.notifications import NotificationSeverity, notification_manager

    return [n.message for n in notification_manager.records if n.severity == NotificationSeverity.ERROR]


def test_viewer_opens_predictions_pyramids_and_objects(make_napari_viewer, predictions, objects_dir):
    viewer = make_napari_viewer()
    layers = viewer.open(str(predictions["tif"]), plugin="cytogen")
    assert [layer.name for layer in layers] == ["nucleus (f)"]
    assert tuple(layers[0].scale) == pytest.approx((PX, PX))
    layers = viewer.open(str(predictions["ome-zarr"]), plugin="cytogen")
    assert layers[0].data.shape == (96, 128)
    layers = viewer.open(str(objects_dir["dir"]), plugin="cytogen")
    kinds = {layer.name: type(layer).__name__ for layer in layers}
    assert kinds == {"f0 real image 0": "Image", "f0 predicted image 0": "Image", "f0 real nuclei": "Points",
                     "f0 predicted nuclei": "Points", "f0 matches": "Shapes"}
    points = viewer.layers["f0 predicted nuclei"]
    assert len(points.data) == 4 and "distance_um" in points.features
    assert tuple(points.scale) == pytest.approx((PX, PX)) and len(viewer.layers["f0 matches"].data) == 3
    with pytest.raises(ValueError):  # not a cytogen output: the cytogen reader declines it
        viewer.open(str(predictions["input"]), plugin="cytogen")


def test_multiscale_layer_in_the_viewer(make_napari_viewer, tmp_path, field):
    from cytogen.io.ome_zarr import write_ome_zarr

    path = tmp_path / "pred" / "f.ome.zarr"
    write_ome_zarr(path, field.image, "CYX", (PX, PX), ["actin", "membrane", "nucleus"], "zlib",
                   max_side=32)
    (tmp_path / "pred" / "runtime.json").write_text("{}")
    viewer = make_napari_viewer()
    layers = viewer.open(str(path), plugin="cytogen")
    assert [layer.name for layer in layers] == ["actin (f)", "membrane (f)", "nucleus (f)"]
    assert all(layer.multiscale and len(layer.data) == 3 for layer in layers)
    assert [tuple(d.shape) for d in layers[2].data] == [(96, 128), (48, 64), (24, 32)]
    assert tuple(layers[2].scale) == pytest.approx((PX, PX))


def test_widget_predicts_the_selected_layer_like_predict_image(make_napari_viewer, qtbot, field,
                                                               model_dir):
    from cytogen.io.images import Image
    from cytogen.predict.model_folder import load_model_folder
    from cytogen.workflows.predict import predict_image

    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("cytogen", "Predict (cytogen model)")
    actin = viewer.add_image(field.image[0], name="actin", scale=(PX, PX), translate=(3.0, 4.0))
    viewer.layers.selection.active = actin
    widget.model_folder.value = model_dir
    assert widget.selected.value == "actin"
    worker = widget.predict()
    with qtbot.waitSignal(worker.finished, timeout=60_000):
        pass
    qtbot.waitUntil(lambda: "nucleus" in viewer.layers, timeout=10_000)
    out = viewer.layers["nucleus"]
    ref = predict_image(load_model_folder(model_dir), Image(field.image[:1], "CYX", (PX, PX), ["actin"]))
    span = float(ref.max() - ref.min())
    np.testing.assert_allclose(out.data, ref[0], rtol=0, atol=1e-5 * span)
    assert tuple(out.scale) == pytest.approx((PX, PX)) and tuple(out.translate) == (3.0, 4.0)
    assert widget.bar.value == widget.bar.max > 1  # fed per batch of tiles, ended at the total
    assert not _errors()

    both = viewer.add_image(field.image[:2], name="actin+membrane")  # 2 channels for a 1-channel model
    viewer.layers.selection.active = both
    worker = widget.predict()
    with qtbot.waitSignal(worker.finished, timeout=60_000):
        pass
    qtbot.waitUntil(lambda: bool(_errors()), timeout=10_000)
    assert "has 2 channel(s)" in _errors()[-1] and "expects 1 (actin)" in _errors()[-1]
    assert [layer.name for layer in viewer.layers] == ["actin", "nucleus", "actin+membrane"]
    widget.model_folder.value = model_dir.parent  # not a model folder: refused before any thread
    assert widget.predict() is None and "no model.json" in _errors()[-1]


def test_sample_data_are_synthetic_cells_with_exact_masks(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("cytogen", "synthetic_cells")
    assert [layer.name for layer in viewer.layers] == ["actin", "membrane", "nucleus", "cells", "nuclei"]
    cells, nuclei = viewer.layers["cells"].data, viewer.layers["nuclei"].data
    assert type(viewer.layers["cells"]).__name__ == "Labels" and nuclei.max() > 3
    inside = nuclei > 0
    np.testing.assert_array_equal(cells[inside], nuclei[inside])  # nucleus i lies in cell i
    assert all(tuple(layer.scale) == (0.5, 0.5) for layer in viewer.layers)
