"""CELLS folder round trip and refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cytogen.data.cellset import CELLS_FORMAT, read_cellset, write_cellset
from cytogen.errors import CytogenError


def _rows(n):
    return [{"cell_id": f"f/{i}", "field": "f", "structure": "ab"[i % 2], "split": "train" if i < 3 else "test",
             "dose": str(i)} for i in range(n)]


def test_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.random((5, 3, 16, 20)).astype(np.float32)
    out = write_cellset(tmp_path / "C", imgs, _rows(5), {"channels": ["cell", "dna", "target"],
                                                          "target_channel": 2, "pixel_size_um": [0.5, 0.5]},
                        extra_files={"note.txt": "hi"})
    cs = read_cellset(out / "cells.csv")
    assert cs.meta["format"] == CELLS_FORMAT and cs.meta["n_cells"] == 5 and (out / "note.txt").read_text() == "hi"
    assert cs.dims == 2 and cs.size == (16, 20) and cs.channels == ["cell", "dna", "target"]
    assert cs.reference_channels == [0, 1] and cs.target_channel == 2 and cs.pixel_size_um == (0.5, 0.5)
    assert cs.images.dtype == np.float16 and np.abs(cs.images - imgs).max() < 1e-3
    assert cs.structures == ["a", "b"] and cs.structure_index().tolist() == [0, 1, 0, 1, 0]
    assert cs.indices("test").tolist() == [3, 4] and cs.indices().tolist() == list(range(5))
    assert cs.indices("val").size == 0
    assert [r["crop_index"] for r in cs.rows] == ["0", "1", "2", "3", "4"] and cs.rows[2]["dose"] == "2"


def test_refusals(tmp_path):
    with pytest.raises(CytogenError, match="no such folder"):
        read_cellset(tmp_path / "nothing")
    out = write_cellset(tmp_path / "C", np.zeros((2, 2, 8, 8)), _rows(2), {"channels": ["cell", "dna"]})
    meta = json.loads((out / "cells.json").read_text())
    (out / "cells.json").write_text(json.dumps({**meta, "format": "other"}))
    with pytest.raises(CytogenError, match="format"):
        read_cellset(out)
    (out / "cells.json").write_text(json.dumps(meta))
    np.save(out / "crops.npy", np.zeros((3, 2, 8, 8), np.float16))
    with pytest.raises(CytogenError, match="3 crops but cells.csv 2"):
        read_cellset(out)
    with pytest.raises(CytogenError, match="one row per crop"):
        write_cellset(tmp_path / "D", np.zeros((2, 2, 8, 8)), _rows(3), {})
