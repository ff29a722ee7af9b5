"""Cell outline overlays: outlines in each label's colour, large fields downsampled, markers scaled along."""

import numpy as np

from cytogen.report.cellseg_figures import cellseg_overlay_figure, label_colours, outline_rgb, overlay_panel
from cytogen.report.figures import figure_png_bytes


def test_outlines_take_their_labels_colour_and_interiors_stay_grey():
    lab = np.zeros((20, 20), np.int32)
    lab[2:8, 2:8] = 1
    lab[10:18, 10:18] = 2
    grey = np.linspace(0, 1, 400, dtype=np.float32).reshape(20, 20)
    rgb = outline_rgb(grey, lab)
    colours = label_colours(2)
    np.testing.assert_allclose(rgb[2, 5], colours[1])  # top edge of cell 1
    np.testing.assert_allclose(rgb[17, 12], colours[2])  # bottom edge of cell 2
    assert np.allclose(rgb[5, 5], rgb[5, 5, 0])  # interior: grey (R = G = B)
    assert np.allclose(rgb[0, 0], rgb[0, 0, 0])  # background: grey
    assert not np.allclose(colours[1], colours[2])


def test_large_fields_are_downsampled_with_their_markers():
    lab = np.zeros((2000, 1500), np.int32)
    lab[400:800, 400:800] = 1
    markers = np.array([[600.0, 600.0]])
    p = overlay_panel("big", np.random.default_rng(0).random((2, 2000, 1500), dtype=np.float32), lab, markers,
                      max_side=500)
    assert p.step == 4 and p.grey.shape == (500, 375) and p.labels.shape == (500, 375)
    np.testing.assert_allclose(p.markers, [[150.0, 150.0]])
    assert p.labels[150, 150] == 1 and p.labels[10, 10] == 0
    png = figure_png_bytes(cellseg_overlay_figure([p, overlay_panel("small", lab[:64, :64], lab[:64, :64],
                                                                      np.zeros((0, 2)))]))
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) < 500_000
