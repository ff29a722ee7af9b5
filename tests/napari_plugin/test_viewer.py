"""The plugin in a real (hidden) napari viewer: open cytogen outputs, predict with the widget,
load the sample data. Needs a display with OpenGL (pytest-xvfb's Xvfb; see conftest.py)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari", reason="the napari extra is not installed (pip install -e '.[napari]')")
pytest.importorskip("pytestqt", reason="pytest-qt is not installed (pip install -e '.[test]')")

pytestmark = pytest.mark.usefixtures("needs_display")

PX = 0.5


@pytest.fixture(autouse=True)
def _fresh_notifications():
    """napari's notification manager is global: start each test with no records."""
    from napari.utils.notifications import notification_manager

    notification_manager.records.clear()


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
    assert kinds == {"eval: real image": "Image", "eval: predicted image": "Image",
                     "eval: real nuclei": "Points", "eval: predicted nuclei": "Points",
                     "eval: matches": "Shapes"}
    points = viewer.layers["eval: predicted nuclei"]
    assert len(points.data) == 4 and "distance_um" in points.features
    assert tuple(points.scale) == pytest.approx((1.0, PX, PX))
    assert len(viewer.layers["eval: matches"].data) == 3
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

    three = viewer.add_image(field.image, name="all three")  # 3 channels for a 1-channel model
    viewer.layers.selection.active = three
    worker = widget.predict()
    with qtbot.waitSignal(worker.finished, timeout=60_000):
        pass
    qtbot.waitUntil(lambda: bool(_errors()), timeout=10_000)
    assert "has 3 channel(s)" in _errors()[-1] and "expects 1 (actin)" in _errors()[-1]
    assert [layer.name for layer in viewer.layers] == ["actin", "nucleus", "all three"]
    widget.model_folder.value = model_dir.parent  # not a model folder: refused before any thread
    assert widget.predict() is None and "no model.json" in _errors()[-1]


def test_widget_with_a_two_channel_model_takes_a_channels_first_layer(make_napari_viewer, qtbot,
                                                                      field, tmp_path):
    import torch

    from cytogen.data.normalize import Normalizer
    from cytogen.io.images import Image
    from cytogen.models import build_model
    from cytogen.napari_plugin._widget import PredictWidget
    from cytogen.predict.model_folder import load_model_folder, save_model_folder
    from cytogen.workflows.predict import predict_image

    torch.manual_seed(1)
    arch = {"name": "unet", "dims": 2, "in_channels": 2, "out_channels": 1,
            "kwargs": {"depth": 1, "base_channels": 4}}
    net = build_model("unet", in_channels=2, out_channels=1, dims=2, depth=1, base_channels=4)
    folder = save_model_folder(tmp_path / "model2", net.eval(), architecture=arch,
                               source_norm=Normalizer().fit([field.image[:2]]),
                               target_norm=Normalizer().fit([field.image[2:]]),
                               source_channels=["actin", "membrane"], target_channels=["nucleus"],
                               pixel_size_um=[PX, PX], patch_size=[32, 32])
    viewer = make_napari_viewer()
    widget = PredictWidget(viewer)
    two = viewer.add_image(field.image[:2], name="actin+membrane", scale=(1.0, PX, PX))
    viewer.layers.selection.active = two
    widget.model_folder.value = folder
    with qtbot.waitSignal(widget.predict().finished, timeout=60_000):
        pass
    qtbot.waitUntil(lambda: "nucleus" in viewer.layers, timeout=10_000)
    out = viewer.layers["nucleus"]
    ref = predict_image(load_model_folder(folder), Image(field.image[:2], "CYX", (PX, PX)))
    np.testing.assert_allclose(out.data, ref[0], rtol=0, atol=1e-5 * float(ref.max() - ref.min()))
    assert tuple(out.scale) == pytest.approx((PX, PX)) and not _errors()


def test_sample_data_are_synthetic_cells_with_exact_masks(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("cytogen", "synthetic_cells")
    assert [layer.name for layer in viewer.layers] == ["actin", "membrane", "nucleus", "cells", "nuclei"]
    cells, nuclei = viewer.layers["cells"].data, viewer.layers["nuclei"].data
    assert type(viewer.layers["cells"]).__name__ == "Labels" and nuclei.max() > 3
    inside = nuclei > 0
    np.testing.assert_array_equal(cells[inside], nuclei[inside])  # nucleus i lies in cell i
    assert all(tuple(layer.scale) == (0.5, 0.5) for layer in viewer.layers)


@pytest.mark.slow  # writes a 16384 x 16384 float32 OME-Zarr (about 6 s of CPU, 15 s on a shared VM)
def test_16k_streamed_prediction_opens_as_a_pyramid(make_napari_viewer, tmp_path):
    import time

    from cytogen.io.ome_zarr import create_ome_zarr

    n, rows = 16384, 1024
    ramp = np.linspace(0, 1, n, dtype=np.float32)
    path = tmp_path / "pred" / "big.ome.zarr"
    # the writer 'cytogen predict --output-format ome-zarr' streams into, one band of rows at a time
    with create_ome_zarr(path, (1, n, n), np.float32, "CYX", (PX, PX), ["nucleus"], "zstd",
                         chunks=(1, rows, 1024)) as writer:
        for a in range(0, n, rows):
            writer.write(a, np.broadcast_to(ramp, (1, rows, n)) + np.float32(a / n))
    (tmp_path / "pred" / "runtime.json").write_text("{}")
    viewer = make_napari_viewer()
    t0 = time.perf_counter()
    layer, = viewer.open(str(path), plugin="cytogen")
    viewer.reset_view()
    seconds = time.perf_counter() - t0
    assert layer.multiscale and [tuple(d.shape) for d in layer.data] == [(n >> k, n >> k) for k in range(5)]
    assert tuple(layer.scale) == pytest.approx((PX, PX)) and layer.name == "nucleus (big)"
    assert layer.data_level >= 3  # napari shows a coarse level, never reading the 1 GiB level 0 whole
    assert layer.contrast_limits == pytest.approx([0.0, 1.0 + (n - rows) / n])  # the omero window
    print(f"16k x 16k OME-Zarr opened in {seconds:.2f} s, showing level {layer.data_level}")
