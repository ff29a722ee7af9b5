"""Headless Chromium for the report tests: find the browser, start it for a closed network, and check
that a self-contained HTML report renders (figures load, no console/page errors, no network requests).

Chromium is Debian's ``chromium`` package (or ``$CYTOGEN_CHROMIUM``), driven through playwright's
Python API; playwright never downloads a browser of its own here. Where playwright or Chromium is
absent (a user's clone) the browser tests skip with the reason; where Chromium is there but does not
start, they fail.
"""

from __future__ import annotations

import io
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

REPO = Path(__file__).resolve().parents[2]
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")

# Flags for a headless browser on a CI machine without network (playwright adds its own
# automation defaults, several of them the same; these are the ones the tests rely on).
CHROMIUM_FLAGS = [
    "--no-sandbox",                      # CI runs as root in a container: Chromium's sandbox refuses root
    "--disable-gpu",                     # no GPU: software rendering, no GPU process probing
    "--disable-dev-shm-usage",           # containers give /dev/shm 64 MB: long reports would crash the tab
    "--no-first-run",                    # no first-run wizard or profile import
    "--no-default-browser-check",        # no "make Chromium your default browser" prompt
    "--disable-background-networking",   # no Safe Browsing, variations or update fetches
    "--disable-component-update",        # no component (Widevine, CRLSet, ...) downloads
    "--disable-default-apps",            # no bundled apps installed into the fresh profile
    "--disable-extensions",              # nothing loaded beside the page
    "--disable-sync",                    # no Google account sync
    "--disable-breakpad",                # no crash-report uploader
    "--metrics-recording-only",          # UMA recorded locally, never uploaded
    "--mute-audio",                      # no audio device needed
    "--password-store=basic",            # no keyring / D-Bus secret service lookup
    "--disable-features=Translate,MediaRouter,OptimizationHints,AutofillServerCommunication",
    "--host-resolver-rules=MAP * ~NOTFOUND",  # every host name fails at once instead of a DNS timeout
]
LOCAL_SCHEMES = ("file:", "data:", "about:")  # a self-contained report loads nothing else


def find_chromium() -> str | None:
    """``$CYTOGEN_CHROMIUM`` (must exist when set), else the first of :data:`CHROMIUM_NAMES` on PATH."""
    given = os.environ.get("CYTOGEN_CHROMIUM")
    if given:
        if not (Path(given).is_file() and os.access(given, os.X_OK)):
            pytest.fail(f"CYTOGEN_CHROMIUM={given}: not an executable file; point it at a Chromium "
                        f"binary or unset it to search PATH for {', '.join(CHROMIUM_NAMES)}")
        return given
    return next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)


def artifacts_dir() -> Path:
    """Where screenshots go: ``$CYTOGEN_TEST_ARTIFACTS/browser`` if set, else ``test-artifacts/browser``."""
    root = os.environ.get("CYTOGEN_TEST_ARTIFACTS")
    out = (Path(root) if root else REPO / "test-artifacts") / "browser"
    out.mkdir(parents=True, exist_ok=True)
    return out


@dataclass
class PageCheck:
    """What the browser saw on one page; ``problems`` is empty for a sound report."""

    url: str
    title: str = ""
    headings: list[str] = field(default_factory=list)
    n_images: int = 0
    problems: list[str] = field(default_factory=list)
    screenshot: Path | None = None


_INSPECT_JS = """async () => {
  await Promise.all([...document.images].map(i => i.decode().catch(() => null)));
  const box = e => { const r = e.getBoundingClientRect(); return [r.width, r.height]; };
  const attr = (sel, a) => [...document.querySelectorAll(sel)].map(e => e.getAttribute(a)).filter(v => v);
  return {
    title: document.title.trim(),
    mode: document.compatMode,
    h1: [...document.querySelectorAll('h1')].map(e => e.textContent.trim()),
    h2: [...document.querySelectorAll('h2')].map(e => e.textContent.trim()),
    inline: [...document.images].map(i => i.currentSrc || i.src).filter(s => s.startsWith('data:image/') && !s.startsWith('data:image/svg')),
    images: [...document.images].map(i => ({src: (i.currentSrc || i.src).slice(0, 80), alt: i.alt,
      complete: i.complete, w: i.naturalWidth, h: i.naturalHeight, box: box(i)})),
    drawn: [...document.querySelectorAll('svg, canvas')].map(e => ({tag: e.tagName, box: box(e)})),
    embeds: [...document.querySelectorAll('object, embed, iframe')].map(e => ({tag: e.tagName,
      src: e.getAttribute('data') || e.getAttribute('src') || '', box: box(e)})),
    refs: attr('a[href]', 'href').concat(attr('link[href]', 'href'), attr('script[src]', 'src'),
      attr('img[src]', 'src'), attr('source[src]', 'src'), attr('object[data]', 'data'),
      attr('embed[src]', 'src'), attr('iframe[src]', 'src')).map(h => new URL(h, document.baseURI).href),
    ids: [...document.querySelectorAll('[id], a[name]')].map(e => e.id || e.getAttribute('name')),
    width: [document.documentElement.scrollWidth, window.innerWidth],
    wide: [...document.body.querySelectorAll('*')].filter(e => e.getBoundingClientRect().right > window.innerWidth
      && !(e.parentElement && e.parentElement.getBoundingClientRect().right > window.innerWidth))
      .slice(0, 3).map(e => e.tagName.toLowerCase() + ' ' + (e.textContent || '').trim().slice(0, 40)),
  };
}"""


def _inline_image_problems(srcs: list[str]) -> list[str]:
    """Inline images whose bytes do not decode to the end: a browser shows a truncated PNG in part,
    with a natural size, so the in-page checks alone would pass it."""
    import base64
    import binascii

    from PIL import Image, UnidentifiedImageError

    out = []
    for src in srcs:
        head, _, data = src.partition(",")
        try:
            raw = base64.b64decode(data, validate=True) if head.endswith(";base64") else unquote(data).encode()
            with Image.open(io.BytesIO(raw)) as im:
                im.load()
        except (binascii.Error, OSError, UnidentifiedImageError, ValueError) as e:
            out.append(f"inline image does not decode ({head[5:]}, {len(data)} chars): {e}")
    return out


def _local_ref_problems(url: str, refs: list[str], ids: set[str]) -> list[str]:
    """Local references (``file:`` targets, ``#anchors`` into the page) that point at nothing."""
    out, page = [], urlsplit(url)
    for ref in refs:
        u = urlsplit(ref)
        if u.scheme != "file":
            continue  # data: is inline; http(s) links are not loads (requests are checked separately)
        if u.path == page.path and u.fragment:
            if unquote(u.fragment) not in ids:
                out.append(f"link to missing anchor #{u.fragment}")
        elif not Path(unquote(u.path)).exists():
            out.append(f"link/reference to missing local file {unquote(u.path)}")
    return out


def inspect_page(browser, path: str | Path, screenshot: str | Path | None = None,
                 viewport: tuple[int, int] = (1280, 900)) -> PageCheck:
    """Open ``path`` in a fresh context of ``browser`` and list what is wrong with it.

    Every request that is not ``file:``/``data:`` is aborted and reported; console errors, uncaught
    page errors, failed local loads, images that did not decode (``complete`` and
    ``naturalWidth > 0``, inline bytes decoded to the end) or are not laid out or lack alt text,
    empty ``svg``/``canvas``/``object``/``embed``/``iframe``, a page wider than the window,
    references to missing local files or anchors, quirks mode, and a missing title or headings are
    reported. A full-page PNG goes to ``screenshot`` when given (also for a page with problems).
    """
    path = Path(path).resolve()
    res = PageCheck(url=path.as_uri())
    if not path.is_file():
        res.problems.append(f"{path}: no such file")
        return res
    ctx = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]},
                              service_workers="block", accept_downloads=False)
    try:
        def route(r):
            if r.request.url.startswith(LOCAL_SCHEMES):
                r.continue_()
            else:
                r.abort("blockedbyclient")

        ctx.route("**/*", route)
        page = ctx.new_page()
        page.on("request", lambda q: None if q.url.startswith(LOCAL_SCHEMES)
                else res.problems.append(f"network request to {q.url}"))
        page.on("websocket", lambda w: res.problems.append(f"websocket to {w.url}"))
        page.on("console", lambda m: res.problems.append(f"console error: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: res.problems.append(f"page error: {e}"))
        page.on("requestfailed", lambda q: res.problems.append(f"failed to load {q.url[:120]}: {q.failure}")
                if q.url.startswith("file:") else None)
        page.goto(res.url, wait_until="load", timeout=30_000)
        info = page.evaluate(_INSPECT_JS)
        res.title, res.n_images = info["title"], len(info["images"])
        res.headings = info["h1"] + info["h2"]
        p = res.problems
        if info["mode"] != "CSS1Compat":
            p.append("page renders in quirks mode (no <!doctype html>)")
        if not res.title:
            p.append("no <title>")
        if len(info["h1"]) != 1 or not info["h1"][0]:
            p.append(f"expected one non-empty <h1>, found {info['h1']}")
        if any(not h for h in info["h2"]):
            p.append("an empty <h2>")
        for im in info["images"]:
            if not (im["complete"] and im["w"] > 0 and im["h"] > 0):
                p.append(f"image did not load: {im['src']}")
            elif min(im["box"]) <= 0:
                p.append(f"image not laid out (0 size on the page): {im['src']}")
            if not im["alt"]:
                p.append(f"image without alt text: {im['src']}")
        p += [f"empty <{d['tag'].lower()}>" for d in info["drawn"] if min(d["box"]) <= 0]
        p += [f"empty <{e['tag'].lower()}> ({e['src'][:80]})" for e in info["embeds"]
              if not e["src"] or min(e["box"]) <= 0]
        if info["width"][0] > info["width"][1]:
            p.append(f"page {info['width'][0]} px wide in a {info['width'][1]} px window (scrolls sideways): "
                     f"{info['wide']}")
        p += _inline_image_problems(info["inline"])
        p += _local_ref_problems(res.url, info["refs"], set(info["ids"]))
        if screenshot is not None:
            res.screenshot = Path(screenshot)
            page.screenshot(path=str(res.screenshot), full_page=True)
    finally:
        ctx.close()
    return res


@pytest.fixture(scope="session")
def chromium_browser():
    """One headless Chromium for the session (skips without playwright or a Chromium binary)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install -e '.[test]')")
    exe = find_chromium()
    if exe is None:
        pytest.skip(f"no Chromium found (set CYTOGEN_CHROMIUM or install Debian's 'chromium' package; "
                    f"searched PATH for {', '.join(CHROMIUM_NAMES)})")
    with sync_api.sync_playwright() as pw:
        try:
            browser = pw.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_FLAGS, timeout=60_000)
        except sync_api.Error as e:  # present but broken (missing libraries...): a failure, not a skip
            pytest.fail(f"Chromium at {exe} did not start headless: {e}")
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def check_page():
    """:func:`inspect_page` (a fixture, since test modules here cannot import this conftest)."""
    return inspect_page


@pytest.fixture(scope="session")
def browser_artifacts() -> Path:
    """The screenshot folder (:func:`artifacts_dir`)."""
    return artifacts_dir()
