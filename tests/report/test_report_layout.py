"""Layout fixes found by the browser screenshots, checked without a browser (so they hold in a clone
without Chromium): wide tables scroll in their own box, text columns align left, missing values read
n/a, R^2 bars stop at -1, KL ranks are integers, walk row labels wrap."""

from __future__ import annotations

import numpy as np

from cytogen.report import statcell_figures as F
from cytogen.report.html import Section, render_html


def test_tables_wrap_align_and_show_missing_values():
    rows = [{"name": "f0", "n": np.int64(3), "p": None, "csv": "0.25", "ci": "0.1-0.3", "ok": True},
            {"name": "f1", "n": 4, "p": 0.5, "csv": "1e-3", "ci": "0.2-0.4", "ok": False}]
    page = render_html("t", [Section("s", tables=[("c", rows)])])
    assert "<div class='table'><table>" in page and "</table></div>" in page
    assert ".table{max-width:100%;overflow-x:auto}" in page
    head = page[page.index("<tr>"):page.index("</tr>")]
    assert head == ("<tr><th class='text'>name</th><th>n</th><th>p</th><th>csv</th>"
                    "<th class='text'>ci</th><th class='text'>ok</th>")
    assert "<td>n/a</td>" in page and "None" not in page


def test_r2_bars_clip_at_minus_one_with_the_value_written():
    fig = F.r2_bar_figure(["PC1", "PC2", "PC3"], [0.4, -844.0, -0.3], [0.5, 0.3, 0.2])
    ax = fig.axes[0]
    assert ax.get_ylim() == (-1.0, 1.0)
    assert [t.get_text() for t in ax.texts] == ["-844"]
    assert F.r2_bar_figure(["PC1"], [-0.5]).axes[0].get_ylim() == (-0.5, 1.0)  # unclipped: as before


def test_kl_ranks_are_integer_ticks_and_walk_labels_wrap():
    ax = F.kl_bar_figure({"zr": np.array([2.0, 1.0, 0.1])}).axes[0]
    ax.figure.canvas.draw()
    ticks = [t for t in ax.get_xticks() if -0.5 <= t <= 2.5]
    assert ticks and all(float(t).is_integer() for t in ticks)
    walk = np.zeros((2, 3, 3, 8, 8), np.float32)
    fig = F.walk_figure(walk, ["zr_2: cell_intensity_median", "zr_0: cell_area"], ["-1", "0", "+1"])
    assert [fig.axes[0].get_ylabel(), fig.axes[3].get_ylabel()] == ["zr_2:\ncell_intensity_median", "zr_0:\ncell_area"]
