"""prepare_inputs: one field of M.csv read, normalised, with markers, foreground, truth and reference markers."""

from pathlib import Path

import numpy as np
import pytest
import torch

import cytogen.workflows.predict as predict_mod
from cytogen.data.normalize import Normalizer
from cytogen.data.seg_manifest import read_seg_manifest
from cytogen.errors import CytogenError
from cytogen.evaluate.markers import marker_errors
from cytogen.io.images import Image, write_image
from cytogen.models import build_model
from cytogen.predict.model_folder import save_model_folder
from cytogen.segment.foreground import foreground_mask
from cytogen.segment.markers import markers_from_image, markers_from_labels
from cytogen.synth.cells import synth_field
from cytogen.workflows.cellseg_inputs import clear_model_cache, prepare_inputs, _load_translator


@pytest.fixture(scope="module")
def field(tmp_path_factory):
    """One synthetic 128 x 128 field at 1 um/px written as cell / nucleus / label images."""
    root = tmp_path_factory.mktemp("cellseg_inputs")
    f = synth_field(shape=(128, 128), pixel_size_um=1.0, seed=3, n_cells=8)
    ps = (1.0, 1.0)
    write_image(root / "actin.tif", Image(np.clip(f.image[0:1] * 1000 + 100, 0, None).astype(np.uint16), "CYX", ps))
    write_image(root / "all.tif", Image(f.image, "CYX", ps))
    write_image(root / "nuc.tif", Image(f.image[2:3], "CYX", ps))
    write_image(root / "nuc_labels.tif", Image(f.nuclei[None].astype(np.uint16), "CYX", ps))
    write_image(root / "cells.tif", Image(f.cells[None].astype(np.uint16), "CYX", ps))
    write_image(root / "mask.tif", Image((f.cells[None] > 0).astype(np.uint8), "CYX", ps))
    rng = np.random.default_rng(0)
    scrib = np.zeros((128, 128), np.uint8)
    pick = rng.random((128, 128)) < 0.05
    scrib[pick & (f.cells == 0)] = 1
    scrib[pick & (f.cells > 0)] = 2
    write_image(root / "scrib.tif", Image(scrib[None], "CYX", ps))
    return root, f


def _entry(root: Path, header: str, row: str):
    (root / "M.csv").write_text(header + "\n" + row + "\n")
    return read_seg_manifest(root / "M.csv")[0]


def _iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


def test_nuclei_markers_graph_cut_foreground_and_normalised_image(field):
    root, f = field
    e = _entry(root, "name,source,nuclei,cells", "f,actin.tif,nuc.tif,cells.tif")
    inp = prepare_inputs(e, {"nucleus_diameter_um": 8.0})
    n_cells = len(np.unique(f.cells)) - 1
    assert inp.name == "f" and inp.marker_source == "nuclei" and inp.pixel_size_um == (1.0, 1.0)
    assert inp.image.shape == (1, 128, 128) and inp.image.dtype == np.float32
    # percentile normalisation per field: 1st and 99.8th percentiles map to 0 and 1
    np.testing.assert_allclose(np.percentile(inp.image, [1.0, 99.8]), [0.0, 1.0], atol=1e-4)
    # markers: the same as blob detection on the nucleus image, with the um diameter (pixel size known)
    expect = markers_from_image(f.image[2], pixel_size_um=(1.0, 1.0), nucleus_diameter_um=8.0)
    np.testing.assert_allclose(inp.markers, expect, atol=1e-3)
    err = marker_errors(markers_from_labels(f.nuclei), inp.markers, 15.0)
    assert err["fn"] <= max(1, n_cells // 5) and err["fp"] <= max(1, n_cells // 5)
    assert inp.reference_markers is None and inp.reference_source is None  # nuclei were used: no other reference
    # no mask or scribbles: the graph cut of the source as read, with the recipe's kappa and alpha
    assert inp.foreground_source == "graph_cut" and inp.foreground.dtype == bool
    # (holes up to a disk of twice the nucleus diameter are filled: the nuclei are dark in actin)
    hole = np.pi * 8.0 ** 2  # nucleus_diameter_um 8 at 1 um/px
    raw = inp.raw.data.astype(np.float32)
    np.testing.assert_array_equal(inp.foreground, foreground_mask(raw, max_hole_px=hole))
    m = np.round(inp.markers).astype(int)
    assert inp.foreground[m[:, 0], m[:, 1]].mean() >= foreground_mask(raw)[m[:, 0], m[:, 1]].mean()
    fg = prepare_inputs(e, {"kappa": 0.0, "alpha": 0.3, "nucleus_diameter_um": 8.0}).foreground
    np.testing.assert_array_equal(fg, foreground_mask(raw, kappa=0.0, alpha=0.3, max_hole_px=hole))
    # the smoothing of the intensity route takes effect, in um when the pixel size is known (1 um/px)
    for given, sigma in (({"foreground_sigma_px": 0.0}, 0.0), ({"foreground_sigma_um": 2.5}, 2.5)):
        fg = prepare_inputs(e, {**given, "nucleus_diameter_um": 8.0}).foreground
        np.testing.assert_array_equal(fg, foreground_mask(raw, sigma_px=sigma, max_hole_px=hole))
    assert not np.array_equal(foreground_mask(raw, sigma_px=0.0, max_hole_px=hole),
                              foreground_mask(raw, sigma_px=2.5, max_hole_px=hole))
    with pytest.raises(CytogenError, match="foreground_sigma_px"):
        prepare_inputs(e, {"foreground_sigma_px": -1.0})
    np.testing.assert_array_equal(inp.truth, f.cells)
    assert inp.raw.data.dtype == np.uint16  # the source as read, not normalised


def test_label_markers_mask_manifest_pixel_size_and_reference(field):
    root, f = field
    e = _entry(root, "name,source,nuclei,markers,foreground,pixel_size_um",
               "f,actin.tif,nuc.tif,nuc_labels.tif,mask.tif,0.5")
    with pytest.raises(CytogenError, match="several marker sources .*--markers-from nuclei|markers"):
        prepare_inputs(e)
    inp = prepare_inputs(e, markers_from="markers")
    assert inp.pixel_size_um == (0.5, 0.5) and inp.raw.pixel_size_um == (0.5, 0.5)  # manifest wins
    np.testing.assert_array_equal(inp.markers, markers_from_labels(f.nuclei))
    np.testing.assert_array_equal(inp.foreground, f.cells > 0)
    assert inp.foreground_source == "mask" and inp.truth is None
    # the nucleus image's blobs are the reference for markers that came from the label image
    assert inp.reference_source == "nuclei"
    ps = (0.5, 0.5)
    expect = markers_from_image(f.image[2], pixel_size_um=ps)
    np.testing.assert_allclose(inp.reference_markers, expect, atol=1e-3)
    # ... and the label centroids are the reference for blob markers
    inp2 = prepare_inputs(e, markers_from="nuclei")
    assert inp2.reference_source == "markers"
    np.testing.assert_array_equal(inp2.reference_markers, markers_from_labels(f.nuclei))
    with pytest.raises(CytogenError, match="'nucleus_model' column is empty"):
        prepare_inputs(e, markers_from="nucleus_model")


def test_scribbles_train_the_pixel_classifier(field):
    root, f = field
    e = _entry(root, "source,markers,scribbles", "actin.tif,nuc_labels.tif,scrib.tif")
    inp = prepare_inputs(e)
    assert inp.foreground_source == "scribbles"
    assert _iou(inp.foreground, f.cells > 0) > 0.7
    # a given normaliser is used as it is
    inp2 = prepare_inputs(e, normalizer=Normalizer("none"), foreground=False)
    np.testing.assert_array_equal(inp2.image, inp.raw.data.astype(np.float32))
    assert inp2.foreground.all()


def _translator(folder: Path) -> Path:
    torch.manual_seed(0)
    net = build_model("unet", in_channels=3, out_channels=1, dims=2, depth=2, base_channels=4).eval()
    save_model_folder(folder, net, architecture={"name": "unet", "dims": 2, "in_channels": 3, "out_channels": 1,
                      "kwargs": {"depth": 2, "base_channels": 4}}, source_norm=Normalizer(),
                      target_norm=Normalizer().fit([np.ones((1, 4, 4), np.float32)]),
                      source_channels=["actin", "membrane", "nucleus"], target_channels=["nucleus"],
                      pixel_size_um=[1.0, 1.0], patch_size=[32, 32])
    return folder


def test_nucleus_model_markers_come_from_the_prediction_on_the_raw_source(field, monkeypatch):
    root, f = field
    _translator(root / "model")
    e = _entry(root, "source,nucleus_model,nuclei", "all.tif,model,nuc.tif")
    clear_model_cache()
    seen = {}

    def fake_predict(model, image, **kw):  # a perfect translator: the nucleus channel itself
        seen["image"] = image
        return image.data[2:3].astype(np.float32) * 3.0 + 1.0

    monkeypatch.setattr(predict_mod, "predict_image", fake_predict)
    inp = prepare_inputs(e, markers_from="nucleus_model")
    assert inp.marker_source == "nucleus_model"
    np.testing.assert_array_equal(seen["image"].data, f.image)  # not normalised
    assert seen["image"].pixel_size_um == (1.0, 1.0)
    # blob detection is invariant to the translator's affine intensity scale: same markers as the real nuclei
    np.testing.assert_allclose(inp.markers, markers_from_image(f.image[2], pixel_size_um=(1.0, 1.0)), atol=1e-3)
    assert inp.reference_source == "nuclei"
    np.testing.assert_allclose(inp.reference_markers, inp.markers, atol=1e-3)
    monkeypatch.undo()
    # the real predictor runs end to end with the saved (untrained) translator; the folder is loaded once
    clear_model_cache()
    a = prepare_inputs(e, markers_from="nucleus_model", foreground=False)
    b = prepare_inputs(e, markers_from="nucleus_model", foreground=False)
    assert _load_translator.cache_info().misses == 1 and _load_translator.cache_info().hits == 1
    assert a.markers.shape[1] == 2 and np.array_equal(a.markers, b.markers)


def test_translator_that_does_not_fit_and_mismatched_images(field, tmp_path):
    root, f = field
    _translator(root / "model")
    e = _entry(root, "source,nucleus_model", "actin.tif,model")  # 1 channel, model wants 3
    clear_model_cache()
    with pytest.raises(CytogenError, match="column 'nucleus_model'.*3"):
        prepare_inputs(e)
    write_image(root / "small.tif", Image(np.ones((1, 64, 64), np.uint8), "CYX"))
    e = _entry(root, "source,nuclei", "actin.tif,small.tif")
    with pytest.raises(CytogenError, match="column 'nuclei'.*same field and size"):
        prepare_inputs(e)
    e = _entry(root, "source,markers", "actin.tif,nuc.tif")  # float nucleus image is no label image
    with pytest.raises(CytogenError, match="column 'markers'.*not a label image"):
        prepare_inputs(e)
    e = _entry(root, "source,nuclei", "actin.tif,all.tif")
    with pytest.raises(CytogenError, match="one\\s+2D channel"):
        prepare_inputs(e)
    with pytest.raises(CytogenError, match="unknown key"):
        prepare_inputs(_entry(root, "source,nuclei", "actin.tif,nuc.tif"), {"sigma": 3})


def test_patch_sigma_in_um_when_the_pixel_size_is_known():
    from cytogen.workflows.cellseg_inputs import patch_sigma_px

    assert patch_sigma_px({"sigma_px": 15.0, "sigma_um": None}, (0.5, 0.5)) == (15.0, 15.0)
    assert patch_sigma_px({"sigma_px": 15.0, "sigma_um": 6.0}, (0.5, 0.25)) == (12.0, 24.0)
    assert patch_sigma_px({"sigma_px": 15.0, "sigma_um": 6.0}, None) == (15.0, 15.0)
