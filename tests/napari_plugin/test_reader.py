"""The napari reader's layers, without a viewer: names, scale, data, pyramids, labels, objects."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("npe2", reason="the napari extra is not installed (pip install -e '.[napari]')")
pytest.importorskip("dask", reason="the napari extra is not installed (pip install -e '.[napari]')")

from cytogen.io.images import Image, read_image, write_image
from cytogen.napari_plugin._reader import classify, napari_get_reader, read_paths

PX = 0.5  # um per pixel of the images of conftest.py


def test_manifest_validates_and_is_discovered():
    import npe2

    from cytogen.napari_plugin import __file__ as pkg

    manifest = npe2.PluginManifest.from_file(pkg.replace("__init__.py", "napari.yaml"))
    assert manifest.name == "cytogen"
    assert {c.id for c in manifest.contributions.commands} == {
        "cytogen.get_reader", "cytogen.predict_widget", "cytogen.synthetic_cells"}
    assert manifest.contributions.readers[0].accepts_directories
    pm = npe2.PluginManager.instance()
    pm.discover()  # through the napari.manifest entry point of the installed package
    assert "cytogen" in {m.name for m in pm.iter_manifests()}
    assert pm.get_manifest("cytogen").contributions.sample_data[0].key == "synthetic_cells"


def test_importing_the_plugin_imports_no_gui(tmp_path):
    import subprocess
    import sys

    code = ("import sys, cytogen, cytogen.napari_plugin._reader, cytogen.napari_plugin._objects, "
            "cytogen.napari_plugin._sample; "
            "print([m for m in sys.modules if m.split('.')[0] in ('napari', 'qtpy', 'PyQt5', 'magicgui')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_tiff_prediction_is_one_image_layer_per_channel_in_um(predictions):
    tif = predictions["tif"]
    reader = napari_get_reader(str(tif))
    assert reader is read_paths
    (data, kwargs, kind), = reader(str(tif))
    assert kind == "image" and kwargs["name"] == "nucleus (f)"
    assert kwargs["scale"] == pytest.approx((PX, PX))
    np.testing.assert_array_equal(np.asarray(data), read_image(tif).data[0])
    assert kwargs["metadata"]["cytogen"]["channel"] == "nucleus"


def test_not_cytogen_outputs_are_refused(tmp_path, predictions):
    image = Image(np.ones((1, 8, 8), np.float32), "CYX", (PX, PX))
    write_image(tmp_path / "plain.tif", image)  # no run record beside it
    write_image(tmp_path / "plain.ome.zarr", image)
    (tmp_path / "notes.csv").write_text("a,b\n1,2\n")
    for p in ("plain.tif", "plain.ome.zarr", "notes.csv", "."):
        assert napari_get_reader(str(tmp_path / p)) is None, p
    assert napari_get_reader([str(predictions["tif"]), str(tmp_path / "plain.tif")]) is None
    assert classify(predictions["tif"].parent / "runtime.json") is None  # the record itself


def test_ome_zarr_pyramid_is_a_lazy_multiscale_layer_with_its_labels(tmp_path, field):
    from cytogen.io.ome_zarr import open_ome_zarr_levels, write_ome_zarr

    # what 'cytogen segment nuclei --output-format ome-zarr' writes: the image, labels/nuclei
    path = tmp_path / "seg" / "f.ome.zarr"
    write_ome_zarr(path, field.image, "CYX", (PX, PX), ["actin", "membrane", "nucleus"], "zlib",
                   max_side=32, labels={"nuclei": field.nuclei.astype(np.uint16)})  # 96x128 -> 48x64 -> 24x32
    (tmp_path / "seg" / "nuclei.csv").write_text("name,n_nuclei,seconds,pixel_size_um\nf,3,0.1,0.5\n")
    (tmp_path / "seg" / "summary.json").write_text("{}")
    layers = napari_get_reader(str(path))(str(path))
    assert [(k["name"], t) for _, k, t in layers] == [
        ("actin (f)", "image"), ("membrane (f)", "image"), ("nucleus (f)", "image"),
        ("nuclei (f)", "labels")]  # float channels stay images; the NGFF labels are labels
    levels = open_ome_zarr_levels(path)
    for c, (data, kwargs, _) in enumerate(layers[:3]):
        assert kwargs["multiscale"] and kwargs["scale"] == pytest.approx((PX, PX))
        assert [d.shape for d in data] == [(96, 128), (48, 64), (24, 32)]
        assert all(type(d).__module__.startswith("dask") for d in data)  # nothing read yet
        np.testing.assert_array_equal(np.asarray(data[0]), field.image[c])
        np.testing.assert_array_equal(np.asarray(data[2]), np.asarray(levels[2][c]))
        lo, hi = kwargs["contrast_limits"]  # the omero window the writer recorded
        assert lo == pytest.approx(field.image[c].min()) and hi == pytest.approx(field.image[c].max())
    data, kwargs, _ = layers[3]
    assert [d.shape for d in data] == [(96, 128), (48, 64), (24, 32)]
    np.testing.assert_array_equal(np.asarray(data[0]), field.nuclei)
    np.testing.assert_array_equal(np.asarray(data[1]), field.nuclei[::2, ::2])  # nearest: exact labels
    assert np.asarray(data[0]).dtype == np.uint16 and kwargs["scale"] == pytest.approx((PX, PX))


def test_streamed_ome_zarr_prediction_opens(predictions):
    (data, kwargs, kind), = read_paths(str(predictions["ome-zarr"]))
    assert kind == "image" and kwargs["name"] == "nucleus (f)"
    np.testing.assert_allclose(np.asarray(data[0] if kwargs.get("multiscale") else data),
                               read_image(predictions["tif"]).data[0], rtol=0, atol=1e-4)


def test_label_images_of_segment_folders_and_synthetic_datasets(tmp_path, field):
    seg = tmp_path / "seg"  # what 'cytogen segment nuclei' writes
    write_image(seg / "f.tif", Image(field.nuclei[None].astype(np.uint16), "CYX", (PX, PX), ["nuclei"]))
    write_image(seg / "g.tif", Image(field.image[2:], "CYX", (PX, PX), ["nucleus"]))  # not integers
    (seg / "nuclei.csv").write_text("name,n_nuclei,seconds,pixel_size_um\nf,3,0.1,0.5\n")
    (seg / "summary.json").write_text(json.dumps({"n_images": 1}))
    (data, kwargs, kind), = read_paths(str(seg / "f.tif"))
    assert kind == "labels" and kwargs["name"] == "nuclei (f)"
    assert kwargs["scale"] == pytest.approx((PX, PX))
    np.testing.assert_array_equal(np.asarray(data), field.nuclei)
    assert read_paths(str(seg / "g.tif"))[0][2] == "image"
    cells = tmp_path / "cells"  # 'cytogen segment cells': labels and foreground masks
    write_image(cells / "foreground" / "f.tif", Image((field.cells > 0)[None].astype(np.uint8), "CYX"))
    (cells / "markers.csv").write_text("name,marker,y,x,source\n")
    (cells / "summary.json").write_text("{}")
    (data, kwargs, kind), = read_paths(str(cells / "foreground" / "f.tif"))
    assert kind == "labels" and kwargs["scale"] == (1.0, 1.0)  # no pixel size recorded
    from cytogen.synth.cells import write_synthetic_dataset

    ds = write_synthetic_dataset(tmp_path / "ds", n_fields=1, shape=(32, 48)).parent
    assert [k["name"] for _, k, _ in read_paths(str(ds / "images" / "field_000.tif"))] == [
        "actin (field_000)", "membrane (field_000)", "nucleus (field_000)"]
    assert read_paths(str(ds / "masks" / "field_000_cells.tif"))[0][2] == "labels"


def test_evaluate_objects_folder_as_points_lines_and_images(objects_dir):
    folder, CENTRES, SHIFTS_PX = objects_dir["dir"], objects_dir["centres"], objects_dir["shifts"]
    layers = napari_get_reader(str(folder))(str(folder))
    by_name = {k["name"]: (d, k, t) for d, k, t in layers}
    assert list(by_name) == ["eval: real image", "eval: predicted image", "eval: real nuclei",
                             "eval: predicted nuclei", "eval: matches"]
    real, rk, rt = by_name["eval: real nuclei"]
    pred, pk, pt = by_name["eval: predicted nuclei"]
    assert rt == pt == "points" and rk["face_color"] != pk["face_color"]
    assert rk["scale"] == pytest.approx((1.0, PX, PX))  # field axis, then um per pixel
    assert by_name["eval: real image"][1]["scale"] == rk["scale"]
    assert rk["metadata"]["cytogen"]["fields"] == ["f0"] and set(rk["features"]["field"]) == {"f0"}
    order = np.lexsort(np.asarray(real).T[::-1])
    np.testing.assert_allclose(np.asarray(real)[order], [(0, *c) for c in CENTRES], atol=1e-6)
    moved = np.array([(0, cy, cx + s) for (cy, cx), s in zip(CENTRES, SHIFTS_PX)], float)
    np.testing.assert_allclose(np.asarray(pred)[np.lexsort(np.asarray(pred).T[::-1])], moved, atol=1e-6)
    lines, lk, lt = by_name["eval: matches"]
    assert lt == "shapes" and lk["shape_type"] == "line" and len(lines) == 3  # 15 um: unmatched
    got = sorted((tuple(a), tuple(b)) for a, b in lines)
    want = sorted((tuple(m), (0.0, *map(float, c))) for m, c, s in zip(moved, CENTRES, SHIFTS_PX) if s < 30)
    np.testing.assert_allclose(np.array(got), np.array(want), atol=1e-6)
    np.testing.assert_allclose(np.sort(lk["features"]["distance"]), [0.0, 1.0, 2.0], atol=1e-6)  # um
    assert min(pk["features"]["matched_label"].tolist()) == -1  # the far one has no partner
    truth = by_name["eval: real image"][0]
    assert truth.shape == (1, 96, 128) and truth[(0, *CENTRES[0])] == 1.0


def test_objects_of_several_fields_stack_on_a_field_axis(objects_dir, tmp_path):
    import shutil

    from cytogen.workflows.evaluate_objects import evaluate_objects

    src = objects_dir["dir"].parent
    for d in ("truth", "pred"):  # a second, smaller field: f1 = the top-left 56 x 64 of f0
        img = read_image(src / d / "f0.tif")
        shutil.copytree(src / d, tmp_path / d)
        write_image(tmp_path / d / "f1.tif", Image(img.data[:, :56, :64], "CYX", img.pixel_size_um))
    evaluate_objects(tmp_path / "pred", tmp_path / "truth", tmp_path / "ev", progress=False)
    layers = {k["name"]: (d, k) for d, k, _ in read_paths(str(tmp_path / "ev"))}
    stack, kwargs = layers["ev: real image"]
    assert stack.shape == (2, 96, 128) and kwargs["metadata"]["cytogen"]["fields"] == ["f0", "f1"]
    assert not stack[1, 56:].any() and not stack[1, :, 64:].any()  # f1 padded with zeros
    np.testing.assert_array_equal(stack[1, :56, :64], stack[0, :56, :64])
    real, kw = layers["ev: real nuclei"]
    per_field = [np.asarray(real)[np.asarray(real)[:, 0] == i] for i in (0, 1)]
    assert len(per_field[0]) == 4 and len(per_field[1]) == 1  # f1 holds the nucleus at (24, 24)
    np.testing.assert_allclose(per_field[1][0, 1:], objects_dir["centres"][0], atol=1e-6)
    assert sorted(kw["features"]["field"]) == ["f0"] * 4 + ["f1"]
