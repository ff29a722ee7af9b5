"""Report modules build figures without pyplot, so importing them keeps the user's backend."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

SCRIPT = r"""
import json, sys
import matplotlib
before = matplotlib.get_backend()
import numpy as np
from cytogen.report import figures, html, object_figures
after_import = matplotlib.get_backend()
img = np.random.default_rng(0).random((1, 32, 32))
labels = np.zeros((32, 32), int); labels[4:12, 4:12] = 1
figs = [
    figures.panels_figure([("f0", [("source", img), ("prediction", img)])]),
    figures.loss_curve_figure({"step": np.arange(4.0), "train_loss": np.ones(4), "val_loss": np.ones(4)}),
    figures.metric_hist_figure({"pearson_r": np.array([0.5, 0.7])}),
    object_figures.distance_hist_figure(np.array([1.0, 2.0]), np.array([1.0]), [("2 px", 2.0)], "px"),
    object_figures.overlay_figure([("f0", img[0], labels, labels)]),
]
png = [figures.figure_png_bytes(f)[:8] for f in figs]
figures.save_figure(figs[0], sys.argv[1] + "/p.png")
html.write_report(sys.argv[1] + "/r.html", "t", [html.Section("s", figures=[("c", figs[1])])])
print(json.dumps({"before": before, "after_import": after_import, "after_figures": matplotlib.get_backend(),
                  "pyplot_imported": "matplotlib.pyplot" in sys.modules,
                  "png": all(p == b"\x89PNG\r\n\x1a\n" for p in png)}))
"""


@pytest.mark.parametrize("backend", ["svg"])
def test_report_modules_leave_the_backend_alone(backend, tmp_path):
    env = {**os.environ, "MPLBACKEND": backend}
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["before"] == got["after_import"] == got["after_figures"] == backend
    assert not got["pyplot_imported"] and got["png"]
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "data:image/png;base64," in (tmp_path / "r.html").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.png", "r.html"]  # no temp files left
