"""The segmentation manifest (M.csv): columns, path resolution, marker sources and error messages."""

from pathlib import Path

import numpy as np
import pytest
import tifffile

from cytogen.data.seg_manifest import COLUMNS, read_seg_manifest
from cytogen.errors import CytogenError


def _img(path: Path, shape=(8, 8)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, np.ones(shape, np.uint8))
    return path


@pytest.fixture
def folder(tmp_path):
    for name in ("a/gfp.tif", "a/bf.tif", "a/hoechst.tif", "a/nuc_labels.tif", "a/mask.tif", "a/scrib.tif",
                 "a/cells.tif", "b.tif"):
        _img(tmp_path / name)
    (tmp_path / "model").mkdir()
    return tmp_path


def test_reads_every_column_resolving_paths_and_defaults(folder):
    (folder / "M.csv").write_text(
        "name,source,nuclei,nucleus_model,markers,foreground,scribbles,cells,split,pixel_size_um\n"
        "f1,a/gfp.tif;a/bf.tif#c=0,a/hoechst.tif,model,a/nuc_labels.tif,a/mask.tif,a/scrib.tif,a/cells.tif,"
        "test,0.87\n"
        ",a/gfp.tif,,model,,,,,,\n")
    e1, e2 = read_seg_manifest(folder / "M.csv")
    assert e1.name == "f1" and e1.split == "test" and e1.pixel_size_um == 0.87
    assert e1.source == [str(folder / "a/gfp.tif"), str(folder / "a/bf.tif") + "#c=0"]
    assert e1.nuclei == str(folder / "a/hoechst.tif") and e1.nucleus_model == str(folder / "model")
    assert e1.markers == str(folder / "a/nuc_labels.tif") and e1.foreground == str(folder / "a/mask.tif")
    assert e1.scribbles == str(folder / "a/scrib.tif") and e1.cells == str(folder / "a/cells.tif")
    assert e1.marker_sources == ["nuclei", "nucleus_model", "markers"]
    # defaults: name from the first source's stem, split train, no pixel size, unset columns None
    assert e2.name == "gfp" and e2.split == "train" and e2.pixel_size_um is None
    assert e2.nuclei is None and e2.foreground is None and e2.marker_sources == ["nucleus_model"]


def test_absolute_paths_and_a_subset_of_columns(folder):
    (folder / "sub").mkdir()
    (folder / "sub" / "M.csv").write_text(f"source,markers\n{folder / 'b.tif'},../a/nuc_labels.tif\n")
    (e,) = read_seg_manifest(folder / "sub" / "M.csv")
    assert e.source == [str(folder / "b.tif")] and e.markers == str(folder / "a" / "nuc_labels.tif")


@pytest.mark.parametrize("body, message", [
    ("source,nuclei,colour\nb.tif,b.tif,red\n", "unknown column(s) ['colour']; the accepted columns are: "
     + ", ".join(COLUMNS)),
    ("nuclei\nb.tif\n", "needs a 'source' column"),
    ("source,cells\nb.tif,b.tif\n", "needs a marker source column"),
    ("source,nuclei,markers\nb.tif,b.tif,\nb.tif,,\n", "row 2 (line 3): no marker source"),
    ("source,nuclei\nb.tif,a/missing.tif\n", "row 1 (line 2), column 'nuclei': "),
    ("source,nuclei\nmissing.tif,b.tif\n", "column 'source'"),
    ("source,nucleus_model\nb.tif,nomodel\n", "column 'nucleus_model'"),
    ("source,nucleus_model\nb.tif,b.tif\n", "is not a folder"),
    ("source,nuclei\nb.tif,b.tif;a/gfp.tif\n", "column 'nuclei': takes one image"),
    ("source,nuclei,split\nb.tif,b.tif,training\n", "column 'split'"),
    ("source,nuclei,pixel_size_um\nb.tif,b.tif,-1\n", "positive"),
    ("source,nuclei,pixel_size_um\nb.tif,b.tif,abc\n", "not a number"),
    ("name,source,nuclei\nf,b.tif,b.tif\nf,b.tif,b.tif\n", "duplicate field name 'f' (also on row 1)"),
    ("source,nuclei\n,b.tif\n", "column 'source': empty"),
    ("source,nuclei\n", "no rows"),
])
def test_bad_manifests_name_the_problem(folder, body, message):
    (folder / "M.csv").write_text(body)
    with pytest.raises(CytogenError) as exc:
        read_seg_manifest(folder / "M.csv")
    assert message in str(exc.value)
    assert str(folder / "M.csv") in str(exc.value)


def test_missing_manifest_and_unchecked_files(folder):
    with pytest.raises(CytogenError, match="not found"):
        read_seg_manifest(folder / "nope.csv")
    (folder / "M.csv").write_text("source,nuclei\nmissing.tif,also_missing.tif\n")
    (e,) = read_seg_manifest(folder / "M.csv", check_files=False)
    assert e.nuclei == str(folder / "also_missing.tif")
