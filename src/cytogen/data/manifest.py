"""Manifest CSV: one row per field, pairing source and target images.

Columns
-------
``source`` (required)
    One or more image paths separated by ``;``, stacked as channels. ``path#c=K`` picks channel
    ``K`` (0-based) of a multi-channel file.
``target`` (required for training and evaluation)
    Same syntax as ``source``.
``name``
    Field name, used for output files (default: stem of the first source file).
``mask``
    Optional label/binary image (e.g. nucleus masks) for the mask-weighted loss and sampling.
``split``
    ``train``, ``val`` or ``test`` (default ``train``).
``pixel_size_um``
    In-plane pixel size, overriding what the image files say.
``group``
    Optional grouping (e.g. a well or a specimen); fields of one group share a split when
    :func:`build_manifest` assigns splits.
``reference``
    Optional image aligned with the field, read as it is (no normalisation): for
    ``loss.exclusivity_weight > 0`` the frozen per-pixel maximum of the other structures'
    predictions, in the normalised units of this model's target (1 or one channel per target;
    written by ``cytogen retrain exclusivity``).

Relative paths are resolved against the folder that holds the manifest.
"""

from __future__ import annotations

import csv
import fnmatch
import glob as globlib
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cytogen.errors import CytogenError
from cytogen.io.atomic import atomic_file

COLUMNS = ("name", "source", "target", "mask", "split", "pixel_size_um", "group", "reference")
SPLITS = ("train", "val", "test")


@dataclass
class FieldEntry:
    """One row of a manifest with paths resolved to absolute specs (``path[#c=K]``)."""

    name: str
    source: list[str]
    target: list[str]
    mask: str | None = None
    split: str = "train"
    pixel_size_um: float | None = None
    group: str | None = None
    reference: str | None = None


def _split_specs(value: str, base: Path) -> list[str]:
    specs = []
    for part in value.split(";"):
        part = part.strip()
        if not part:
            continue
        path, sep, chan = part.partition("#")
        p = Path(path)
        if not p.is_absolute():
            p = Path(os.path.normpath(base / p))
        specs.append(str(p) + (sep + chan if sep else ""))
    return specs


def _spec_path(spec: str) -> Path:
    return Path(spec.partition("#")[0])


def read_manifest(path: str | Path, *, require_target: bool = True,
                  check_files: bool = True) -> list[FieldEntry]:
    """Read and validate a manifest CSV.

    Parameters
    ----------
    path
        The CSV file.
    require_target
        Raise when a row has no ``target``.
    check_files
        Raise when a referenced file does not exist.

    Returns
    -------
    list of FieldEntry
    """
    path = Path(path)
    if not path.is_file():
        raise CytogenError(
            f"{path}: manifest not found; build one with 'cytogen manifest' or check the path"
        )
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (UnicodeDecodeError, OSError) as exc:
        raise CytogenError(f"{path}: cannot be read as a UTF-8 CSV manifest ({exc})") from exc
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in (reader.fieldnames or [])]
    if "source" not in header or (require_target and "target" not in header):
        need = "'source' and 'target'" if require_target else "'source'"
        raise CytogenError(
            f"{path}: manifest needs columns {need}; found {header or 'no header'}. "
            f"Columns are: {', '.join(COLUMNS)}"
        )
    unknown = sorted(set(header) - set(COLUMNS))
    if unknown:
        raise CytogenError(f"{path}: unknown manifest column(s) {unknown}; allowed: {list(COLUMNS)}")
    base = path.parent
    entries: list[FieldEntry] = []
    seen: dict[str, int] = {}
    for lineno, raw in enumerate(reader, start=2):
        row = {(k or "").strip(): (v or "").strip() for k, v in raw.items() if k is not None}
        if not any(row.values()):
            continue
        where = f"{path}, line {lineno}"
        source = _split_specs(row.get("source", ""), base)
        target = _split_specs(row.get("target", ""), base)
        if not source:
            raise CytogenError(f"{where}: empty 'source'; give at least one image path")
        if require_target and not target:
            raise CytogenError(f"{where}: empty 'target'; give the image to predict")
        mask = _split_specs(row.get("mask", ""), base)
        if len(mask) > 1:
            raise CytogenError(f"{where}: 'mask' takes one image, got {len(mask)}")
        reference = _split_specs(row.get("reference", ""), base)
        if len(reference) > 1:
            raise CytogenError(f"{where}: 'reference' takes one image, got {len(reference)}")
        split = row.get("split", "") or "train"
        if split not in SPLITS:
            raise CytogenError(f"{where}: split {split!r} is not one of {SPLITS}")
        px_raw = row.get("pixel_size_um", "")
        pixel_size = None
        if px_raw:
            try:
                pixel_size = float(px_raw)
            except ValueError:
                raise CytogenError(f"{where}: pixel_size_um {px_raw!r} is not a number") from None
            if not np.isfinite(pixel_size) or pixel_size <= 0:
                raise CytogenError(f"{where}: pixel_size_um must be a positive number, got {px_raw}")
        name = row.get("name", "") or _spec_path(source[0]).name.split(".")[0]
        if name in seen:
            raise CytogenError(
                f"{where}: duplicate field name {name!r} (also on line {seen[name]}); "
                "names must be unique because outputs are written as <name>.tif"
            )
        seen[name] = lineno
        if check_files:
            for spec in source + target + mask + reference:
                p = _spec_path(spec)
                if not p.exists():
                    raise CytogenError(f"{where}: file {p} does not exist; fix the path in the manifest")
        entries.append(FieldEntry(name, source, target, mask[0] if mask else None, split,
                                  pixel_size, row.get("group", "") or None,
                                  reference[0] if reference else None))
    if not entries:
        raise CytogenError(f"{path}: manifest has no rows")
    return entries


def write_manifest(path: str | Path, entries: list[FieldEntry]) -> Path:
    """Write entries as CSV with paths relative to the manifest folder where possible (atomic)."""
    path = Path(path)
    base = path.parent.resolve()

    def rel(spec: str) -> str:
        p, sep, chan = spec.partition("#")
        try:
            r = os.path.relpath(Path(p).resolve(), base)
        except ValueError:
            r = p
        return r + (sep + chan if sep else "")

    refs = any(e.reference for e in entries)  # the column only where some row has one
    with atomic_file(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(COLUMNS if refs else COLUMNS[:-1])
        for e in entries:
            writer.writerow([
                e.name, ";".join(rel(s) for s in e.source), ";".join(rel(s) for s in e.target),
                rel(e.mask) if e.mask else "", e.split,
                "" if e.pixel_size_um is None else repr(e.pixel_size_um), e.group or "",
            ] + ([rel(e.reference) if e.reference else ""] if refs else []))
    return path


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Regex for a glob pattern whose wildcards become capture groups."""
    out = []
    for part in re.split(r"(\*\*/|\*|\?)", pattern):
        if part == "**/":
            out.append(r"((?:.*/)?)")
        elif part == "*":
            out.append(r"([^/]*)")
        elif part == "?":
            out.append(r"([^/])")
        else:
            out.append(fnmatch.translate(part)[4:-3] if any(c in part for c in "[]") else re.escape(part))
    return re.compile("^" + "".join(out) + "$")


def match_files(pattern: str, root: Path) -> dict[tuple[str, ...], Path]:
    """Files matching a glob (relative to ``root``) keyed by what the wildcards matched."""
    regex = _glob_regex(pattern)
    found: dict[tuple[str, ...], Path] = {}
    for hit in sorted(globlib.glob(pattern, root_dir=root, recursive=True)):
        m = regex.match(hit.replace(os.sep, "/"))
        if m is None or not (root / hit).is_file():
            continue
        key = m.groups()
        if key in found:
            raise CytogenError(f"pattern {pattern!r}: two files share the varying part {key}")
        found[key] = root / hit
    return found


def assign_splits(names: list[str], groups: list[str | None], *, val_fraction: float,
                  test_fraction: float, seed: int) -> list[str]:
    """Reproducible train/val/test split; fields of one group share a split."""
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise CytogenError("val and test fractions must be in [0, 1) and sum to less than 1")
    units = sorted({g if g else f"__field__{n}" for n, g in zip(names, groups)})
    order = np.random.default_rng(seed).permutation(len(units))
    n = len(units)
    n_test = int(round(test_fraction * n))
    n_val = int(round(val_fraction * n))
    if n >= 3:
        n_test = max(n_test, 1 if test_fraction > 0 else 0)
        n_val = max(n_val, 1 if val_fraction > 0 else 0)
    split_of = {}
    for rank, idx in enumerate(order):
        split_of[units[idx]] = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
    return [split_of[g if g else f"__field__{n}"] for n, g in zip(names, groups)]


def build_manifest(root: str | Path, source: str, target: str, out: str | Path, *,
                   mask: str | None = None, test_match: str | None = None,
                   val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0,
                   pixel_size_um: float | None = None, group_regex: str | None = None) -> Path:
    """Pair files by the part of their names that the glob wildcards match, and write a manifest.

    Parameters
    ----------
    root
        Folder the patterns are relative to.
    source, target, mask
        Glob patterns, e.g. ``"Channel1-*.tif"`` and ``"Channel2-*.tif"``: files whose ``*``
        parts are equal form one field. Several source patterns can be joined with ``;``.
    test_match
        Regex: fields whose name matches go to ``test`` (e.g. ``"-G-"`` for plate row G); the
        others are split into train/val with ``val_fraction``. Without it, ``test_fraction``
        of the fields go to test.
    group_regex
        Regex whose first group (or whole match) of a field name is its group.
    """
    root = Path(root)
    if not root.is_dir():
        raise CytogenError(f"{root}: folder not found; give the folder that holds the images")
    src_patterns = [p.strip() for p in source.split(";") if p.strip()]
    src_maps = [match_files(p, root) for p in src_patterns]
    tgt_map = match_files(target, root)
    mask_map = match_files(mask, root) if mask else {}
    for pattern, mapping in zip(src_patterns + [target], src_maps + [tgt_map]):
        if not mapping:
            raise CytogenError(f"{root}: no file matches {pattern!r}; check the pattern and folder")
    keys = sorted(set.intersection(*(set(m) for m in src_maps), set(tgt_map)))
    if not keys:
        raise CytogenError(
            f"{root}: no source file pairs with a target file; files pair when the parts matched "
            f"by '*' are equal (e.g. a-*.tif with b-*.tif)"
        )
    names = ["_".join(k for k in key if k) or "field" for key in keys]
    if len(set(names)) != len(names):
        raise CytogenError(f"{root}: pairing produced duplicate field names; use more specific patterns")
    groups: list[str | None] = [None] * len(keys)
    if group_regex:
        rx = re.compile(group_regex)
        groups = [(m.group(1) if m.groups() else m.group(0)) if (m := rx.search(n)) else None
                  for n in names]
    if test_match:
        rx_test = re.compile(test_match)
        is_test = [bool(rx_test.search(n)) for n in names]
        if not any(is_test):
            raise CytogenError(f"--test-match {test_match!r} matches no field name (e.g. {names[0]!r})")
        rest = [i for i, t in enumerate(is_test) if not t]
        sub = assign_splits([names[i] for i in rest], [groups[i] for i in rest],
                            val_fraction=val_fraction, test_fraction=0.0, seed=seed)
        splits = ["test"] * len(names)
        for i, s in zip(rest, sub):
            splits[i] = s
    else:
        splits = assign_splits(names, groups, val_fraction=val_fraction,
                               test_fraction=test_fraction, seed=seed)
    entries = [
        FieldEntry(name=n, source=[str(m[key]) for m in src_maps], target=[str(tgt_map[key])],
                   mask=str(mask_map[key]) if key in mask_map else None, split=s,
                   pixel_size_um=pixel_size_um, group=g)
        for key, n, s, g in zip(keys, names, splits, groups)
    ]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    return write_manifest(out, entries)
