"""Self-contained HTML reports: text, tables and figures embedded as base64 PNG."""

from __future__ import annotations

import base64
import html
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from cytogen.io.atomic import write_text
from cytogen.report.figures import figure_png_bytes

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1200px;margin:2em auto;
padding:0 1em;color:#222}h1{font-size:1.6em}h2{font-size:1.25em;border-bottom:1px solid #ddd;
padding-bottom:.2em;margin-top:1.6em}table{border-collapse:collapse;font-size:.9em;margin:.6em 0}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}th{background:#f3f3f3}
td:first-child,th:first-child,td.text,th.text{text-align:left}img{max-width:100%;height:auto}
.note{color:#555;font-size:.9em}.table{max-width:100%;overflow-x:auto}
"""


@dataclass
class Section:
    """A report section: heading, paragraphs, tables (lists of row dicts) and figures."""

    title: str
    text: list[str] = field(default_factory=list)
    tables: list[tuple[str, list[dict[str, Any]]]] = field(default_factory=list)
    figures: list[tuple[str, Figure | bytes]] = field(default_factory=list)


def _fmt(v: Any) -> str:
    if v is None:  # a value not computed (too few samples...), not Python's "None"
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def _table(caption: str, rows: list[dict[str, Any]]) -> str:
    if not rows:
        return f"<p class='note'>{html.escape(caption)}: no rows</p>"
    cols = list(dict.fromkeys(k for r in rows for k in r))
    # numbers right-aligned, columns holding text left-aligned
    cls = {c: "" if all(_number_or_blank(r.get(c)) for r in rows) else " class='text'" for c in cols}
    head = "".join(f"<th{cls[c]}>{html.escape(str(c))}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td{cls[c]}>{_fmt(r.get(c, ''))}</td>" for c in cols) + "</tr>"
                   for r in rows)
    # a table wider than the page scrolls on its own instead of widening the whole page
    return f"<p><b>{html.escape(caption)}</b></p><div class='table'><table><tr>{head}</tr>{body}</table></div>"


def _number_or_blank(v: Any) -> bool:
    """Whether ``v`` aligns as a number: a real number, a string holding one (tables read back
    from CSV), or a blank / missing value."""
    if v is None:
        return True
    if isinstance(v, str):
        try:
            float(v)
        except ValueError:
            return v.strip() == ""
        return True
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))


def render_html(title: str, sections: list[Section], subtitle: str = "") -> str:
    """The whole report as one HTML string."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    if subtitle:
        parts.append(f"<p class='note'>{html.escape(subtitle)}</p>")
    for s in sections:
        parts.append(f"<h2>{html.escape(s.title)}</h2>")
        parts.extend(f"<p>{html.escape(t)}</p>" for t in s.text)
        parts.extend(_table(c, rows) for c, rows in s.tables)
        for caption, fig in s.figures:
            png = fig if isinstance(fig, bytes) else figure_png_bytes(fig)
            b64 = base64.b64encode(png).decode("ascii")
            parts.append(f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{b64}'>"
                         f"<figcaption class='note'>{html.escape(caption)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(path: str | Path, title: str, sections: list[Section], subtitle: str = "") -> Path:
    """Write a self-contained HTML report atomically (see :mod:`cytogen.io.atomic`)."""
    return write_text(path, render_html(title, sections, subtitle))
