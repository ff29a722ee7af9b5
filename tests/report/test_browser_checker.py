"""The browser check itself: a sound page passes, and each kind of defect a report could have is caught
(so a passing report test means something). Pages are written here; a local HTTP server proves that
an external request is blocked before it leaves the browser."""

from __future__ import annotations

import http.server
import io
import threading

import numpy as np
import pytest
from matplotlib.figure import Figure

from cytogen.report.figures import figure_png_bytes
from cytogen.report.html import Section, write_report

pytestmark = pytest.mark.usefixtures("chromium_browser")


def _png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.arange(48 * 32, dtype=np.uint8).reshape(32, 48)).save(buf, format="PNG")
    return buf.getvalue()


GOOD_BODY = """<h1>Report</h1><p><a href="#fig">figures</a> <a href="other.html">other</a>
<a href="https://doi.org/10.1000/x">a citation link (not a load)</a></p>
<h2 id="fig">Figures</h2><img alt="inline" src="data:image/png;base64,{b64}"><img alt="file" src="local.png">
<svg width="20" height="20"><rect width="10" height="10"/></svg>"""


def _page(folder, body: str, head: str = "<title>t</title>", doctype: str = "<!doctype html>"):
    import base64

    (folder / "local.png").write_bytes(_png())
    (folder / "other.html").write_text("<!doctype html><title>o</title><h1>o</h1>")
    path, b64 = folder / "page.html", base64.b64encode(_png()).decode()
    path.write_text(f"{doctype}<html><head><meta charset='utf-8'>{head}</head><body>"
                    + body.replace("{b64}", b64).replace("{b64cut}", b64[: len(b64) // 2 // 4 * 4]) + "</body></html>")
    return path


def test_a_sound_page_passes(chromium_browser, check_page, tmp_path):
    res = check_page(chromium_browser, _page(tmp_path, GOOD_BODY), tmp_path / "shot.png")
    assert res.problems == []
    assert res.title == "t" and res.headings == ["Report", "Figures"] and res.n_images == 2
    assert res.screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


DEFECTS = {
    "missing local image": ('<img alt="m" src="missing.png">', "", ["image did not load", "failed to load"]),
    "corrupt inline image": ('<img alt="c" src="data:image/png;base64,iVBORw0KGgoAAAA=">', "",
                             ["image did not load"]),
    "truncated inline image": ('<img alt="t" src="data:image/png;base64,{b64cut}">', "", ["does not decode"]),
    "image without alt": ('<img src="local.png">', "", ["without alt text"]),
    "hidden image": ('<img alt="h" style="display:none" src="local.png">', "", ["not laid out"]),
    "console.error": ("<script>console.error('boom')</script>", "", ["console error: boom"]),
    "uncaught exception": ("<script>throw new Error('kaput')</script>", "", ["page error", "kaput"]),
    "external image": ('<img alt="e" src="https://cdn.example.org/x.png">', "",
                       ["network request to https://cdn.example.org/x.png"]),
    "external stylesheet": ("", "<title>t</title><link rel=stylesheet href='http://fonts.example.org/a.css'>",
                            ["network request to http://fonts.example.org/a.css"]),
    "external fetch": ("<script>fetch('https://api.example.org/q').catch(e => 0)</script>", "",
                       ["network request to https://api.example.org/q"]),
    "broken local link": ('<a href="gone.html">x</a>', "", ["missing local file", "gone.html"]),
    "broken anchor": ('<a href="#nowhere">x</a>', "", ["missing anchor #nowhere"]),
    "empty svg": ('<svg width="0" height="0"></svg>', "", ["empty <svg>"]),
    "empty iframe": ("<iframe></iframe>", "", ["empty <iframe>"]),
    "page wider than the window": ('<table><tr><td style="min-width:3000px">wide</td></tr></table>', "",
                                   ["px wide in a 1280 px window", "table wide"]),
    "no title": ("", "<meta name='x' content='no title'>", ["no <title>"]),
    "two h1": ("<h1>again</h1>", "", ["expected one non-empty <h1>"]),
}


@pytest.mark.parametrize("defect", list(DEFECTS))
def test_each_defect_is_caught(chromium_browser, check_page, tmp_path, defect):
    body, head, expected = DEFECTS[defect]
    path = _page(tmp_path, GOOD_BODY + body, head=head or "<title>t</title>")
    problems = check_page(chromium_browser, path).problems
    text = "\n".join(problems)
    assert problems and all(e in text for e in expected), problems


def test_quirks_mode_and_missing_file(chromium_browser, check_page, tmp_path):
    assert "quirks mode" in "".join(check_page(chromium_browser, _page(tmp_path, GOOD_BODY, doctype="")).problems)
    assert "no such file" in check_page(chromium_browser, tmp_path / "absent.html").problems[0]


def test_external_request_never_leaves_the_browser(chromium_browser, check_page, tmp_path):
    """A server on localhost sees no request from a page that asks it for an image and a script."""
    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        path = _page(tmp_path, GOOD_BODY + f'<img alt="x" src="{url}/x.png"><script src="{url}/s.js"></script>')
        problems = check_page(chromium_browser, path).problems
    finally:
        server.shutdown()
        server.server_close()
    assert hits == []
    assert any(f"network request to {url}/x.png" in p for p in problems)
    assert any(f"network request to {url}/s.js" in p for p in problems)


def test_cytogen_render_passes_and_a_dropped_figure_is_caught(chromium_browser, check_page, tmp_path):
    """The report writer's own output passes, also with a table far wider than the page (it scrolls in
    its own box); the same report with a figure's data cut short fails."""
    fig = Figure(figsize=(2, 1.5))
    fig.add_subplot().plot([0, 1, 4])
    wide = [{"name": f"field_{i}", "p": None if i else 0.5, "read back": str(i / 3),
             **{f"a_long_column_name_{k}": np.float64(k / 7) for k in range(40)}} for i in range(3)]
    path = write_report(tmp_path / "r.html", "A & B <report>", [Section("One", ["text"], [("t", wide)],
                                                                         [("curve", fig)])])
    res = check_page(chromium_browser, path)
    assert res.problems == [] and res.title == "A & B <report>" and res.headings == ["A & B <report>", "One"]
    text = path.read_text()
    assert "<th class='text'>name</th>" in text and "<th>a_long_column_name_0</th>" in text
    assert "<td>n/a</td>" in text and "None" not in text and "<th>read back</th>" in text
    unwrapped = tmp_path / "unwrapped.html"  # the same table outside its scrolling box widens the page
    unwrapped.write_text(path.read_text().replace("<div class='table'>", "<div>"))
    assert any("scrolls sideways" in p for p in check_page(chromium_browser, unwrapped).problems)
    b64 = __import__("base64").b64encode(figure_png_bytes(fig)).decode()
    cut = tmp_path / "cut.html"
    cut.write_text(path.read_text().replace(b64, b64[: len(b64) // 2]))
    assert any("inline image does not decode" in p for p in check_page(chromium_browser, cut).problems)
