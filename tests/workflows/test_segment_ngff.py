"""``cytogen segment nuclei --output-format ome-zarr``: the segmented image with its nuclei as NGFF
labels, read back with ome-zarr-py and validated against the NGFF 0.4 schema."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import zarr

from cytogen.cli import main
from cytogen.errors import CytogenError
from cytogen.io.images import read_image, read_spec
from cytogen.io.ome_zarr import list_ome_zarr_labels, open_ome_zarr_levels
from cytogen.workflows.segment_nuclei import segment_nuclei

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
ome_reader = pytest.importorskip("ome_zarr.reader")
ome_io = pytest.importorskip("ome_zarr.io")
ome_format = pytest.importorskip("ome_zarr.format")
models = pytest.importorskip("ome_zarr_models.v04")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory) -> tuple[Path, str]:
    """A nucleus segmenter trained for 2 steps on small synthetic fields, and one field."""
    from cytogen.synth.cells import write_synthetic_dataset

    root = tmp_path_factory.mktemp("segngff")
    manifest = write_synthetic_dataset(root / "set", n_fields=3, shape=(96, 80), seed=4,
                                       pixel_size_um=0.5)
    with open(manifest, newline="") as f:
        rows = [{"name": r["name"], "source": str(root / "set" / r["target"]),
                 "target": str(root / "set" / "masks" / f"{r['name']}_nuclei.tif"),
                 "split": r["split"]} for r in csv.DictReader(f)]
    m = root / "m.csv"
    with open(m, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    run = root / "seg"
    sets = ["model.kwargs.base_channels=4", "model.kwargs.depth=2", "data.patch_size=[32,32]",
            "data.batch_size=2", "data.patches_per_epoch=4", "data.val_patches=2"]
    assert main(["train", str(CONFIGS / "segment_nuclei2d.yaml"), "--data", str(m), "--out", str(run),
                 "--max-steps", "2", "--precision", "32", *[a for s in sets for a in ("--set", s)]]) == 0
    return run / "model", rows[0]["source"]


def test_ome_zarr_output_holds_the_image_and_the_same_labels_as_the_tif(segmenter, tmp_path):
    model, field = segmenter
    args = ["segment", "nuclei", str(model), field, "--precision", "32",
            "--set", "instances.min_size_px=1", "--set", "instances.fg_threshold=0.3"]
    assert main([*args, "--out", str(tmp_path / "t")]) == 0
    assert main([*args, "--out", str(tmp_path / "z"), "--output-format", "ome-zarr"]) == 0
    name = Path(field.partition("#")[0]).name.split(".")[0]
    tif = read_image(tmp_path / "t" / f"{name}.tif")
    path = tmp_path / "z" / f"{name}.ome.zarr"
    assert sorted(p.name for p in (tmp_path / "z").iterdir()) == sorted(
        [path.name, "nuclei.csv", "summary.json"])
    source = read_spec(field)
    image = read_image(path)  # level 0: the image that was segmented, pixel size kept
    np.testing.assert_array_equal(image.data, source.data)
    assert image.pixel_size_um == pytest.approx(source.pixel_size_um)
    assert image.channel_names == source.channel_names
    assert list_ome_zarr_labels(path) == ["nuclei"]
    labels = open_ome_zarr_levels(path / "labels" / "nuclei")
    np.testing.assert_array_equal(labels[0][...], tif.data[0])  # same segmentation as the TIFF
    assert tif.data.max() >= 1 and [lv.shape for lv in labels] == [(96, 80)]

    reader = ome_reader.Reader(ome_io.parse_url(str(path), fmt=ome_format.FormatV04()))
    nodes = {str(n.zarr.path).rstrip("/"): n for n in reader()}
    label_node = nodes[str(path / "labels" / "nuclei")]
    assert label_node.metadata["name"] == "nuclei"
    np.testing.assert_array_equal(np.asarray(label_node.data[0]), tif.data[0])
    group = zarr.open_group(str(path), mode="r")
    models.Image.from_zarr(group)
    models.ImageLabel.from_zarr(group["labels/nuclei"])
    with pytest.raises(CytogenError, match="output format 'png'"):
        segment_nuclei(model, [field], out=tmp_path / "bad", output_format="png")
    assert not (tmp_path / "bad").exists()


def test_segment_cells_ome_zarr_output(tmp_path):
    from cytogen.io.images import Image, write_image
    from cytogen.synth.cells import synth_field

    data = tmp_path / "data"
    f = synth_field(shape=(96, 96), pixel_size_um=1.0, seed=0, n_cells=5)
    write_image(data / "cell.tif", Image(f.image[0:1], "CYX", (1.0, 1.0), ["actin"]))
    write_image(data / "nl.tif", Image(f.nuclei[None].astype(np.uint16), "CYX", (1.0, 1.0)))
    (data / "M.csv").write_text("name,source,markers,pixel_size_um\nf0,cell.tif,nl.tif,0.8\n")
    base = ["segment", "cells", "--method", "propagate", "--data", str(data / "M.csv")]
    assert main([*base, "--out", str(tmp_path / "t")]) == 0
    assert main([*base, "--out", str(tmp_path / "z"), "--output-format", "ome-zarr"]) == 0
    path = tmp_path / "z" / "f0.ome.zarr"
    assert not (tmp_path / "z" / "f0.tif").exists()
    image = read_image(path)
    np.testing.assert_array_equal(image.data, f.image[0:1])
    assert image.pixel_size_um == pytest.approx((0.8, 0.8))  # the manifest's pixel size wins
    assert image.channel_names == ["actin"]
    assert list_ome_zarr_labels(path) == ["cells"]
    cells = read_image(path / "labels" / "cells")
    tif = read_image(tmp_path / "t" / "f0.tif")
    np.testing.assert_array_equal(cells.data, tif.data)
    assert tif.data.max() >= 3 and cells.pixel_size_um == pytest.approx((0.8, 0.8))
    group = zarr.open_group(str(path), mode="r")
    models.Image.from_zarr(group)
    models.ImageLabel.from_zarr(group["labels/cells"])
