"""Helpers shared by the image readers and writers of :mod:`cytogen.io`.

Private module: axis normalisation (any stored axis order -> ``CYX`` / ``CZYX``) and unit
conversion to micrometres. Atomic writes live in :mod:`cytogen.io.atomic`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cytogen.errors import CytogenError

#: Axis letters with a known meaning (tifffile's vocabulary); S (samples, e.g. RGB) is a channel.
KNOWN_AXES = "CSZYXT"

_UM_PER_UNIT = {
    "um": 1.0, "µm": 1.0, "μm": 1.0, "micron": 1.0, "microns": 1.0,
    "micrometer": 1.0, "micrometre": 1.0,
    "nm": 1e-3, "nanometer": 1e-3, "nanometre": 1e-3,
    "mm": 1e3, "millimeter": 1e3, "millimetre": 1e3,
    "cm": 1e4, "centimeter": 1e4, "centimetre": 1e4,
    "m": 1e6, "meter": 1e6, "metre": 1e6,
    "å": 1e-4, "angstrom": 1e-4, "pm": 1e-6, "picometer": 1e-6,
    "in": 25400.0, "inch": 25400.0,
}


def unit_to_um(unit: object) -> float | None:
    """Micrometres per one ``unit`` (e.g. ``"nm"`` -> 0.001), or None for unknown units.

    Parameters
    ----------
    unit : object
        A length unit as written by OME, ImageJ or NGFF (``"µm"``, ``"micron"``,
        ``"nanometer"``, ImageJ's escaped ``"\\u00B5m"``, ...).

    Returns
    -------
    float or None
        The conversion factor, None when the unit is missing or not a length (``"pixel"``).
    """
    if unit is None:
        return None
    key = str(unit).strip().lower().replace("\\u00b5", "µ")
    return _UM_PER_UNIT.get(key)


@dataclass
class RawImage:
    """An array as stored in a file, before axes are normalised.

    Attributes
    ----------
    data : numpy.ndarray
        The stored array.
    axes : str
        One letter per axis of ``data`` as the file describes them (e.g. ``"ZCYX"``, ``"YXS"``,
        ``"QYX"``); letters outside :data:`KNOWN_AXES` are unknown axes.
    sizes_um : dict of str to float
        Pixel size in micrometres per spatial letter (``"Z"``, ``"Y"``, ``"X"``) when known.
    channel_names : list of str or None
        Channel names in file order, when the file names them.
    """

    data: np.ndarray
    axes: str
    sizes_um: dict[str, float] = field(default_factory=dict)
    channel_names: list[str] | None = None


def _check_user_axes(axes: str, shape: tuple[int, ...], path: Path, stored: str) -> str:
    letters = axes.strip().upper()
    bad = sorted(set(letters) - set(KNOWN_AXES))
    problem = None
    if bad:
        problem = f"letters {bad} are not axes cytogen knows (use C, Z, Y, X; also T, S)"
    elif len(letters) != len(shape):
        problem = f"it has {len(letters)} letters but the stored array has {len(shape)} axes"
    elif len(set(letters)) != len(letters):
        problem = "it repeats a letter"
    elif "Y" not in letters or "X" not in letters:
        problem = "it must contain both Y and X"
    if problem:
        raise CytogenError(
            f"{path}: axes={axes!r} does not fit the stored array of shape {shape} "
            f"(file axes '{stored}'): {problem}. Give one letter per stored axis, e.g. 'CZYX'."
        )
    return letters


def resolve_axes(shape: tuple[int, ...], stored_axes: str, path: Path,
                 user_axes: str | None = None) -> tuple[list[int], str]:
    """Which stored axes to drop and what the remaining ones are (first step of :func:`canonicalize`).

    Parameters
    ----------
    shape : tuple of int
        Stored array shape.
    stored_axes : str
        The file's axis letters, one per stored axis.
    path : pathlib.Path
        The file, for error messages.
    user_axes : str, optional
        The caller's description of the stored axes, overriding the file's.

    Returns
    -------
    drop : list of int
        Stored axes of size 1 to squeeze away (T, unknown, and unless ``user_axes`` Z and S).
    letters : str
        Letters of the remaining axes in stored order, from ``C S Z Y X`` (a single unknown
        axis in front of Y and X becomes Z).

    Raises
    ------
    CytogenError
        For time series and ambiguous axes.
    """
    stored = stored_axes.upper()
    explicit = user_axes is not None
    letters = _check_user_axes(user_axes, shape, path, stored) if explicit else stored
    if len(letters) != len(shape):  # a reader bug rather than a user error, but say it clearly
        raise CytogenError(f"{path}: file axes '{stored}' do not fit its array shape {shape}.")
    drop = []
    for i, (ax, n) in enumerate(zip(letters, shape)):
        if ax == "T" and n > 1:
            raise CytogenError(
                f"{path}: this is a time series with {n} time points (shape {shape}, axes "
                f"'{letters}'); cytogen reads one time point per file. Save each time point as "
                "its own file (e.g. Fiji: Image > Stacks > Tools > Reduce / Make Substack)."
            )
        if n == 1 and (ax == "T" or ax not in KNOWN_AXES or (not explicit and ax in "ZS")):
            drop.append(i)
    letters = "".join(a for i, a in enumerate(letters) if i not in drop)
    unknown = [a for a in letters if a not in KNOWN_AXES]
    ambiguous = "Y" not in letters or "X" not in letters or len(set(letters)) != len(letters)
    if len(unknown) == 1 and not ambiguous and "Z" not in letters:
        pos = letters.index(unknown[0])
        if pos < letters.index("Y") and pos < letters.index("X"):
            letters = letters.replace(unknown[0], "Z")  # one extra leading axis: a z-stack
            unknown = []
    if unknown or ambiguous:
        raise CytogenError(
            f"{path}: cannot tell what each axis is (stored shape {shape}, file axes "
            f"'{stored}'). Pass axes= with one letter per stored axis, e.g. axes='CZYX' or "
            "axes='CYX' if the first axis holds channels."
        )
    return drop, letters


def metadata_for(axes: str, sizes_um: dict[str, float], channel_names: list[str] | None,
                 n_channels: int) -> tuple[tuple[float, ...] | None, list[str] | None]:
    """Pixel size per spatial axis of ``axes`` (None unless all known) and matching channel names."""
    sizes = [sizes_um.get(a) for a in axes[1:]]
    pixel = tuple(float(s) for s in sizes) if all(s and s > 0 for s in sizes) else None
    names = channel_names
    if names is not None and len(names) != n_channels:
        names = None
    return pixel, (list(names) if names is not None else None)


def canonicalize(
    raw: RawImage, path: Path, user_axes: str | None = None
) -> tuple[np.ndarray, str, tuple[float, ...] | None, list[str] | None]:
    """Bring a stored array to ``CYX`` or ``CZYX`` and collect its metadata.

    Rules: S (samples) is a channel axis (merged with C when both exist); T of size 1, Z of
    size 1 and unknown axes of size 1 are dropped; T > 1 is refused; a single remaining unknown
    axis in front of Y and X is read as Z; anything else ambiguous asks for ``axes=``. With
    ``user_axes`` the letters given replace the file's own and size-1 Z is kept.

    Parameters
    ----------
    raw : RawImage
        The array as read from the file.
    path : pathlib.Path
        The file, for error messages.
    user_axes : str, optional
        The caller's description of the stored axes, overriding the file's.

    Returns
    -------
    data : numpy.ndarray
        Contiguous, native byte order array with axes ``CYX`` or ``CZYX``.
    axes : str
        ``"CYX"`` or ``"CZYX"``.
    pixel_size_um : tuple of float or None
        Pixel size per spatial axis, None unless every spatial axis has one.
    channel_names : list of str or None
        Names, kept only when their number matches the channel count.

    Raises
    ------
    CytogenError
        For time series, ambiguous axes and images with a zero-sized axis.
    """
    data = raw.data
    drop, letters = resolve_axes(data.shape, raw.axes, path, user_axes)
    if drop:
        data = np.squeeze(data, axis=tuple(drop))
    if "S" in letters and "C" in letters:  # e.g. OME 'CYXS': several RGB channels
        order = [letters.index("C"), letters.index("S")]
        order += [i for i, a in enumerate(letters) if a not in "CS"]
        data = np.transpose(data, order)
        data = data.reshape((data.shape[0] * data.shape[1],) + data.shape[2:])
        letters = "C" + "".join(letters[i] for i in order[2:])
    letters = letters.replace("S", "C")
    if "C" not in letters:
        data = data[np.newaxis]
        letters = "C" + letters
    axes = "CZYX" if "Z" in letters else "CYX"
    data = np.ascontiguousarray(np.transpose(data, [letters.index(a) for a in axes]))
    if not data.dtype.isnative:
        data = data.astype(data.dtype.newbyteorder("="))
    if 0 in data.shape:
        raise CytogenError(
            f"{path}: the image is empty (shape {data.shape} as {axes}); an axis has size 0. "
            "Re-export the image."
        )
    pixel, names = metadata_for(axes, raw.sizes_um, raw.channel_names, data.shape[0])
    return data, axes, pixel, names


def check_row_block(path: object, shape: tuple[int, ...], block: np.ndarray, start: int,
                    rows_written: int) -> int:
    """Rows in ``block``, a ``(C, rows, *rest)`` piece of an image of ``shape`` written in order
    at row ``start`` (the streaming writers' shared check); ValueError if it does not fit or
    does not follow the ``rows_written`` rows so far."""
    rows = block.shape[1] if block.ndim == len(shape) else -1
    if (rows < 1 or block.shape[0] != shape[0] or tuple(block.shape[2:]) != tuple(shape[2:])
            or start + rows > shape[1]):
        raise ValueError(f"{path}: block of shape {block.shape} at row {start} does not "
                         f"fit an image of shape {shape}")
    if start != rows_written:
        raise ValueError(f"{path}: rows must be written in order; expected row "
                         f"{rows_written}, got {start}")
    return rows
